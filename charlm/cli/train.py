"""The commands that make a model: `charlm prepare` (tokenise a corpus) and `charlm train`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import app, handle_errors, is_main_process, say
from charlm.cli.options import ConfigOpt, Errors, SetOpt, choices
from charlm.config import DataConfig, setting_choices


def _refuse_flag_value(text: Path | None) -> None:
    """`--resume true`: flags take no value, so `true` was read as TEXT; say so."""
    from charlm.errors import UsageError

    if text is not None and str(text).lower() in ("true", "false") and not text.exists():
        raise UsageError(
            f"TEXT '{text}' does not exist; --resume, --force and --quiet take no value: "
            "write the flag alone (e.g. --resume)"
        )


# prepare's options default to None, so the settings come from DataConfig as for `train`; the
# help shows DataConfig's defaults (the bracket escaped: rich reads [default: x] as a style).
_DATA = DataConfig()
_CASE = "lower" if _DATA.lowercase else "keep case"


Level = choices("Level", setting_choices("data.level"))
Segments = choices("Segments", setting_choices("data.segments"))
WordSplit = choices("WordSplit", setting_choices("data.word_split"))
SentenceSplit = choices("SentenceSplit", setting_choices("data.sentence_split"))
LevelOpt = Annotated[
    Level | None,  # type: ignore[valid-type]
    typer.Option(
        help=f"What a token is: a character, a word, a BPE piece \\[default: {_DATA.level}]."
    ),
]
VocabSizeOpt = Annotated[
    int | None,
    typer.Option(
        help="word/bpe: entries kept, counting specials; word: 0 keeps all "
        f"\\[default: {_DATA.vocab_size}]."
    ),
]
ValFractionOpt = Annotated[
    float | None,
    typer.Option(help=f"Last fraction held out \\[default: {_DATA.val_fraction}]."),
]
LowercaseOpt = Annotated[
    bool | None,
    typer.Option(
        "--lowercase/--keep-case", help=f"word: lower-case the text \\[default: {_CASE}]."
    ),
]
SegmentsOpt = Annotated[
    Segments | None,  # type: ignore[valid-type]
    typer.Option(
        help="word: sentences (START ... END) or lines (each + <eos>) "
        f"\\[default: {_DATA.segments}]."
    ),
]
WordSplitOpt = Annotated[
    WordSplit | None,  # type: ignore[valid-type]
    typer.Option(
        help="word: rules (punctuation, clitics) or whitespace (str.split) "
        f"\\[default: {_DATA.word_split}]."
    ),
]
SentenceSplitOpt = Annotated[
    SentenceSplit | None,  # type: ignore[valid-type]
    typer.Option(
        help="word, sentences: pysbd (reads abbreviations, initials, quotes) or rules "
        f"(15 abbreviations, ~100x faster) \\[default: {_DATA.sentence_split}]."
    ),
]


@app.command()
@handle_errors
def prepare(
    text: Annotated[Path, typer.Argument(help="A .txt file, a folder of .txt files, or a .csv.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for train.bin, val.bin, meta.json.")
    ],
    level: LevelOpt = None,
    vocab_size: VocabSizeOpt = None,
    val_fraction: ValFractionOpt = None,
    val_file: Annotated[Path | None, typer.Option(help="Validation text instead.")] = None,
    csv_column: Annotated[
        str | None, typer.Option(help="CSV column with the text (a .csv input needs it).")
    ] = None,
    errors: Annotated[
        Errors, typer.Option(help="Invalid UTF-8: strict refuses it, replace reads U+FFFD.")
    ] = "strict",
    lowercase: LowercaseOpt = None,
    segments: SegmentsOpt = None,
    word_split: WordSplitOpt = None,
    sentence_split: SentenceSplitOpt = None,
) -> None:
    """Tokenise a corpus into memory-mappable token ids (cached: same input, same settings, no work).

    Example, after `charlm data download reddit` (files go to ~/.cache/charlm):
    charlm prepare ~/.cache/charlm/reddit/reddit-comments-2015-08.csv
    --csv-column body --level word --vocab-size 8000 --out data/reddit

    WikiText-2 as pytorch/examples reads it, after `charlm data download wikitext-2`:
    charlm prepare ~/.cache/charlm/wikitext-2/train.txt
    --val-file ~/.cache/charlm/wikitext-2/valid.txt --level word --vocab-size 0 --keep-case
    --segments lines --word-split whitespace --out data/wt2
    """
    from charlm.config import build_config
    from charlm.data.prepare import PrepareSettings
    from charlm.data.prepare import prepare as run_prepare
    from charlm.data.reading import spooled

    given = {
        "level": level,
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "csv_column": csv_column,
        "lowercase": lowercase,
        "segments": segments,
        "word_split": word_split,
        "sentence_split": sentence_split,
    }
    # Only the options given: every default comes from DataConfig, as for `charlm train`.
    config = build_config(
        overrides=[f"data.{key}={value}" for key, value in given.items() if value is not None]
    )
    settings = PrepareSettings.from_config(config.data, val_file=val_file, errors=errors)
    with spooled(text) as source, spooled(val_file) as val_source:
        settings = dataclasses.replace(settings, val_file=val_source)
        meta = run_prepare(source, out, settings)
    say(  # as prepare's "wrote" line: 80 columns hold it for runs/NAME/data
        f"prepared {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
        f"{meta['level']} vocab {meta['vocab_size']:,}"
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
        Errors, typer.Option(help="Invalid UTF-8 in TEXT: strict refuses it, replace reads U+FFFD.")
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
      charlm train input.txt --out runs/ten --set train.max_time=10m

    train.max_time (seconds, or 90s, 10m, 2h, 1h30m) stops after that much
    training time, and the cosine schedule follows the time; with
    train.max_steps or train.epochs also set, whichever comes first.
    """
    from charlm.api import train_command as api_train
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
