"""The `charlm` command line: options in, one library call per command, messages on stderr."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from charlm._version import __version__
from charlm.errors import CharlmError, PeerFailure, TrainingStopped, environment_error

app = typer.Typer(
    name="charlm",
    help="Train, sample and evaluate character- and word-level recurrent language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # charlm --install-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Public corpora and synthetic tasks.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect settings without running anything.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

_debug = {"on": False}
F = TypeVar("F", bound=Callable[..., Any])


def say(message: str) -> None:
    """A message for people: stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """Under torchrun only rank 0 speaks for the job; alone, this process is rank 0."""
    return os.environ.get("RANK", "0") == "0"


def _leave(code: int) -> None:
    """End this process now with `code`, without the interpreter's teardown.

    Under torchrun, gloo's threads sometimes abort the process at exit ("terminate called
    without an active exception", exit -6) after a run that ended cleanly (1 in ~25 runs of the
    signal test here), and always may after a peer died. Everything charlm writes is closed and
    synced by then; only the standard streams need flushing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def handle_errors(func: F) -> F:
    """Known errors become one line and their exit code; tracebacks only with --debug.

    Under torchrun the process then ends at once with that code (see `_leave`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "RANK" not in os.environ:
            return _handled(*args, **kwargs)
        try:
            _handled(*args, **kwargs)
        except typer.Exit as exit_:
            _leave(exit_.exit_code)
        _leave(0)

    @functools.wraps(func)
    def _handled(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()  # here, so that a closed pipe is answered below, not at exit
            return result
        except CharlmError as exc:
            if _debug["on"]:
                traceback.print_exc()
            if isinstance(exc, TrainingStopped) and not is_main_process():
                raise typer.Exit(exc.exit_code) from None  # every rank stops; rank 0 says why
            lines = str(exc).splitlines() or [type(exc).__name__]
            kind = "stopped" if isinstance(exc, TrainingStopped) else "error"
            for line in lines:
                say(f"charlm: {kind}: {line}")
            if isinstance(exc, PeerFailure):
                _leave(exc.exit_code)  # skip the broken process group's teardown (it aborts)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            say("charlm: interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `charlm sample ... | head`: the reader has all it wanted
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:  # disk full, read-only, permissions: the machine, not a bug
            found = environment_error(exc)
            if found is None:
                raise _internal_error(exc) from None
            if _debug["on"]:
                traceback.print_exc()
            say(f"charlm: error: {found}")
            raise typer.Exit(found.exit_code) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, or an environment problem we did not foresee
            raise _internal_error(exc) from None

    return wrapper  # type: ignore[return-value]


def _internal_error(exc: Exception) -> typer.Exit:
    if _debug["on"]:
        traceback.print_exception(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    say(f"charlm: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)")
    return typer.Exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into the closed pipe is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (an in-process test runner)
        pass


def _flag_type(self: Any, ctx: Any) -> str | None:
    """Boolean flags take no value, so their help shows none (typer would show `<bool>`, which
    reads as if `--resume true` were the way to write it)."""
    if getattr(self, "is_flag", False):
        return None
    return _typer_type(self, ctx)


_typer_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        print(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    # Set on every invocation: an in-process caller (tests, scripts) may run several commands.
    _debug["on"] = debug or os.environ.get("CHARLM_DEBUG", "") not in ("", "0")


def _complete_config(incomplete: str) -> list[str]:
    """Shell completion for --config: the shipped configs' names (files complete as usual)."""
    from charlm.config import shipped_configs

    return [name for name in shipped_configs() if name.startswith(incomplete)]


# Options shared by several commands, declared once so their help reads the same everywhere.
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file, or a shipped config's name (charlm config list).",
        autocompletion=_complete_config,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a setting: --set model.hidden_size=256 (repeatable)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
WhichOpt = Annotated[
    str,
    typer.Option(
        "--checkpoint", help="For a run directory: 'best' (by validation loss) or 'latest'."
    ),
]
RunArg = Annotated[
    Path, typer.Argument(help="A run directory (train --out) or a checkpoint folder.")
]


def _refuse_flag_value(text: Path | None) -> None:
    """`--resume true`: flags take no value, so `true` was read as TEXT; say so."""
    from charlm.errors import UsageError

    if text is not None and str(text).lower() in ("true", "false") and not text.exists():
        raise UsageError(
            f"TEXT '{text}' does not exist; --resume, --force and --quiet take no value: "
            "write the flag alone (e.g. --resume)"
        )


def _which(value: str) -> str:
    from charlm.errors import UsageError

    if value not in ("best", "latest"):
        raise UsageError(f"--checkpoint must be 'best' or 'latest' (got '{value}')")
    return value


@app.command()
@handle_errors
def prepare(
    text: Annotated[Path, typer.Argument(help="A .txt file, a folder of .txt files, or a .csv.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for train.bin, val.bin, meta.json.")
    ],
    level: Annotated[str | None, typer.Option(help="char, word or bpe [default: char].")] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            help="word/bpe: entries kept, counting specials; word: 0 keeps all [default: 8000]."
        ),
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Last fraction held out [default: 0.05].")
    ] = None,
    val_file: Annotated[Path | None, typer.Option(help="Validation text instead.")] = None,
    csv_column: Annotated[
        str | None, typer.Option(help="CSV column with the text (a .csv input needs it).")
    ] = None,
    errors: Annotated[str, typer.Option(help="Invalid UTF-8: strict or replace.")] = "strict",
    lowercase: Annotated[
        bool | None,
        typer.Option("--lowercase/--keep-case", help="word: lower-case the text [default: lower]."),
    ] = None,
    segments: Annotated[
        str | None,
        typer.Option(
            help="word: sentences (START ... END) or lines (each + <eos>) [default: sentences]."
        ),
    ] = None,
    word_split: Annotated[
        str | None,
        typer.Option(
            help="word: rules (punctuation, clitics) or whitespace (str.split) [default: rules]."
        ),
    ] = None,
) -> None:
    """Tokenise a corpus into memory-mappable token ids (cached: same input, same settings, no work).

    Example: charlm prepare ../shared/data/reddit/reddit-comments-2015-08-sample.csv
    --csv-column body --level word --vocab-size 8000 --out data/reddit

    WikiText-2 as pytorch/examples reads it: charlm prepare ../shared/data/wikitext-2/train.txt
    --val-file ../shared/data/wikitext-2/valid.txt --level word --vocab-size 0 --keep-case
    --segments lines --word-split whitespace --out data/wt2
    """
    from charlm.config import build_config
    from charlm.data.prepare import PrepareSettings
    from charlm.data.prepare import prepare as run_prepare
    from charlm.data.reading import spooled
    from charlm.errors import UsageError

    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be strict or replace (got '{errors}')")
    given = {
        "level": level,
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "csv_column": csv_column,
        "lowercase": lowercase,
        "segments": segments,
        "word_split": word_split,
    }
    # Only the options given: every default comes from DataConfig, as for `charlm train`.
    config = build_config(
        overrides=[f"data.{key}={value}" for key, value in given.items() if value is not None]
    )
    settings = PrepareSettings.from_config(config.data, val_file=val_file, errors=errors)
    with spooled(text) as source, spooled(val_file) as val_source:
        settings = dataclasses.replace(settings, val_file=val_source)
        meta = run_prepare(source, out, settings)
    say(
        f"prepared {out}: {meta['level']} vocabulary {meta['vocab_size']:,}; "
        f"{meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens"
    )


@app.command()
@handle_errors
def train(
    text: Annotated[
        Path | None,
        typer.Argument(help="Text to train on (.txt, folder or .csv); default: built-in."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path(
        "runs/default"
    ),
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared data folder (charlm prepare).")
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the run in --out.")] = False,
    val_file: Annotated[
        Path | None, typer.Option(help="Validation text (else a held-out tail).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    errors: Annotated[
        str, typer.Option(help="Invalid UTF-8 in TEXT: strict or replace.")
    ] = "strict",
    csv_column: Annotated[
        str | None, typer.Option(help="CSV column with the text (data.csv_column).")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Last fraction held out (data.val_fraction).")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from", help="Start from this run's (or checkpoint's) weights and vocabulary."
        ),
    ] = None,
    init_keep: Annotated[
        list[str] | None,
        typer.Option(
            "--init-keep", help="With --init-from, also keep: optimizer, step (repeatable)."
        ),
    ] = None,
) -> None:
    """Train a model; Ctrl-C saves a checkpoint, and --resume continues exactly where it stopped.

    Examples:
      charlm train --config configs/quickstart.yaml --out runs/quick
      charlm train input.txt --config configs/char-rnn.yaml --out runs/shakespeare --set train.max_steps=500
      charlm train --out runs/shakespeare --resume --set train.max_steps=5000
      charlm train new.txt --init-from runs/shakespeare --out runs/tuned --set train.max_steps=300
    """
    from charlm.api import train as api_train
    from charlm.data.reading import spooled

    _refuse_flag_value(text)
    with spooled(text) as source, spooled(val_file) as val_source:
        result = api_train(
            source,
            out=out,
            data=data,
            val_file=val_source,
            config=config,
            overrides=overrides or [],
            resume=resume,
            force=force,
            progress=not quiet,
            errors=errors,
            csv_column=csv_column,
            val_fraction=val_fraction,
            init_from=init_from,
            init_keep=init_keep or [],
        )
    if result.final is not None and not quiet and is_main_process():
        say(
            f"done: {result.steps} steps; best validation loss {result.best_val_loss:.4f} "
            f"nats/token; checkpoints in {out / 'checkpoints'}"
        )


@app.command()
@handle_errors
def sample(
    run: RunArg,
    prime: Annotated[str | None, typer.Option(help="Text to start from.")] = None,
    prime_file: Annotated[
        Path | None,
        typer.Option("--prime-file", help="Start from this file's text (UTF-8; - reads stdin)."),
    ] = None,
    length: Annotated[int, typer.Option(help="Tokens per sample (max words per sentence).")] = 500,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1].")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Independent samples, generated together.")] = 1,
    sentences: Annotated[
        bool | None,
        typer.Option(
            "--sentences/--stream", help="Word models: whole sentences (the tutorial's way)."
        ),
    ] = None,
    min_words: Annotated[int, typer.Option(help="Sentence mode: shortest sentence in words.")] = 0,
    device: DeviceOpt = "auto",
    which: WhichOpt = "best",
) -> None:
    """Generate text, streamed to stdout as it is made.

    Examples:
      charlm sample runs/quick --prime "The " --length 300 --temperature 0.8 --seed 1
      charlm sample runs/quick --prime-file opening.txt --length 300
    """
    import secrets

    from charlm.api import load
    from charlm.errors import UsageError
    from charlm.inference.sample import SampleOptions, read_prime

    if prime is not None and prime_file is not None:
        raise UsageError("pass either --prime or --prime-file, not both")
    drawn = seed is None  # then a random one, told, so that a good sample can be made again
    options = SampleOptions(
        read_prime(prime_file) if prime_file is not None else prime or "",
        length,
        temperature,
        top_k,
        top_p,
        secrets.randbits(31) if drawn else seed,
        num_samples,
        sentences,
        min_words,
    )
    options.validate()
    lm = load(run, device=device, which=_which(which))
    lm.check_memory(options)
    if drawn:
        say(f"charlm: seed {options.seed} (pass --seed {options.seed} for this sample again)")
    streaming = num_samples == 1
    texts = ["" for _ in range(num_samples)]
    for index, piece in lm.pieces(options):
        texts[index] += piece
        if streaming:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if streaming:
        if not texts[0].endswith("\n"):
            sys.stdout.write("\n")
    else:
        separator = "" if all(t.endswith("\n") for t in texts) else "\n"
        for text in texts:
            sys.stdout.write(text + separator)
    sys.stdout.flush()


@app.command()
@handle_errors
def evaluate(
    run: RunArg,
    text: Annotated[Path, typer.Option("--text", help="Held-out text (.txt or .csv).")],
    json_out: JsonOpt = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Parallel streams (default: training's).")
    ] = None,
    device: DeviceOpt = "auto",
    which: WhichOpt = "best",
    errors: Annotated[str, typer.Option(help="Invalid UTF-8: strict or replace.")] = "strict",
    csv_column: Annotated[
        str | None, typer.Option(help="CSV column with the text (default: training's).")
    ] = None,
) -> None:
    """Loss (nats/token), perplexity and bits per character of a checkpoint on a text.

    Example: charlm evaluate runs/quick --text held_out.txt --json
    """
    from charlm.api import load
    from charlm.data.reading import spooled
    from charlm.tasks.masks import mask_path

    mask = mask_path(text) if mask_path(text).is_file() else None  # valid.txt -> valid.mask
    with spooled(text) as source:
        lm = load(run, device=device, which=_which(which))
        result = lm.score_file(
            source,  # type: ignore[arg-type]
            batch_size=batch_size,
            errors=errors,
            csv_column=csv_column,
            mask=mask,
        )
    if json_out:
        print(json.dumps(result.as_dict()))
        return
    print(
        f"tokens {result.tokens:,}  loss {result.loss:.4f} nats/token  "
        f"perplexity {result.perplexity:.2f}  bits/char {result.bits_per_char:.4f}"
    )
    for name, group in (result.task or {}).get("groups", {}).items():
        print(
            f"{name}: recall loss {group['recall_loss']:.4f} nats, accuracy "
            f"{group['recall_accuracy']:.3f} ({group['positions']:,} positions; mask {mask})"
        )


@app.command()
@handle_errors
def info(run: RunArg, json_out: JsonOpt = False, which: WhichOpt = "best") -> None:
    """What a run or checkpoint holds: settings, vocabulary, size, step, scores, format."""
    from charlm.rundir.info import describe

    summary = describe(run, _which(which))
    if json_out:
        print(json.dumps(summary))
        return
    from charlm.config import build_config, config_to_yaml

    for key in (
        "checkpoint",
        "format_version",
        "step",
        "parameters",
        "level",
        "vocab_size",
        "best_val_loss",
        "last_val_loss",
        "train_tokens",
        "data_sha256",
    ):
        print(f"{key}: {summary.get(key)}")
    print("config:")
    config_yaml = config_to_yaml(build_config(base=summary["config"]))
    print("  " + config_yaml.rstrip().replace("\n", "\n  "))


@config_app.command("show")
@handle_errors
def config_show(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the resolved settings as YAML (file and --set applied), or the error."""
    from charlm.config import build_config, config_to_yaml

    print(config_to_yaml(build_config(config_file=config, overrides=overrides or [])), end="")


@config_app.command("list")
@handle_errors
def config_list() -> None:
    """The configs that ship with charlm: `--config NAME` uses one from any folder.

    Example: charlm train --config quickstart --out runs/quick
    """
    from charlm.config import describe_config, shipped_configs

    for name, path in shipped_configs().items():
        print(f"{name:20s} {describe_config(path)}")


@data_app.command("download")
@handle_errors
def data_download(
    name: Annotated[str, typer.Argument(help="tinyshakespeare, wikitext-2 or reddit.")],
    dest: Annotated[
        Path | None, typer.Option(help="Folder to save into (default: the cache).")
    ] = None,
) -> None:
    """Download a public corpus, check its sha256, and print where it is."""
    from charlm.data.corpora import download

    for path in download(name, dest):
        print(path)


@data_app.command("list")
@handle_errors
def data_list() -> None:
    """The corpora `charlm data download` knows."""
    from charlm.data.corpora import DATASETS

    for name in DATASETS:
        print(name)


@data_app.command("synth")
@handle_errors
def data_synth(
    task: Annotated[str, typer.Argument(help="lag, markov or brackets.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the task's files.")],
    length: Annotated[int, typer.Option(help="Characters of train.txt.")] = 200_000,
    valid_length: Annotated[int, typer.Option(help="Characters of valid.txt.")] = 20_000,
    lag: Annotated[int, typer.Option(help="lag: noise letters between key and repeat.")] = 10,
    keys: Annotated[int, typer.Option(help="lag: distinct keys (capital letters).")] = 8,
    alphabet: Annotated[
        int, typer.Option(help="lag: noise letters (default 8); markov: symbols (default 4).")
    ] = 0,
    order: Annotated[int, typer.Option(help="markov: characters of context.")] = 3,
    concentration: Annotated[
        float, typer.Option(help="markov: Dirichlet concentration (small = predictable).")
    ] = 0.5,
    depth: Annotated[int, typer.Option(help="brackets: deepest nesting.")] = 8,
    types: Annotated[int, typer.Option(help="brackets: kinds of bracket, 1 to 4.")] = 2,
    open_prob: Annotated[float, typer.Option(help="brackets: chance of opening one.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 1,
    score: Annotated[
        str | None,
        typer.Option(help="What the loss counts: task (lag: the recall only; its default) or all."),
    ] = None,
    lags: Annotated[
        str | None, typer.Option(help="lag: a curriculum, e.g. 5,10,20 (--length per stage).")
    ] = None,
    heldout_lags: Annotated[
        str | None, typer.Option(help="lag: lags in valid.txt only, e.g. 200 (with --lags).")
    ] = None,
) -> None:
    """Write a synthetic task (train.txt, valid.txt) and truth.json with its best achievable loss.

    A lag task also gets train.mask and valid.mask: where it is scored (README, "Synthetic
    tasks: masks, lines, curricula").

    Examples:
      charlm data synth lag --lag 20 --out data/lag20
      charlm train data/lag20/train.txt --val-file data/lag20/valid.txt --out runs/lag20
      charlm data synth lag --lags 5,10,20,30,50,70,100 --heldout-lags 200 --out data/lagc
    """
    from charlm.tasks.synth import write_task

    truth = write_task(
        out,
        task,
        score=score,
        lags=_int_list("--lags", lags),
        heldout_lags=_int_list("--heldout-lags", heldout_lags),
        length=length,
        valid_length=valid_length,
        lag=lag,
        keys=keys,
        alphabet=alphabet,
        order=order,
        concentration=concentration,
        depth=depth,
        types=types,
        open_prob=open_prob,
        seed=seed,
    )
    if "stages" in truth:
        stages = ", ".join(
            f"lag {s['lag']}" + (" (held out)" if s["held_out"] else "") for s in truth["stages"]
        )
        say(f"wrote {out}/train.txt, valid.txt, their masks, truth.json: stages {stages}")
    else:
        say(
            f"wrote {out}/train.txt, valid.txt, truth.json: best loss {truth['best_loss']:.4f} "
            f"nats/char ({truth['best_bits_per_char']:.4f} bits/char)"
        )
    print(out / "truth.json")


def _int_list(option: str, value: str | None) -> list[int]:
    """ "5,10,20" -> [5, 10, 20], or a UsageError naming the option."""
    from charlm.errors import UsageError

    if not value:
        return []
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"{option} takes whole numbers separated by commas (got {value!r})"
        ) from None


@app.command()
@handle_errors
def gradients(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories (or use --fresh / --config).")
    ] = None,
    text: Annotated[Path | None, typer.Option("--text", help="Text to draw windows from.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    fresh: Annotated[
        str | None,
        typer.Option(
            "--fresh",
            help="Fresh models to overlay, comma-separated: cells (rnn,gru,lstm,...) or presets "
            "(irnn, leaky-rnn); --config/--set apply to each.",
        ),
    ] = None,
    at: Annotated[
        str,
        typer.Option(
            "--at",
            help="random: random positions; task: the task's scored positions (lag: the key "
            "after the cue), each window run from its line's start.",
        ),
    ] = "random",
    measure: Annotated[
        str,
        typer.Option(
            "--measure",
            help="loss: |d loss_T / d h_(T-k)|; jacobian: the norm of the state Jacobian "
            "d s_T / d s_(T-k), independent of the loss.",
        ),
    ] = "loss",
    norm: Annotated[
        str, typer.Option("--norm", help="--measure jacobian: spectral or frobenius.")
    ] = "spectral",
    checkpoints: Annotated[
        str | None,
        typer.Option(
            "--checkpoints", help="all, or steps like 100,500: one curve per kept checkpoint."
        ),
    ] = None,
    max_lag: Annotated[int, typer.Option(help="Measure lags 1..K.")] = 50,
    batch: Annotated[int, typer.Option(help="Windows averaged over.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for the window positions.")] = 0,
    json_out: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw a PNG here.")] = None,
    histograms: Annotated[
        Path | None,
        typer.Option("--histograms", help="Also draw gate-activation histograms (PNG)."),
    ] = None,
    singular_values: Annotated[
        Path | None,
        typer.Option("--singular-values", help="Also draw W_hh's singular values (PNG)."),
    ] = None,
    device: DeviceOpt = "cpu",
    which: WhichOpt = "best",
) -> None:
    """Gradient of the last step's loss (or the state Jacobian) k steps back, per layer.

    Vanishing gradients show as a norm falling fast with k; exploding ones as a large maximum.

    Examples:
      charlm gradients --fresh rnn,gru,lstm,irnn --text valid.txt --plot fresh.png
      charlm gradients runs/rnn runs/lstm --text data/lag20/valid.txt --at task --plot grads.png
      charlm gradients runs/gru --checkpoints all --measure jacobian --text valid.txt --plot p.png
    """
    pngs = [p for p in (plot, histograms, singular_values) if p is not None]
    _check_gradient_options(runs, text, config, overrides, fresh, at, measure, norm, pngs)
    assert text is not None
    from charlm.data.prepare import read_text
    from charlm.diagnostics.subjects import task_targets

    raw = read_text(text, csv_column=None)
    subjects = _gradient_subjects(runs, raw, config, overrides, fresh, checkpoints, which, device)
    targets = task_targets(text, raw, subjects) if at == "task" else None
    options = {"max_lag": max_lag, "batch": batch, "seed": seed, "measure": measure, "norm": norm}
    profiles = _measure_subjects(subjects, targets, at == "task", options)
    _print_profiles(profiles, json_out, max_lag)
    if plot is not None:
        from charlm.diagnostics.figures import plot_gradient_profiles

        say(f"wrote {plot_gradient_profiles(profiles, plot)}")
    if histograms is not None or singular_values is not None:
        _draw_insides(subjects, profiles, targets, histograms, singular_values, json_out, at)


def _measure_subjects(
    subjects: list[Any], targets: Any, at_task: bool, options: dict[str, Any]
) -> list[Any]:
    """One GradientProfile per subject (fresh model, run or checkpoint), labelled for the plot."""
    from charlm.diagnostics.gradients import measure_model

    return [
        dataclasses.replace(
            measure_model(
                s.model,
                s.ids,
                **options,
                targets=targets,
                line_break=s.line_break if at_task else None,
                source=s.source,
            ),
            label=s.label,
            step=s.step,
            model_seed=s.model_seed,
        )  # fmt: skip
        for s in subjects
    ]


def _check_gradient_options(
    runs: list[Path] | None,
    text: Path | None,
    config: Path | None,
    overrides: list[str] | None,
    fresh: str | None,
    at: str,
    measure: str,
    norm: str,
    pngs: list[Path],
) -> None:
    """Every refusal of `charlm gradients` before anything is read or written."""
    from charlm.diagnostics.gradients import MEASURES, NORMS, POSITIONS
    from charlm.errors import UsageError

    for flag, value, choices in (
        ("--at", at, POSITIONS),
        ("--measure", measure, MEASURES),
        ("--norm", norm, NORMS),
    ):
        if value not in choices:
            raise UsageError(f"{flag} must be one of {', '.join(choices)} (got '{value}')")
    if text is None:
        raise UsageError("--text FILE is required (the windows are drawn from it)")
    if runs and (config is not None or overrides or fresh):
        raise UsageError("give run directories or --fresh/--config/--set (fresh models), not both")
    for png in pngs:
        if png.suffix.lower() != ".png":
            raise UsageError(f"{png}: the figure is written as PNG; give a name ending in .png")


def _gradient_subjects(
    runs: list[Path] | None,
    raw: str,
    config: Path | None,
    overrides: list[str] | None,
    fresh: str | None,
    checkpoints: str | None,
    which: str,
    device: str,
) -> list:
    from charlm.diagnostics.subjects import fresh_subjects, run_subjects
    from charlm.errors import UsageError
    from charlm.system.device import resolve_device

    if runs:
        return run_subjects(runs, raw, _which(which), checkpoints, device)
    if checkpoints is not None:
        raise UsageError("--checkpoints needs run directories")
    # No --fresh: one fresh model as --config/--set make it ("").
    names = [n.strip() for n in fresh.split(",") if n.strip()] if fresh else [""]
    torch_device = str(resolve_device(device, flag="--device"))
    return fresh_subjects(names, config, overrides or [], raw, torch_device)


def _print_profiles(profiles: list, json_out: bool, max_lag: int) -> None:
    if json_out:
        for profile in profiles:
            print(json.dumps(profile.as_dict()))
        return
    shown = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= max_lag]
    for profile in profiles:
        print(
            f"{profile.label} ({profile.source}): {profile.cell} {profile.layers}x{profile.hidden_size}"
        )
        print("  lag " + "".join(f"  layer {i + 1} mean / max  " for i in range(profile.layers)))
        for k in shown:
            cells = "".join(
                f"  {profile.grad_norm[i][k - 1]:10.3e} / {profile.grad_norm_max[i][k - 1]:9.3e}"
                for i in range(profile.layers)
            )
            print(f"  {k:3d}{cells}")


def _draw_insides(
    subjects: list,
    profiles: list,
    targets: object,
    histograms: Path | None,
    singular_values: Path | None,
    json_out: bool,
    at: str,
) -> None:
    """--histograms and --singular-values: measured on the same windows as the profiles."""
    from charlm.diagnostics import figures as cellplots
    from charlm.diagnostics.activations import activation_stats
    from charlm.diagnostics.activations import singular_values as svs

    first = profiles[0]
    where = "the task's scored positions" if at == "task" else "random positions"
    if histograms is not None:
        stats = [
            activation_stats(
                s.model,
                s.ids,
                steps=first.lags[-1],
                batch=first.windows,
                seed=first.seed,
                targets=targets,
                line_break=s.line_break if at == "task" else None,
                label=s.label,
            )  # fmt: skip
            for s in subjects
        ]
        for st in stats:
            shares = ", ".join(f"{n} {100 * v:.0f}%" for n, v in st.saturation()[0].items())
            print(json.dumps(st.as_dict()) if json_out else f"{st.label}: saturated/off {shares}")
        caption = (
            f"layer 1's activations at every unit and step of {first.windows} windows of "
            f"{first.lags[-1] + 1} steps ending at {where} (seed {first.seed}); saturated: "
            "|tanh| > 0.99, sigmoid < 0.01 or > 0.99; relu off: exactly 0"
        )
        say(f"wrote {cellplots.plot_activations(stats, histograms, caption)}")
    if singular_values is not None:
        spectra = [(s.label, svs(s.model)) for s in subjects]
        for label, layers in spectra:
            if json_out:
                print(json.dumps({"label": label, "singular_values": layers}))
            else:
                tops = "; ".join(
                    ", ".join(f"{b} {v[0]:.2f}" for b, v in blocks.items()) for blocks in layers
                )
                print(f"{label}: largest singular value of W_hh per block: {tops}")
        caption = "singular values of each gate's block of W_hh (its rows for that gate), per layer; grey: 1"
        say(f"wrote {cellplots.plot_singular_values(spectra, singular_values, caption)}")


@app.command()
@handle_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to overlay.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    x: Annotated[
        str, typer.Option("--x", help="Against step, tokens (trained on) or time (seconds).")
    ] = "step",
) -> None:
    """Training and validation curves (loss, bits per char, gradient norm) of runs overlaid, as
    a PNG: one colour per run, named in the legend.

    Examples:
      charlm plot runs/rnn runs/gru runs/lstm --out curves.png
      charlm plot runs/small runs/big --x time --out by-time.png
    """
    from charlm.diagnostics.curves import plot_runs

    say(f"wrote {plot_runs(runs, out, x=x)}")


@app.command()
@handle_errors
def average(
    run: Annotated[Path, typer.Argument(help="A run directory (train --out).")],
    last: Annotated[int, typer.Option("--last", help="Average the N newest checkpoints.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (new).")],
) -> None:
    """Average the weights of a run's last N kept checkpoints into one checkpoint.

    The result samples, evaluates and describes like a run (it has no optimizer state, so it
    does not resume). Example:
      charlm average runs/mine --last 3 --out runs/mine-avg3
      charlm evaluate runs/mine-avg3 --text held_out.txt
    """
    from charlm.rundir.average import average_checkpoints

    result = average_checkpoints(run, last, out)
    steps = ", ".join(f"{s:,}" for s in result.steps)
    say(f"wrote {result.path}: the mean of {len(result.sources)} checkpoints (steps {steps})")


@app.command()
@handle_errors
def export(
    run: RunArg,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="torchscript, or onnx (the onnx extra).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    which: WhichOpt = "best",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Export the model's one-token step (token + state -> logits + state) to run without charlm.

    The file carries the tokenizer and a description of the state; it is checked against
    charlm's own step before it is written (README: "Exporting").

    Examples:
      charlm export runs/mine --format torchscript --out mine.pt
      charlm export runs/mine --format onnx --out mine.onnx
    """
    from charlm.inference.export import export_checkpoint

    result = export_checkpoint(run, fmt, out, which=_which(which), force=force)
    say(
        f"wrote {result.path}: {fmt}, matches charlm's step to {result.max_difference:.1e} "
        f"over {result.steps_checked} steps"
    )


def main() -> None:
    app(prog_name="charlm")
