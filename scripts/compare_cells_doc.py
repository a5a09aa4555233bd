"""docs/cells.md from compare_cells.py's measurements: tables, and every conclusion counted off them.

Each sentence about a result is built from the numbers it states (k of n seeds, a median, a
range), so a rerun that measures otherwise writes other sentences, never a false one.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

CHANCE = math.log(8)
MODELS = ("rnn", "irnn", "leaky-rnn", "gru", "lstm")
NAMES = {
    "rnn": "tanh RNN",
    "irnn": "IRNN (relu, identity W_hh)",
    "leaky-rnn": "leaky tanh RNN (a = 0.9)",
    "gru": "GRU",
    "lstm": "LSTM",
}
# The IRNN with one setting changed (compare_cells.py IRNN_VARIANTS), and what changed.
VARIANTS = {
    "irnn": "none (the table above: Adam 2e-3, clip_norm 1, threshold 0.95, W_hh = I)",
    "irnn-lr5e-4": "`optim.lr=5e-4`",
    "irnn-noclip": "`optim.clip_norm=0` (no clipping)",
    "irnn-thr0.8": "`train.curriculum_threshold=0.8`",
    "irnn-gain0.9": "`model.recurrent_gain=0.9` (W_hh = 0.9 I)",
    "irnn-config-data": "the data: the config's own command (`--length 200000`, another draw)",
}
SOLVED_LOSS, SOLVED_ACC = 0.1, 0.95  # a lag is solved: recall loss below, accuracy at least
HELD, READ_OUT_FAILS, NOT_HELD_MARGIN = 0.9, 0.5, 0.15  # probe readings (accuracy)
TINY_JACOBIAN = 1e-6
BELOW_OWN = 0.05  # a probe this far under the model's own accuracy is flagged
PROBE_FIT = 256  # lines the probe is fitted on (compare_cells.py PROBE_LINES)


def _cell(values: list, digits: int = 3) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    med = statistics.median(got)
    return f"{_num(med, digits)} [{_num(min(got), digits)}-{_num(max(got), digits)}]"


def _num(value: float, digits: int = 3) -> str:
    """Fixed point, or 3 significant digits for the huge losses of an exploded state."""
    return f"{value:.3g}" if abs(value) >= 1000 and digits else f"{value:.{digits}f}"


def _of(flags: list[bool]) -> str:
    return f"{sum(flags)} of {len(flags)}"


def _seeds(runs: list[dict], flags: list[bool]) -> str:
    """' seeds 2 and 4' for the seeds where a flag is set, '' when none is."""
    got = [str(r["seed"]) for r, f in zip(runs, flags, strict=True) if f]
    if not got:
        return ""
    listed = got[0] if len(got) == 1 else f"{', '.join(got[:-1])} and {got[-1]}"
    return f" seed{'s' if len(got) > 1 else ''} {listed}"


def _at(profile: dict, k: int, layer: int = 0) -> float:
    return profile["grad_norm"][layer][min(k, len(profile["lags"])) - 1]


def solved(run: dict, lag: int) -> bool:
    loss, acc = run["recall_loss"].get(lag), run["recall_accuracy"].get(lag)
    return loss is not None and acc is not None and loss < SOLVED_LOSS and acc >= SOLVED_ACC


def held(run: dict, lag: int) -> bool:
    acc = run["recall_accuracy"].get(lag)
    return acc is not None and acc >= SOLVED_ACC


def at_end(run: dict, lag: int) -> bool:
    """The model of the last step (not the best checkpoint) recalls `lag`."""
    return (run["final_accuracy"].get(lag) or 0.0) >= SOLVED_ACC


def early_best(run: dict) -> bool:
    """The best checkpoint comes from before the run trained on the last stage."""
    return run["reached_last"] is None or run["best_step"] <= run["reached_last"]


def shorter_ok(s: dict, run: dict, lags: list[int] | None = None) -> bool:
    return all(held(run, lag) for lag in (lags or s["lags"])[:-1])


def _worst(s: dict, run: dict, lags: list[int] | None = None) -> float | None:
    got = [run["recall_accuracy"].get(lag) for lag in (lags or s["lags"])[:-1]]
    got = [a for a in got if a is not None]
    return min(got) if got else None


def _runs(s: dict, results: dict, model: str, seeds: list[int] | None = None) -> list[dict]:
    return [results[(model, seed)] for seed in seeds or s["seeds"]]


# -- the main comparison --------------------------------------------------------------------------


def results_table(s: dict, results: dict) -> list[str]:
    top, held_lag = s["lags"][-1], s["heldout"][-1]
    short = f"{s['lags'][0]}-{s['lags'][-2]}"
    rows = [
        f"| model | solves L={top} | holds L={held_lag} (never trained) | every lag {short} "
        f"| L={top} at the last step | recall loss L={top} | accuracy L={held_lag} "
        f"| worst accuracy, lags {short} | reached the last stage at step | seconds |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        runs = _runs(s, results, m)
        reached = [r["reached_last"] for r in runs]
        never = sum(x is None for x in reached)
        reach = _cell([x for x in reached if x is not None], 0) + (
            f", {never} never" if never else ""
        )
        rows.append(
            f"| {NAMES[m]} | {_of([solved(r, top) for r in runs])} "
            f"| {_of([held(r, held_lag) for r in runs])} "
            f"| {_of([shorter_ok(s, r) for r in runs])} | {_of([at_end(r, top) for r in runs])} "
            f"| {_cell([r['recall_loss'][top] for r in runs])} "
            f"| {_cell([r['recall_accuracy'][held_lag] for r in runs], 2)} "
            f"| {_cell([_worst(s, r) for r in runs], 2)} | {reach} "
            f"| {_cell([r['seconds'] for r in runs], 0)} |"
        )
    return rows


def verdicts(s: dict, results: dict) -> list[str]:
    """One line per model: the table's counts in words, and the seeds that differ."""
    top, held_lag = s["lags"][-1], s["heldout"][-1]
    out = []
    for m in MODELS:
        runs = _runs(s, results, m)
        ok = [solved(r, top) for r in runs]
        far = [held(r, held_lag) for r in runs]
        short = [shorter_ok(s, r) for r in runs]
        line = (
            f"- **{NAMES[m]}** solves L={top} on {_of(ok)} seeds, holds the key to the "
            f"never-trained L={held_lag} on {_of(far)} and recalls every shorter lag "
            f"(accuracy >= {SOLVED_ACC}) on {_of(short)}, at its best checkpoint"
        )
        failed = [not x for x in ok]
        if any(failed):
            line += f"; it fails L={top} on{_seeds(runs, failed)}"
        early = [a and early_best(r) for a, r in zip(ok, runs, strict=True)]
        if any(early):
            line += (
                f"; on{_seeds(runs, early)} that best checkpoint comes from before it trained "
                f"on L={top} (an earlier stage's model generalising)"
            )
        end = [at_end(r, top) for r in runs]
        line += f"; the model of the last step recalls L={top} on {_of(end)}"
        timed = [a and not b and not c for a, b, c in zip(ok, far, short, strict=True)]
        if any(timed):
            line += (
                f"; it solves L={top} while failing L={held_lag} and a shorter lag on"
                f"{_seeds(runs, timed)}"
            )
        out.append(line + ".")
    return out


