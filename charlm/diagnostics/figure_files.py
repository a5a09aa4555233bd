"""Writing a figure to a file: the formats matplotlib writes, the check before the work, the save.

Every command that draws (`charlm plot`, `charlm gradients --plot/--histograms/
--singular-values`) names its file by its suffix, and takes any format matplotlib's Agg backend
writes: .png, .svg, .pdf, .eps, .jpg, .webp, ... (`figure_formats`). Other suffixes are refused
in one line, before anything is read, measured or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from charlm.errors import UsageError
from charlm.system.files import (
    check_destination,
    refusing,
    remove_stale_temporaries,
    replace_durably,
    temporary_sibling,
)

_FIRST = ("png", "svg", "pdf")  # listed first in the refusal: the usual ones
_FIX = "choose another name for the figure"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def figure_formats() -> tuple[str, ...]:
    """The suffixes (without the dot) matplotlib's savefig writes here: Agg's file types, less
    pgf where its TeX program is missing (it would fail only after the work)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    found = set(FigureCanvasAgg.get_supported_filetypes())
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:
        found.discard("pgf")
    return (*[f for f in _FIRST if f in found], *sorted(found - set(_FIRST)))


def check_figure_path(path: Path) -> str:
    """The format `path`'s suffix names, or the one-line refusal naming the path and the
    suffixes taken; also refuses a folder that takes no file (before any work)."""
    path = Path(path)
    formats = figure_formats()
    suffix = path.suffix.lower().removeprefix(".")
    if suffix not in formats:
        given = f"'.{suffix}'" if suffix else "no suffix"
        raise UsageError(
            f"{path}: {given} is not a figure format matplotlib writes; give a name ending in "
            + ", ".join(f".{f}" for f in formats)
        )
    check_destination(path, _FIX)
    return suffix


def save_figure(fig: Any, out: Path) -> Path:
    """Write `fig` to `out` in the format its suffix names, whole or not at all (a temporary
    sibling renamed into place: a killed command leaves no half-drawn file); closes `fig`."""
    out = Path(out)
    try:
        fmt = check_figure_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # a killed command's
        temp = temporary_sibling(out)
        try:
            with refusing(out, _FIX):
                fig.savefig(temp, dpi=90, format=fmt)
                replace_durably(temp, out)
        finally:
            temp.unlink(missing_ok=True)
    finally:
        pyplot().close(fig)
    return out
