"""The `charlm data` group: `data download`, `data list` (public corpora), `data synth` (tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import data_app, handle_errors, say


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
    task: Annotated[str, typer.Argument(help="lag, markov, brackets or copy.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the task's files.")],
    length: Annotated[int, typer.Option(help="Characters of train.txt.")] = 200_000,
    valid_length: Annotated[int, typer.Option(help="Characters of valid.txt.")] = 20_000,
    lag: Annotated[
        int, typer.Option(help="lag, copy: noise letters between key (string) and repeat.")
    ] = 10,
    keys: Annotated[int, typer.Option(help="lag, copy: distinct keys (capital letters).")] = 8,
    alphabet: Annotated[
        int,
        typer.Option(help="lag, copy: noise letters (default 8); markov: symbols (default 4)."),
    ] = 0,
    copy_length: Annotated[int, typer.Option(help="copy: symbols in the string copied.")] = 10,
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
        typer.Option(
            help="What the loss counts: task (lag: the recall, copy: the copied string; "
            "their default) or all."
        ),
    ] = None,
    lags: Annotated[
        str | None,
        typer.Option(help="lag, copy: a curriculum, e.g. 5,10,20 (--length per stage)."),
    ] = None,
    heldout_lags: Annotated[
        str | None,
        typer.Option(help="lag, copy: lags in valid.txt only, e.g. 200 (with --lags)."),
    ] = None,
) -> None:
    """Write a synthetic task (train.txt, valid.txt) and truth.json with its best achievable loss.

    A lag or copy task also gets train.mask and valid.mask: where it is scored (README,
    "Synthetic tasks: masks, lines, curricula").

    Examples:
      charlm data synth lag --lag 20 --out data/lag20
      charlm train data/lag20/train.txt --val-file data/lag20/valid.txt --out runs/lag20
      charlm data synth lag --lags 5,10,20,30,50,70,100 --heldout-lags 200 --out data/lagc
      charlm data synth copy --copy-length 5 --lags 5,10,20 --heldout-lags 40 --out data/copy
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
        copy_length=copy_length,
    )
    _report_synth(out, truth)


def _report_synth(out: Path, truth: dict) -> None:
    """The line that says what `data synth` wrote, then the path of truth.json (stdout)."""
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
