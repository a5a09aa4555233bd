"""Synthetic long-range tasks (lag, Markov, brackets, copy) with their exact best loss and masks.

Every task is a *probabilistic automaton*: a hidden state s emits character c with probability
P(c | s) and moves to the state delta(s, c). The text is a sample of this chain started from its
stationary distribution, so every position of train.txt and valid.txt is a stationary sample
(every character, newlines included, is emitted by the automaton: no separator is added).

Because the state after a character is a function of the state before it, the history fixes the
state once the automaton has synchronised (after the first newline for lag and brackets, after k
characters for an order-k Markov source), and the entropy rate is

    H = sum_s pi(s) * H(P(. | s))        (nats per character, pi the stationary distribution)

which is the loss per character of the best possible predictor with unlimited history: the
number to put beside a char model's validation loss. charlm's own validation loss differs from
it in one known way: evaluation cuts the split into `train.batch_size` streams that each start
from a zero state, so the first characters of each stream are predicted without history. The
Bayes-optimal predictor under exactly that split (a forward filter over the automaton's states,
started from pi) is computed on valid.txt by `optimal_stream_loss`, and truth.json lists it for
common stream counts: that is the exact, like-for-like optimum for `val_loss`.

A lag task also gets mask files (charlm/tasks/masks.py) beside its texts: the recall positions as
its task positions, and what the loss counts (`score`: "task", the recall positions only, or
"all"). A staged lag task (`lags`) is one block of whole lines per lag, shortest first, each
a group of the mask and a stage of the curriculum; held-out lags are in valid.txt only.

The copy task (tasks/copying.py: a string of `copy_length` symbols to repeat after the lag) has
too many states for an automaton; it is sampled as whole lines, scored at the copied symbols,
staged like the lag task, and its truth computed in closed form (no stream-cut optimum).
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charlm.errors import DataError, UsageError
from charlm.system.files import write_together
from charlm.tasks.copying import copy_lines, copy_rate, copy_settings, copy_truth
from charlm.tasks.masks import (
    CUE,
    SCORED_TASKS,
    SCORES,
    default_score,
    mask_bytes,
    mask_path,
    score_mask,
)

TASKS = ("lag", "markov", "brackets", "copy")
TRUTH_FILE = "truth.json"
MAX_STATES = 4096  # the stationary distribution is solved densely
EVAL_STREAMS = (1, 8, 16, 32, 64)  # stream counts (train.batch_size) listed in truth.json
_BRACKETS = ("()", "[]", "{}", "<>")


@dataclass(frozen=True)
class Automaton:
    """States 0..S-1; prob[c, s] = P(char c | state s), next_state[c, s] = delta(s, c)."""

    chars: str  # the alphabet, index = character id in prob/next_state
    prob: np.ndarray  # (chars, states), columns sum to 1
    next_state: np.ndarray  # (chars, states) int64; meaningless where prob is 0

    @property
    def states(self) -> int:
        return self.prob.shape[1]

    def transition_matrix(self) -> np.ndarray:
        """T[s, s'] = P(next state s' | state s)."""
        matrix = np.zeros((self.states, self.states))
        for c in range(len(self.chars)):
            np.add.at(matrix, (np.arange(self.states), self.next_state[c]), self.prob[c])
        return matrix

    def stationary(self) -> np.ndarray:
        """pi with pi T = pi, sum 1 (a linear solve, so periodic chains such as lag work too)."""
        matrix = self.transition_matrix().T - np.eye(self.states)
        matrix[-1, :] = 1.0  # replace one (redundant) balance equation by the normalisation
        rhs = np.zeros(self.states)
        rhs[-1] = 1.0
        pi = np.linalg.solve(matrix, rhs)
        return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()

    def entropy_rate(self, pi: np.ndarray | None = None) -> float:
        """sum_s pi(s) H(P(. | s)) in nats per character."""
        pi = self.stationary() if pi is None else pi
        p = self.prob
        with np.errstate(divide="ignore", invalid="ignore"):
            per_state = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=0)
        return float(pi @ per_state)

    def sample(self, length: int, rng: np.random.Generator, pi: np.ndarray) -> str:
        """`length` characters from the chain started in a state drawn from pi."""
        cumulative = np.cumsum(self.prob, axis=0).T  # (states, chars)
        cumulative[:, -1] = 1.0 + 1e-12  # rounding must never let a draw fall off the end
        state = int(rng.choice(self.states, p=pi))
        draws = rng.random(length)
        out = np.empty(length, dtype=np.int64)
        next_state = self.next_state
        for i in range(length):
            c = int(np.searchsorted(cumulative[state], draws[i], side="right"))
            out[i] = c
            state = int(next_state[c, state])
        return "".join(np.array(list(self.chars))[out])


def _automaton(chars: str, rows: list[dict[str, tuple[float, int]]]) -> Automaton:
    """Build from one {char: (probability, next state)} mapping per state."""
    index = {c: i for i, c in enumerate(chars)}
    prob = np.zeros((len(chars), len(rows)))
    next_state = np.zeros((len(chars), len(rows)), dtype=np.int64)
    for s, row in enumerate(rows):
        for c, (p, t) in row.items():
            prob[index[c], s] = p
            next_state[index[c], s] = t
    return Automaton(chars, prob, next_state)


def lag_automaton(lag: int, keys: int, noise: int) -> Automaton:
    """Lines `K x1 .. xL = K`: a key K (one of `keys` capitals), L noise letters, a cue, the key.

    State 0 is the line start; state 1 + k*(L+3) + (j-1) is "key k, j characters of the line
    written" for j = 1..L+3. Only the key and the noise carry information: the cue, the repeated
    key and the newline are certain for a predictor that counts to L and remembers the key. The
    cue '=' marks the recall position, so that a model which cannot count exactly still shows
    whether it remembers: its loss on the character after '=' is the recall loss (0 at best,
    ln(keys) for a model that forgot the key).
    """
    key_chars, noise_chars = string.ascii_uppercase[:keys], string.ascii_lowercase[:noise]
    width = lag + 3

    def state(k: int, j: int) -> int:
        return 1 + k * width + (j - 1)

    rows: list[dict[str, tuple[float, int]]] = [
        {K: (1 / keys, state(k, 1)) for k, K in enumerate(key_chars)}
    ]
    for k, key in enumerate(key_chars):
        for j in range(1, width + 1):
            if j <= lag:
                rows.append({x: (1 / noise, state(k, j + 1)) for x in noise_chars})
            elif j == lag + 1:
                rows.append({CUE: (1.0, state(k, j + 1))})
            elif j == lag + 2:
                rows.append({key: (1.0, state(k, j + 1))})
            else:
                rows.append({"\n": (1.0, 0)})
    return _automaton("\n" + CUE + key_chars + noise_chars, rows)


def markov_automaton(order: int, table: np.ndarray, chars: str) -> Automaton:
    """An order-k source: the state is the last k characters (base-m number, oldest first)."""
    m = len(chars)
    rows = []
    for s in range(m**order):
        shifted = (s * m) % (m**order)
        rows.append({c: (float(table[s, i]), shifted + i) for i, c in enumerate(chars)})
    return _automaton(chars, rows)


def bracket_automaton(depth: int, types: int, open_prob: float) -> Automaton:
    """Balanced brackets of `types` kinds nested at most `depth` deep, one expression per line.

    At depth 0: open a bracket (probability open_prob, kind uniform) or end the line. Inside:
    open another (open_prob, below the depth limit) or close the innermost one, whose kind is
    fixed by what was opened, possibly long before: that is the long-range dependency. The state
    is the stack of open kinds.
    """
    stacks: list[tuple[int, ...]] = [()]
    for d in range(depth):
        stacks += [s + (k,) for s in stacks if len(s) == d for k in range(types)]
    index = {s: i for i, s in enumerate(stacks)}
    opens, closes = (
        "".join(p[0] for p in _BRACKETS[:types]),
        "".join(p[1] for p in _BRACKETS[:types]),
    )
    rows = []
    for s in stacks:
        row: dict[str, tuple[float, int]] = {}
        can_open = len(s) < depth
        if can_open:
            for k in range(types):
                row[opens[k]] = (open_prob / types, index[s + (k,)])
        if s:
            row[closes[s[-1]]] = (1.0 - open_prob if can_open else 1.0, index[s[:-1]])
        else:
            row["\n"] = (1.0 - open_prob, 0)
        rows.append(row)
    return _automaton("\n" + opens + closes, rows)


def _markov_table(order: int, alphabet: int, concentration: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    table = rng.dirichlet([concentration] * alphabet, size=alphabet**order)
    return np.maximum(table, 1e-6) / np.maximum(table, 1e-6).sum(axis=1, keepdims=True)


def build_automaton(task: str, settings: dict[str, Any]) -> Automaton:
    """The automaton a truth.json's `task` and `settings` describe."""
    if task == "lag":
        return lag_automaton(settings["lag"], settings["keys"], settings["alphabet"])
    if task == "markov":
        chars = string.ascii_lowercase[: settings["alphabet"]]
        return markov_automaton(settings["order"], np.array(settings["table"]), chars)
    if task == "brackets":
        return bracket_automaton(settings["depth"], settings["types"], settings["open_prob"])
    raise UsageError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def optimal_stream_loss(
    automaton: Automaton, text: str, streams: int = 1, pi: np.ndarray | None = None
) -> float:
    """Mean loss (nats/char) of the Bayes-optimal predictor on `text`, cut as charlm evaluates.

    charlm's evaluation (`StreamBatcher`) splits the n characters into `streams` slices of
    (n - 1) // streams predictions each, every slice starting from an empty state, and predicts
    each character of a slice from the ones before it in that slice. The optimal predictor does
    the same with a belief over automaton states, started at pi (the text is stationary).
    """
    pi = automaton.stationary() if pi is None else pi
    index = {c: i for i, c in enumerate(automaton.chars)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise DataError(f"text has characters the task never emits: {unknown[:5]}")
    ids = np.array([index[c] for c in text], dtype=np.int64)
    streams = max(1, min(streams, len(ids) - 1))
    stream_len = (len(ids) - 1) // streams
    if stream_len < 1:
        raise DataError("text too short to score (needs at least 2 characters)")
    cols = ids[: streams * stream_len + 1]
    # Column t of stream s is character s*stream_len + t, for t = 0..stream_len.
    starts = np.arange(streams) * stream_len
    n_states = automaton.states
    offsets = (np.arange(streams) * n_states)[:, None]
    belief = np.tile(pi, (streams, 1))  # (streams, states)
    total = 0.0
    for t in range(stream_len + 1):
        c = cols[starts + t]  # (streams,)
        weights = belief * automaton.prob[c]  # (streams, states)
        p = weights.sum(axis=1)
        if t > 0:  # the first character of a stream is input only, never a target
            total -= float(np.log(p).sum())
        target = (automaton.next_state[c] + offsets).ravel()
        belief = np.bincount(target, weights=weights.ravel(), minlength=streams * n_states)
        belief = belief.reshape(streams, n_states) / p[:, None]
    return total / (streams * stream_len)


def _check(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise UsageError(f"--{name} must be {bound} (got {value})")


def _task_settings(
    task: str,
    lag: int,
    keys: int,
    alphabet: int,
    order: int,
    concentration: float,
    depth: int,
    types: int,
    open_prob: float,
    seed: int,
) -> dict[str, Any]:
    """The task's checked settings (its own default alphabet where 0), or a UsageError."""
    if task == "lag":
        alphabet = alphabet or 8
        _check("lag", lag, 1)
        _check("keys", keys, 1, 26)
        _check("alphabet", alphabet, 1, 26)
        settings: dict[str, Any] = {"lag": lag, "keys": keys, "alphabet": alphabet}
    elif task == "markov":
        alphabet = alphabet or 4
        _check("order", order, 1)
        _check("alphabet", alphabet, 2, 26)
        if concentration <= 0:
            raise UsageError(f"--concentration must be positive (got {concentration})")
        table = _markov_table(order, alphabet, concentration, seed)
        settings = {"order": order, "alphabet": alphabet, "concentration": concentration}
        settings["table"] = table.tolist()
    elif task == "brackets":
        _check("depth", depth, 1)
        _check("types", types, 1, len(_BRACKETS))
        _check("open-prob", open_prob, 1e-9, 1 - 1e-9)
        settings = {"depth": depth, "types": types, "open_prob": open_prob}
    else:
        raise UsageError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    states = {
        "lag": lambda: 1 + keys * (lag + 3),
        "markov": lambda: alphabet**order,
        "brackets": lambda: sum(types**d for d in range(depth + 1)),
    }[task]()
    if states > MAX_STATES:
        raise UsageError(
            f"task '{task}' with these settings has {states:,} states, more than {MAX_STATES:,} "
            "(the exact truth needs a dense solve); lower --lag/--keys, --order/--alphabet or "
            "--depth/--types"
        )
    return settings


def make_task(
    task: str,
    *,
    length: int = 200_000,
    valid_length: int = 20_000,
    lag: int = 10,
    keys: int = 8,
    alphabet: int = 0,
    order: int = 3,
    concentration: float = 0.5,
    depth: int = 8,
    types: int = 2,
    open_prob: float = 0.5,
    seed: int = 1,
    copy_length: int = 10,
) -> tuple[str, str, dict[str, Any]]:
    """(train text, valid text, truth) for a task; `alphabet` 0 means the task's default."""
    _check("length", length, 2)
    _check("valid-length", valid_length, 2)
    if task == "copy":
        copying = copy_settings(lag, keys, alphabet, copy_length)
        rng = np.random.default_rng([seed, 0])
        train_text = copy_lines(copying, length, rng)
        valid_text = copy_lines(copying, valid_length, rng)
        return train_text, valid_text, copy_truth(copying, seed, len(valid_text))
    settings = _task_settings(
        task, lag, keys, alphabet, order, concentration, depth, types, open_prob, seed
    )
    automaton = build_automaton(task, settings)
    pi = automaton.stationary()
    rng = np.random.default_rng([seed, 0])
    train_text = automaton.sample(length, rng, pi)
    valid_text = automaton.sample(valid_length, rng, pi)
    rate = automaton.entropy_rate(pi)
    truth: dict[str, Any] = {
        "task": task,
        "settings": settings,
        "seed": seed,
        "alphabet": automaton.chars,
        "states": automaton.states,
        "best_loss": rate,
        "best_bits_per_char": rate / math.log(2),
        "best_loss_note": (
            "entropy rate in nats per character (every character counted, newlines included): "
            "the loss of the best predictor with unlimited history; compare with a char "
            "model's val_loss"
        ),
        "valid_chars": len(valid_text),
        "valid_optimal_loss": {
            str(n): optimal_stream_loss(automaton, valid_text, n, pi) for n in EVAL_STREAMS
        },
        "valid_optimal_loss_note": (
            "the Bayes-optimal loss on valid.txt cut into N streams each starting without "
            "history, exactly as charlm evaluates with train.batch_size=N (key: N)"
        ),
    }
    if task == "lag":
        truth["recall_chance_loss"] = math.log(keys)
        truth["no_recall_excess"] = math.log(keys) / (lag + 4)
        truth["lag_note"] = (
            "a predictor that is optimal except that it forgets the key pays recall_chance_loss "
            "on each character after the cue '=', i.e. no_recall_excess nats/char above best_loss"
        )
    return train_text, valid_text, truth


def check_score(task: str, score: str | None, lags: list[int], heldout: list[int]) -> str:
    """The score choice (default: the task's), or a UsageError for what the task cannot do."""
    score = score or default_score(task)
    if score not in SCORES:
        raise UsageError(f"--score {score!r} must be one of: {', '.join(SCORES)}")
    if score == "task" and task not in SCORED_TASKS:
        raise UsageError(
            f"--score task: '{task}' has no scored position (every character is the task); "
            "use --score all"
        )
    if (lags or heldout) and task not in SCORED_TASKS:
        raise UsageError(
            f"--lags and --heldout-lags apply to the lag and copy tasks (got '{task}')"
        )
    if heldout and not lags:
        raise UsageError("--heldout-lags needs --lags (the stages trained on)")
    for value in [*lags, *heldout]:
        _check("lags", value, 1)
    if len(set(lags + heldout)) != len(lags + heldout):
        raise UsageError(f"--lags and --heldout-lags must not repeat a lag (got {lags + heldout})")
    return score


def _lag_masks(
    text: str, truth: dict[str, Any], score: str, group: int, whole_lines: bool = False
) -> np.ndarray:
    """The mask of a lag text: recalls as task positions of `group`; the loss: those or all.

    Unless the text starts at a line start (`whole_lines`), a recall before its first line
    break has its key before the text begins: it is no task position (and not scored), as no
    model could know it."""
    scored = score_mask(text, truth)
    first_line_end = text.find("\n")
    if not whole_lines:
        scored[: first_line_end + 1 if first_line_end >= 0 else len(text)] = False
    loss = scored if score == "task" else np.ones(len(text), dtype=bool)
    return mask_bytes(scored, loss, group)


def _lines_from_start(automaton: Automaton, length: int, rng: np.random.Generator) -> str:
    """About `length` characters of whole lines, started at the line start (state 0)."""
    start = np.zeros(automaton.states)
    start[0] = 1.0
    text = automaton.sample(max(length, 2), rng, start)
    end = text.rfind("\n")
    if end < 0:
        raise UsageError(f"--length {length} holds no whole line; use a larger --length")
    return text[: end + 1]


def _stage(
    task: str, lag: int, keys: int, alphabet: int, copy_length: int, seed: int
) -> tuple[dict[str, Any], Any, float]:
    """One stage's settings, its sampler `(chars, rng) -> whole lines` and its entropy rate."""
    if task == "copy":
        settings = copy_settings(lag, keys, alphabet, copy_length)
        return settings, lambda chars, rng: copy_lines(settings, chars, rng), copy_rate(settings)
    settings = _task_settings("lag", lag, keys, alphabet, 3, 0.5, 8, 2, 0.5, seed)
    automaton = build_automaton("lag", settings)
    sample = lambda chars, rng: _lines_from_start(automaton, chars, rng)  # noqa: E731
    return settings, sample, automaton.entropy_rate()


def make_staged_lag(
    lags: list[int], heldout: list[int], score: str, *, length: int, valid_length: int,
    keys: int, alphabet: int, seed: int, task: str = "lag", copy_length: int = 10,
) -> tuple[str, str, np.ndarray, np.ndarray, dict[str, Any]]:  # fmt: skip
    """(train, valid, their masks, truth) of a lag (or copy) curriculum: a block of lines per
    lag.

    Stage i (group i + 1) is `length` characters of whole lines at lags[i] in train.txt and
    `valid_length` in valid.txt; each held-out lag has a block in valid.txt only."""
    alphabet = alphabet or 8
    truth: dict[str, Any] = {"task": task, "seed": seed, "stages": []}
    last, _, _ = _stage(task, lags[-1], keys, alphabet, copy_length, seed)
    truth["settings"] = {**last, "lags": lags, "heldout_lags": heldout}
    names = {str(i + 1): f"lag{lag}" for i, lag in enumerate(lags + heldout)}
    truth["score"] = {
        "mode": score, "cue": CUE, "name": SCORED_TASKS[task], "note": _NOTE, "groups": names,
        "curriculum": [f"lag{lag}" for lag in lags], "heldout": [f"lag{lag}" for lag in heldout],
    }  # fmt: skip
    rng = np.random.default_rng([seed, 0])
    parts: dict[str, list] = {"train": [], "valid": [], "train_mask": [], "valid_mask": []}
    for group, lag in enumerate(lags + heldout, start=1):
        _, sample, rate = _stage(task, lag, keys, alphabet, copy_length, seed)
        splits = [("valid", valid_length)] if lag in heldout else [("train", length)]
        if lag not in heldout:
            splits.append(("valid", valid_length))
        for split, chars in splits:
            text = sample(chars, rng)
            parts[split].append(text)
            parts[f"{split}_mask"].append(_lag_masks(text, truth, score, group, True))
        truth["stages"].append({"lag": lag, "best_loss": rate, "held_out": lag in heldout})
    truth["settings"] = truth.pop("settings")  # after the stages in truth.json, as it always was
    alphabet_of = build_automaton("lag", truth["settings"]).chars if task == "lag" else None
    truth["alphabet"] = alphabet_of or copy_truth(last, seed, 0)["alphabet"]
    truth["recall_chance_loss"] = math.log(keys)
    truth["stages_note"] = (
        "one block of whole lines per lag, in this order, each starting at a line start; "
        "best_loss is that lag's entropy rate (nats/char)"
    )
    train, valid = "".join(parts["train"]), "".join(parts["valid"])
    truth["valid_chars"] = len(valid)
    masks = [np.concatenate(parts[name]) for name in ("train_mask", "valid_mask")]
    return train, valid, masks[0], masks[1], truth


def write_task(
    out: Path,
    task: str,
    score: str | None = None,
    lags: list[int] | None = None,
    heldout_lags: list[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write train.txt, valid.txt (no trailing newline beyond what the task emits), truth.json,
    and for a lag task train.mask and valid.mask (charlm/tasks/masks.py)."""
    lags, heldout = list(lags or []), list(heldout_lags or [])
    score = check_score(task, score, lags, heldout)
    masks: tuple[np.ndarray, np.ndarray] | None = None
    if lags:
        keep = {k: options[k] for k in _STAGED_DEFAULTS if k in options}
        keep["task"] = task
        staged = make_staged_lag(lags, heldout, score, **{**_STAGED_DEFAULTS, **keep})
        train_text, valid_text, *mask_pair, truth = staged
        masks = (mask_pair[0], mask_pair[1])
    else:
        train_text, valid_text, truth = make_task(task, **options)
        if task in SCORED_TASKS:
            name = f"{task}{truth['settings'].get('lag', '')}"
            truth["score"] = {"mode": score, "cue": CUE, "name": SCORED_TASKS[task], "note": _NOTE}
            truth["score"].update(groups={"1": name}, curriculum=[], heldout=[])
            whole = task == "copy"  # its texts start at a line start
            masks = (
                _lag_masks(train_text, truth, score, 1, whole),
                _lag_masks(valid_text, truth, score, 1, whole),
            )
    out = Path(out)
    # The bytes as written, "\n" and all: no platform turns it into "\r\n".
    files = {"train.txt": train_text.encode("utf-8"), "valid.txt": valid_text.encode("utf-8")}
    stale: list[str] = []
    for name, mask in zip(("train.txt", "valid.txt"), masks or (None, None), strict=True):
        if mask is None:  # a mask left from an earlier task here would be read as this one's
            stale.append(mask_path(out / name).name)
        else:  # the bytes write_mask (masks.py) writes: one uint8 per character
            files[mask_path(out / name).name] = np.asarray(mask, dtype=np.uint8).tobytes()
    files[TRUTH_FILE] = (json.dumps(truth, indent=1) + "\n").encode("utf-8")
    # All or nothing: a killed synth leaves the folder's earlier task whole, or no folder.
    write_together(out, files, remove=tuple(stale))
    return truth


_NOTE = (
    "train.mask/valid.mask: bit 0 = the loss counts the character (mode task: the recalls only, "
    "all: every character), bits 1-7 = its group (a recall of that lag); with mode task a run's "
    "val_loss is a recall loss, whose optimum is 0 (best_loss counts every character)"
)
_STAGED_DEFAULTS = {
    "length": 200_000, "valid_length": 20_000, "keys": 8, "alphabet": 0, "seed": 1,
    "copy_length": 10,
}  # fmt: skip


def read_truth(task_dir: Path) -> dict[str, Any]:
    path = Path(task_dir) / TRUTH_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; make the task with `charlm data synth`") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
