"""The commands that use a trained model: `charlm sample`, `charlm evaluate`, `charlm info`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import app, handle_errors, say
from charlm.cli.options import (
    DeviceOpt,
    Errors,
    JsonOpt,
    QuantizeOpt,
    RepetitionPenaltyOpt,
    RunArg,
    StopOpt,
    WhichOpt,
)
from charlm.rundir.names import check_which


@app.command()
@handle_errors
def sample(
    run: RunArg,
    prime: Annotated[str | None, typer.Option(help="Text to start from.")] = None,
    prime_file: Annotated[
        Path | None,
        typer.Option(
            "--prime-file",
            help="Start from this file's text (UTF-8, at most 1 MB; - reads stdin).",
        ),
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
    stop: StopOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    quantize: QuantizeOpt = "fp32",
    device: DeviceOpt = "auto",
    which: WhichOpt = "best",
) -> None:
    """Generate text, streamed to stdout as it is made.

    Examples:
      charlm sample runs/quick --prime "The " --length 300 --temperature 0.8 --seed 1
      charlm sample runs/quick --prime-file opening.txt --length 300
      charlm sample runs/quick --stop "\\n\\n" --repetition-penalty 1.2 --quantize int8
    """
    import secrets

    from charlm.api import open_model
    from charlm.errors import UsageError
    from charlm.inference.sample import SampleOptions, read_prime, unescape

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
        stop=[unescape(text, "--stop") for text in stop or []],
        repetition_penalty=repetition_penalty,
    )
    options.validate()
    lm = open_model(run, device=device, which=check_which(which), quantize=_quantize(quantize))
    lm.check_memory(options)
    if drawn:
        say(f"charlm: seed {options.seed} (pass --seed {options.seed} for this sample again)")
    _write_samples(lm.pieces(options), num_samples)


def _write_samples(pieces: Iterable[tuple[int, str]], num_samples: int) -> None:
    """One sample streams to stdout as it is made; several are printed whole, in order, each
    ending in a line break."""
    streaming = num_samples == 1
    texts = ["" for _ in range(num_samples)]
    for index, piece in pieces:
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


def _quantize(value: str) -> str | None:
    """--quantize: fp32 (None, the default) or a choice the model wing knows (int8)."""
    return None if value == "fp32" else str(value)


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
    errors: Annotated[
        Errors, typer.Option(help="Invalid UTF-8: strict refuses it, replace reads U+FFFD.")
    ] = "strict",
    csv_column: Annotated[
        str | None, typer.Option(help="CSV column with the text (default: training's).")
    ] = None,
    quantize: QuantizeOpt = "fp32",
) -> None:
    """Loss (nats/token), perplexity and bits per character of a checkpoint on a text.

    Example: charlm evaluate runs/quick --text held_out.txt --json
    With --quantize int8 the scores are those of the int8 steps `sample --quantize int8` takes.
    """
    from charlm.api import open_model
    from charlm.data.reading import spooled
    from charlm.errors import UsageError
    from charlm.tasks.masks import mask_path

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    mask = mask_path(text) if mask_path(text).is_file() else None  # valid.txt -> valid.mask
    with spooled(text) as source:
        lm = open_model(run, device=device, which=check_which(which), quantize=_quantize(quantize))
        result = lm.score_file(
            source,  # type: ignore[arg-type]
            batch_size=batch_size,
            errors=errors,
            csv_column=csv_column,
            mask=mask,
        )
    if json_out:  # what was scored (the checkpoint folder, its step and level), then the scores
        scored = {"checkpoint": str(lm.path), "step": lm.step, "level": lm.level}
        print(json.dumps({**scored, **result.as_dict()}))
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

    summary = describe(run, check_which(which))
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
        "precision",
        "train_tokens",
        "data_sha256",
    ):
        print(f"{key}: {summary.get(key)}")
    print("config:")
    config_yaml = config_to_yaml(build_config(base=summary["config"]))
    print("  " + config_yaml.rstrip().replace("\n", "\n  "))