def expectation_line(s: dict, results: dict) -> str:
    """The tanh RNN was expected near chance at the last lag: what it measured instead."""
    top = s["lags"][-1]
    got = [r["recall_loss"][top] for r in _runs(s, results, "rnn")]
    got = [g for g in got if g is not None]
    if not got:
        return ""
    near = [g > 0.8 * CHANCE for g in got]
    return (
        f"A tanh RNN is often expected near chance ({CHANCE:.3f} nats) at L={top}. Measured: "
        f"recall loss {', '.join(f'{g:.3f}' for g in got)} over the seeds; {_of(near)} above "
        f"80% of chance."
    )


# -- the IRNN's dependence ------------------------------------------------------------------------


def _stays(run: dict) -> bool:
    """Every evaluation after reaching the last stage recalls it (accuracy >= 0.95)."""
    last = [a for a in run["last_stage"] if a is not None]
    return run["reached_last"] is not None and bool(last) and min(last) >= SOLVED_ACC


def irnn_table(s: dict, results: dict) -> list[str]:
    top, held_lag = s["lags"][-1], s["heldout"][-1]
    rows = [
        f"| changed | reached L={top} | solves L={top} | holds L={held_lag} | every shorter "
        f"lag | L={top} at every evaluation after reaching it | L={top} at the last step "
        f"| worst accuracy at L={top} after reaching it |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for name, what in VARIANTS.items():
        if (name, s["seeds"][0]) not in results:
            continue
        runs = _runs(s, results, name)
        lows = [min((a for a in r["last_stage"] if a is not None), default=None) for r in runs]
        rows.append(
            f"| {what} | {_of([r['reached_last'] is not None for r in runs])} "
            f"| {_of([solved(r, top) for r in runs])} | {_of([held(r, held_lag) for r in runs])} "
            f"| {_of([shorter_ok(s, r) for r in runs])} | {_of([_stays(r) for r in runs])} "
            f"| {_of([(r['final_accuracy'].get(top) or 0) >= SOLVED_ACC for r in runs])} "
            f"| {_cell(lows, 2)} |"
        )
    return rows


def irnn_sentences(s: dict, results: dict) -> list[str]:
    """Each variant against the base IRNN, in counts; then which settings moved the outcome."""
    top, held_lag = s["lags"][-1], s["heldout"][-1]
    if ("irnn", s["seeds"][0]) not in results:
        return []
    base = _runs(s, results, "irnn")

    def counts(runs: list[dict]) -> tuple[int, int, int, int]:
        return (
            sum(solved(r, top) for r in runs),
            sum(held(r, held_lag) for r in runs),
            sum(shorter_ok(s, r) for r in runs),
            sum(_stays(r) for r in runs),
        )

    b = counts(base)
    n = len(base)
    lines = [
        f"- The IRNN as configured solves L={top} on {b[0]} of {n} seeds, holds L={held_lag} on "
        f"{b[1]}, keeps every shorter lag on {b[2]}, and recalls L={top} at every evaluation "
        f"after reaching it on {b[3]}."
    ]
    moved, same, effects = [], [], []
    for name, what in list(VARIANTS.items())[1:]:
        if (name, s["seeds"][0]) not in results:
            continue
        c = counts(_runs(s, results, name))
        lines.append(
            f"- With {what}: L={top} on {c[0]} of {n}, L={held_lag} on {c[1]}, every shorter lag "
            f"on {c[2]}, L={top} at every evaluation after reaching it on {c[3]}."
        )
        names = (f"L={top}", f"L={held_lag}", "every shorter lag", "every evaluation after")
        changed = [
            f"{name} {x} -> {y}" for name, x, y in zip(names, b, c, strict=True) if abs(x - y) >= 2
        ]
        effects.append((what, sum(abs(x - y) for x, y in zip(b, c, strict=True))))
        if changed:
            moved.append(f"{what} ({', '.join(changed)})")
        else:
            same.append(what)
    if moved:
        lines.append(
            f"- Changes that moved a count by 2 or more of {n} seeds, against the IRNN as "
            "configured: " + "; ".join(moved) + "."
        )
    if same:
        lines.append("- Changes that moved no count by more than 1 seed: " + "; ".join(same) + ".")
    if moved:
        largest = max(effects, key=lambda e: e[1])
        lines.append(
            f"- The change that moved the counts most (summed over the four): {largest[0]}, "
            f"{largest[1]} seed-counts."
        )
    return lines


# -- the key-readout probe ------------------------------------------------------------------------


def _probe_by_source(measured: dict, lag: int) -> dict[str, dict]:
    return {r["source"]: r for r in measured.get(f"probe_lag{lag}", [])}


def probe_table(s: dict, results: dict, measured: dict) -> list[str]:
    lags = s["probe_lags"]
    rows = [
        "| model | " + " | ".join(f"L={lag}" for lag in lags) + " |",
        "|---|" + "---|" * len(lags),
    ]
    for m in MODELS:
        cells = []
        for lag in lags:
            by = _probe_by_source(measured, lag)
            got = [by.get(r["run"]) for r in _runs(s, results, m)]
            got = [g for g in got if g]
            if not got:
                cells.append("n/a")
                continue
            probe = statistics.median(g["accuracy"][0][0] for g in got)
            own = statistics.median(g["model_accuracy"] for g in got)
            cells.append(f"{probe:.2f} / {own:.2f}")
        rows.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return rows


def probe_sentences(s: dict, results: dict, measured: dict) -> list[str]:
    """Per model: the (seed, lag) pairs where the key is decodable but the model misses it,
    and those where not even the readout finds it."""
    lines = []
    for m in MODELS:
        kept, lost, below, pairs = [], [], [], 0
        for run in _runs(s, results, m):
            for lag in s["probe_lags"]:
                p = _probe_by_source(measured, lag).get(run["run"])
                if not p:
                    continue
                pairs += 1
                probe, own = p["accuracy"][0][0], p["model_accuracy"]
                if probe >= HELD and own <= READ_OUT_FAILS:
                    kept.append(f"seed {run['seed']} L={lag} ({probe:.2f} / {own:.2f})")
                if probe < 1 / p["keys"] + NOT_HELD_MARGIN:
                    lost.append(f"seed {run['seed']} L={lag} ({probe:.2f} / {own:.2f})")
                if probe < own - BELOW_OWN:
                    below.append(f"seed {run['seed']} L={lag} ({probe:.2f} / {own:.2f})")
        if not pairs:
            continue
        line = (
            f"- **{NAMES[m]}**: of {pairs} (seed, lag) pairs, on {len(kept)} the probe decodes "
            f"the key (>= {HELD}) while the model's own accuracy is at most {READ_OUT_FAILS}"
        )
        line += f": {', '.join(kept)}" if kept else ""
        line += (
            f"; {len(lost)} leave the probe within {NOT_HELD_MARGIN} of 1/keys (the key not "
            "linearly decodable)" + (f": {', '.join(lost)}" if lost else "")
        )
        if below:
            line += (
                f"; on {len(below)} the probe scores more than {BELOW_OWN} below the model's own "
                f"accuracy (a readout fitted on {PROBE_FIT} lines generalising worse than the "
                f"model's): {', '.join(below)}"
            )
        lines.append(line + ".")
    return lines


def jacobian_probe_sentences(s: dict, results: dict, measured: dict) -> list[str]:
    """Runs whose state Jacobian back to the key is tiny, and what the probe says of them."""
    top = s["lags"][-1]
    jac = {r["source"]: _at(r, top + 1) for r in measured.get("jacobian_every", [])}
    probes = _probe_by_source(measured, top)
    tiny, rows = [], []
    for m in MODELS:
        for run in _runs(s, results, m):
            j, p = jac.get(run["run"]), probes.get(run["run"])
            if j is None or p is None:
                continue
            rows.append((m, run["seed"], j, p["accuracy"][0][0], p["model_accuracy"]))
            if j < TINY_JACOBIAN:
                tiny.append(rows[-1])
    if not rows:
        return []
    lines = [
        f"- Of {len(rows)} trained runs, {len(tiny)} {'has' if len(tiny) == 1 else 'have'} a "
        f"state Jacobian back to the key (lag-{top} lines, k = {top + 1}) below "
        f"{TINY_JACOBIAN:g}" + (":" if tiny else ".")
    ]
    for m, seed, j, probe, own in tiny:
        verdict = (
            "the key is still decodable above chance: the Jacobian alone misses that memory"
            if probe >= 1 / 8 + NOT_HELD_MARGIN
            else "the probe finds no key either"
        )
        lines.append(
            f"  {NAMES[m]} seed {seed}: Jacobian {j:.1e}, probe at the recall {probe:.2f}, own "
            f"accuracy {own:.2f} (chance 0.125); {verdict}."
        )
    return lines


# -- the copy task --------------------------------------------------------------------------------


def copy_table(s: dict, results: dict) -> list[str]:
    c = s["copy"]
    top, held_lag = c["lags"][-1], c["heldout"][-1]
    rows = [
        f"| model | solves L={top} | accuracy >= {SOLVED_ACC} at L={top} "
        f"| holds L={held_lag} (never trained) | every lag "
        f"{c['lags'][0]}-{c['lags'][-2]} | copy loss L={top} (nats per symbol) | accuracy "
        f"L={top} | accuracy L={held_lag} |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for m in MODELS:
        runs = _runs(s, results, f"copy-{m}", c["seeds"])
        rows.append(
            f"| {NAMES[m]} | {_of([solved(r, top) for r in runs])} "
            f"| {_of([held(r, top) for r in runs])} "
            f"| {_of([held(r, held_lag) for r in runs])} "
            f"| {_of([shorter_ok(s, r, c['lags']) for r in runs])} "
            f"| {_cell([r['recall_loss'][top] for r in runs])} "
            f"| {_cell([r['recall_accuracy'][top] for r in runs], 2)} "
            f"| {_cell([r['recall_accuracy'][held_lag] for r in runs], 2)} |"
        )
    return rows


def copy_sentences(s: dict, results: dict) -> list[str]:
    c = s["copy"]
    top, held_lag = c["lags"][-1], c["heldout"][-1]
    lines = []
    for m in MODELS:
        runs = _runs(s, results, f"copy-{m}", c["seeds"])
        losses = [r["recall_loss"][top] for r in runs if r["recall_loss"][top] is not None]
        below = [x < 0.5 * CHANCE for x in losses]
        reached = [r["reached_last"] is not None for r in runs]
        lines.append(
            f"- **{NAMES[m]}** reaches the last stage (L={top}) on {_of(reached)} seeds in "
            f"{s['steps']} steps; it solves L={top} on {_of([solved(r, top) for r in runs])}, "
            f"copies it with accuracy >= {SOLVED_ACC} on {_of([held(r, top) for r in runs])} "
            f"and the never-trained L={held_lag} on {_of([held(r, held_lag) for r in runs])}; "
            f"{_of(below)} end below half the memoryless baseline ({CHANCE:.3f} nats per symbol)."
        )
    return lines


# -- the gradient views ---------------------------------------------------------------------------


def gradient_table(records: list[dict], ks: list[int]) -> list[str]:
    rows = ["| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for r in records:
        if "grad_norm" in r:
            rows.append(f"| {r['label']} | " + " | ".join(f"{_at(r, k):.1e}" for k in ks) + " |")
    return rows


def saturation_table(records: list[dict]) -> list[str]:
    rows = [
        "| model (trained) | share saturated (or relu off) per activation, layer 1 |",
        "|---|---|",
    ]
    for r in records:
        if "saturation" in r:
            shares = ", ".join(f"{n} {100 * v:.0f}%" for n, v in r["saturation"][0].items())
            rows.append(f"| {r['label']} | {shares} |")
    return rows


def singular_table(fresh: list[dict], trained: list[dict]) -> list[str]:
    """Fresh and trained spectra, matched by position (both lists are in MODELS order)."""
    rows = ["| model | largest singular value of W_hh per block: fresh -> trained |", "|---|---|"]
    before = [r["singular_values"][0] for r in fresh if "singular_values" in r]
    after = [r for r in trained if "singular_values" in r]
    for start, r in zip(before, after, strict=False):
        blocks = ", ".join(
            f"{b} {start.get(b, [math.nan])[0]:.2f} -> {v[0]:.2f}"
            for b, v in r["singular_values"][0].items()
        )
        rows.append(f"| {r['label']} | {blocks} |")
    return rows


def path_sentence(records: list[dict], top: int) -> str:
    """The GRU's state Jacobian at the key (k = top + 1), checkpoint by checkpoint."""
    got = [(r["step"], _at(r, top + 1)) for r in records if "grad_norm" in r]
    if not got:
        return ""
    steps = ", ".join(f"step {step}: {value:.2g}" for step, value in got)
    text = f"The Jacobian back to the key (k = {top + 1}) at each checkpoint: {steps}."
    if got[0][1] < 0.1 and got[-1][1] > 0.5:
        text += " It opens during training: the path to the key is learned."
    return text


def init_sentence(fresh: list[dict]) -> str:
    """What the fresh models show at k = 50: the GRU's and the RNN's gradients compared."""
    p = {r["label"]: r for r in fresh if "grad_norm" in r}
    if "gru" not in p or "rnn" not in p or len(p["gru"]["lags"]) < 50:
        return ""
    gru, rnn = _at(p["gru"], 50), _at(p["rnn"], 50)
    ratio = gru / rnn if rnn > 0 else math.inf
    close = 1 / 100 <= ratio <= 100
    return (
        f"At initialisation, 50 steps back, the GRU's loss gradient is {gru:.1e} and the tanh "
        f"RNN's {rnn:.1e} (ratio {ratio:.1f}): "
        + (
            "within a factor of 100, so at this size the gates give no head start; what the "
            "GRU gains, it learns (the checkpoints below)."
            if close
            else "they differ by more than a factor of 100, so at this size and initialisation "
            "the gates already help before training."
        )
    )


def clipping_paragraph(s: dict, results: dict) -> str:
    seed, top = s["seeds"][0], s["lags"][-1]
    clip, free = results[("irnn-sgd-clip", seed)], results[("irnn-sgd-noclip", seed)]

    def peak(r: dict) -> float:
        return max((g for _, g in r["grad_norm"] if g is not None), default=math.nan)

    def stage(r: dict) -> str:
        return r["stages"][-1][1] if r["stages"] else f"lag{s['lags'][0]}"

    def recall(r: dict) -> str:
        value = r["recall_loss"].get(top)
        return "n/a" if value is None else _num(value)

    def above(r: dict, level: float = 10.0) -> str:
        norms = [g for _, g in r["grad_norm"] if g is not None]
        return f"{sum(g > level for g in norms)} of {len(norms)}"

    def end(r: dict) -> str:
        stopped = r["last_step"] < s["steps"]
        how = (
            f"stopped early (last record: step {r['last_step']})"
            if stopped
            else f"ran all {s['steps']} steps"
        )
        return f"{how}, {r['bad_steps']} non-finite steps skipped"

    return (
        f"The IRNN again, trained with plain SGD (lr 0.05) as Le et al. trained theirs, on the "
        f"same curriculum, seed {seed} only; only `optim.clip_norm` differs (1, then 0). "
        f"Logged gradient norms (before clipping) above 10: {above(clip)} with clipping, "
        f"{above(free)} without; the largest {peak(clip):.3g} and {peak(free):.3g}. With "
        f"clipping the run {end(clip)}, reached stage {stage(clip)}, best recall loss at L={top} "
        f"{recall(clip)}. Without it the run {end(free)}, reached {stage(free)}, recall "
        f"{recall(free)}. The trace is the norm before clipping, so clipping does not stop the "
        "gradient's growth; it bounds the step taken from it: Pascanu, Mikolov and Bengio's "
        'remedy (2013, "On the difficulty of training recurrent neural networks", ICML).'
    )


# -- the page -------------------------------------------------------------------------------------


def _header(s: dict, info: dict) -> str:
    load = info.get("load")
    loaded = f"; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else ""
    c = s["copy"]
    return f"""# Why gates work: five cells on the lag task, measured

Generated by `scripts/compare_cells.py`; every number below is what that run measured, and every
sentence about a result is counted off the tables (k of n seeds).

- command: `{info["command"]}`
- date: {info["date"]}; machine: {info["machine"]}, shared with other jobs{loaded}
- {info["runs"]} runs, two at a time on one thread each, {info["run_minutes"]:.0f} minutes of
  wall time summed over them (the seconds include waiting for a core; the results do not: every
  run is a fixed number of steps); the views and this page {info["minutes"]:.1f} minutes

## The task and the recipe

`charlm data synth lag --lags {",".join(map(str, s["lags"]))} --heldout-lags
{",".join(map(str, s["heldout"]))} --length {s["length"]}` writes lines `K x1 .. xL = K`: a key `K`
(one of 8 capitals), L noise letters, a cue `=` and the key again, one block of lines per lag,
with a mask that scores only the recalled key. The recall loss is the mean loss on that key: 0
for perfect recall, ln 8 = {CHANCE:.3f} nats for a model that forgot it (chance), and the recall
accuracy the share of keys predicted right (chance 1/8). Every model is trained with
`configs/lag-curriculum.yaml`: one line per example from a zero state (`data.batching: lines`),
the loss on the recall only, a curriculum over the lags that moves on once the current lag's
recall accuracy reaches 0.95 (`train.curriculum_*`; training then reads only the new lag's
lines), Adam 2e-3, gradient norm clipped at 1, batch 32, {s["steps"]} steps, the best checkpoint
by the recall loss at L={s["lags"][-1]} (`train.best_by: recall_loss`). One layer of 64 units,
embedding 16. Lag {s["heldout"][-1]} is never trained on. Seeds {", ".join(map(str, s["seeds"]))}
(model and data order). The five models are `--set` overrides of that config: `model.cell=rnn`
(tanh), the IRNN of Le, Jaitly and Hinton (2015, "A Simple Way to Initialize Recurrent Networks
of Rectified Linear Units": `model.nonlinearity=relu`, `model.recurrent_init=identity`), the
leaky tanh RNN (`model.leak=0.9`: h = 0.9 h_prev + 0.1 tanh(...)), `gru`, `lstm`. A lag is
*solved* at a checkpoint when its recall loss is below {SOLVED_LOSS} nats and its accuracy at
least {SOLVED_ACC}; a lag is *held* at accuracy {SOLVED_ACC} or more. The copy task below uses
the same recipe on `charlm data synth copy --copy-length {c["copy_length"]}` (seeds
{", ".join(map(str, c["seeds"]))}).
"""


def _probe_section(s: dict, results: dict, measured: dict) -> str:
    top, held = s["lags"][-1], s["heldout"][-1]
    return f"""## Is the key held, or only read out? The key-readout probe

`charlm gradients RUNS --text data/lag{held}/valid.txt --at task --measure probe --max-lag
{held + 1}` runs lines from their start and fits, at each k (steps before the recall), a
linear readout (multinomial logistic regression, started from the model's own readout for the
last layer) from the layer's state (h; for the LSTM h and c) to the line's key on
{s.get("probe_lines", 256)} lines, then scores it on {s.get("probe_lines", 256)} other lines. Its accuracy says whether the key is *held* in a form a
linear readout can use; beside it the model's own accuracy at the recall on the same lines says
whether the model's readout *uses* it. The Jacobian can say neither: it measures how strongly
the state still depends on the state after the key, not whether the key can be read off it.

At the recall (k = 0) of lines of each lag, probe / the model's own accuracy, median over seeds
{", ".join(map(str, s["seeds"]))} (probe lines: `charlm data synth lag --lag L --seed 3`; chance
1/8; the best checkpoint of each run):

{chr(10).join(probe_table(s, results, measured))}

{chr(10).join(probe_sentences(s, results, measured))}

The probe and the Jacobian side by side (lag-{top} lines):

{chr(10).join(jacobian_probe_sentences(s, results, measured))}

![the probe along lines of the held-out lag {held}](cells_probe.png)

![probe and own accuracy at the recall, per lag](cells_probe_lags.png)

How to read it: the curve (first seed of each model, lines of the never-trained lag {held}) is
the held-out accuracy of the readout at k steps before the recall, k = {held + 1} being the
state right after the key was read; the star at k = 0 is the model's own accuracy. A curve at 1 down to k = 0 with the star at 1: the
key is held and used. A curve at 1 with the star low: the key is held, the model's readout does
not use it there. A curve falling to 1/8: the key is lost. In the per-lag figure a solid line
(probe) above its dashed twin (own accuracy) marks lags where the model holds a key it does not
read out.
"""


def _irnn_section(s: dict, results: dict) -> str:
    rows = irnn_table(s, results)
    if len(rows) <= 2:
        return ""
    return f"""## The IRNN: what its success depends on

The same IRNN, one setting changed at a time, seeds {", ".join(map(str, s["seeds"]))}, counts at
the best checkpoint (solved, held, every shorter lag) and along the run (after it first moved
to the last stage):

{chr(10).join(rows)}

{chr(10).join(irnn_sentences(s, results))}
"""


def _copy_section(s: dict, results: dict) -> str:
    c = s["copy"]
    top = c["lags"][-1]
    return f"""## A second long-range task: copying a string

`charlm data synth copy --copy-length {c["copy_length"]} --lags {",".join(map(str, c["lags"]))}
--heldout-lags {",".join(map(str, c["heldout"]))} --length {c["length"]}` writes lines `S1..S{c["copy_length"]}
x1..xL = S1..S{c["copy_length"]}`: {c["copy_length"]} random capitals (8 kinds), L noise letters,
the cue, the string again. The mask scores the {c["copy_length"]} copied symbols; a char model
reads each copied symbol after predicting it, so the first needs a memory of L +
{c["copy_length"]} steps. Remembering nothing costs ln 8 = {CHANCE:.3f} nats per copied symbol
(the memoryless baseline, truth.json's `recall_chance_loss`; the per-output-position form
10 ln 8 / (T + 20) of Arjovsky, Shah and Bengio 2016 is the same baseline in their layout);
perfect copying costs 0. Same recipe and curriculum, {s["steps"]} steps, seeds
{", ".join(map(str, c["seeds"]))}; the copy loss and accuracy are over all copied symbols of
L={top} lines (median [lowest-highest]):

{chr(10).join(copy_table(s, results))}

{chr(10).join(copy_sentences(s, results))}

![copy loss and accuracy against lag](cells_copy.png)
"""


def _gradient_section(s: dict, measured: dict) -> str:
    top = s["lags"][-1]
    ks = sorted({k for k in (1, 10, 20, 50, 100) if k <= top + 1} | {top + 1})
    return f"""## Why: what the gradient sees

`charlm gradients` measured every figure below (commands in `scripts/compare_cells.py`,
`views`; legends name each run by its folder). The loss gradient |d loss_T / d h_(T-k)| is how
strongly the recall step's loss reaches the state k steps back; the state Jacobian
|d s_T / d s_(T-k)| (spectral norm; for the LSTM s = (h, c)) is the same path without the loss,
so a model that has learned the task (loss near 0, gradient near 0) still shows whether its
path is open. Trained models (first seed) are measured at the recall position of lines of lag
{top}, each from its line's start, so k = {top + 1} is the step that read the key.

{init_sentence(measured["fresh_random"])}

Fresh models, loss gradient at random positions:

{chr(10).join(gradient_table(measured["fresh_random"], ks))}

![fresh models](cells_fresh.png)

Trained (first seed), loss gradient at the recall:

{chr(10).join(gradient_table(measured["trained_loss"], ks))}

![trained models at the recall](cells_trained.png)

Trained, state Jacobian at the recall:

{chr(10).join(gradient_table(measured["trained_jacobian"], ks))}

![state Jacobian of the trained models](cells_jacobian.png)

How the GRU learns its path: the state Jacobian at several checkpoints of one run (first seed).
{path_sentence(measured["gru_checkpoints"], top)}

![GRU checkpoints](cells_checkpoints.png)

Saturation of the trained models at the recall windows (|tanh| > 0.99, sigmoid below 0.01 or
above 0.99; relu: exactly 0):

{chr(10).join(saturation_table(measured["trained_jacobian"]))}

![activation histograms](cells_saturation.png)

{chr(10).join(singular_table(measured["fresh_jacobian"], measured["trained_jacobian"]))}

![singular values of W_hh, trained](cells_singular.png)

The same models at initialisation:

![singular values of W_hh, fresh](cells_singular_fresh.png)
"""


def write_doc(s: dict, results: dict, measured: dict, info: dict, out: Path) -> None:
    top = s["lags"][-1]
    text = f"""{_header(s, info)}
## Results

Counts of seeds, then median over seeds [lowest-highest], each run at its best checkpoint:

{chr(10).join(results_table(s, results))}

{chr(10).join(verdicts(s, results))}

{expectation_line(s, results)}

![recall loss and accuracy against lag](cells_recall.png)

{_irnn_section(s, results)}
{_probe_section(s, results, measured)}
{_gradient_section(s, measured)}
## Clipping made visible

{clipping_paragraph(s, results)}

![IRNN with and without clipping](cells_clipping.png)

{_copy_section(s, results)}
## How to read the figures

- Every figure's caption line says what was measured: the quantity, the lags, where the windows
  sit and the seeds. Legends name each run by its folder (`gru (gru-s1)`: the GRU, seed 1);
  panels that compare share their axes.
- Gradient and Jacobian curves: the y axis is logarithmic, so a straight falling line is a
  geometric decay (vanishing: each step back multiplies by the same factor below 1) and a rising
  one an explosion. Solid lines are the mean over the windows, dotted ones the largest window.
  For the trained models k = {top + 1} is the state right after the key was read.
- The loss gradient measures what training would use; it goes to 0 when the loss does, so a
  model that recalls perfectly shows a small gradient for a good reason. The state Jacobian
  does not depend on the loss: near 1 over many steps is an open path (the key's trace neither
  fades nor blows up), far above 1 a state that grows, far below 1 one that forgets the state
  k steps back in the linear sense; the probe (above) says whether the key itself is still
  there.
- Saturation: a tanh unit beyond +-0.99 passes almost no gradient (tanh' < 0.02); a gate in
  its outer 1% is effectively fixed open or shut, which for a GRU's z or an LSTM's f near 1 is
  the latch that carries a key. Relu units at 0 are off (gradient 0).
- Singular values of W_hh: above 1 the plain RNN's linear part can amplify a direction, below 1
  it shrinks every direction; the squashing then decides what is left. The grey line is 1.

The mechanism behind these readings (the algebra of the cells, not a measurement): a plain tanh
RNN's gradient to a state k steps back is a product of k step Jacobians diag(1 - h^2) W_hh; it
shrinks geometrically unless they stay near norm 1, and saturated units make diag(1 - h^2) near
0. The LSTM's cell state is updated additively (c_t = f * c_(t-1) + i * g) and the GRU
interpolates (h_t = (1 - z) n + z h_(t-1)): with f (or z) near 1 the step Jacobian along that
path is near the identity whatever W_hh does. Leaky units hard-wire part of such a path
(h = a h_prev + ...), and identity initialisation starts the IRNN on one (relu' = 1 where units
are on).

## Reproduce

```
{info["command"]}
python scripts/compare_cells.py --quick      # lags 5-20, 2 seeds: the same views, smaller
```

`--reuse` keeps WORK's data, the runs already trained with the same settings and the
`charlm gradients` outputs already measured with the same command, so a rerun only does what
is missing.
"""
    out.write_text(text, encoding="utf-8")
