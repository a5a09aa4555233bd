"""The package's floor plan: wings by concern, each importing only wings below it, no circle
inside a wing, and every module saying in one line what it owns (docs/architecture.md).

Imports are read with `ast`, including those inside functions and those made through
`importlib.import_module("charlm...")` or `__import__("charlm...")`, so a lazy import cannot
hide an upward edge. A new module inside a wing needs no edit here: the order is per wing, and
inside a wing only circles are refused.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charlm"

# Lowest first. A wing imports only from wings on lower rows; wings on one row never import
# each other. "__init__" is the package face (charlm.load, charlm.train, ...), above the API it
# loads lazily; nothing below it imports the face.
WINGS = [
    {"errors", "_version"},
    {"config", "system"},
    {"model", "tasks"},
    {"data", "rundir"},
    {"inference", "diagnostics"},
    {"training"},
    {"api"},
    {"__init__"},
    {"cli"},
    {"__main__"},
]
SUBPACKAGES = {
    "system",
    "tasks",
    "model",
    "data",
    "rundir",
    "inference",
    "diagnostics",
    "training",
    "cli",
}
_DYNAMIC = {"import_module", "__import__"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("charlm", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


def imported(name: str, source: str, known: set[str]) -> set[str]:
    """The package modules that module `name` imports, statically, lazily or by string."""
    is_package = name in known and (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file()
    package = name if is_package or name == "charlm" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if base == "charlm" or base.startswith("charlm."):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.split(".")[0] == "charlm")
        elif isinstance(node, ast.Call) and _is_dynamic(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                if first.value.split(".")[0] == "charlm":
                    targets.add(first.value)
    return {_nearest(t, known) for t in targets} - {name}


def _is_dynamic(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id in _DYNAMIC) or (
        isinstance(func, ast.Attribute) and func.attr in _DYNAMIC
    )


def _nearest(target: str, known: set[str]) -> str:
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def wing_of(name: str) -> str:
    """charlm.system.threads -> system; charlm.api -> api; charlm (the face) -> __init__."""
    return name.split(".")[1] if "." in name else "__init__"


def rank_of(wing: str) -> int:
    return next(i for i, row in enumerate(WINGS) if wing in row)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {
        name: imported(name, path.read_text(encoding="utf-8"), known)
        for name, path in found.items()
    }


def test_every_module_says_what_it_owns_in_one_line() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, f"{path.relative_to(PACKAGE)} has no docstring"
        assert len(doc.splitlines()[0]) > 10, f"{path}: the first line should say what it owns"


def test_the_package_is_wings_with_few_modules_at_the_top() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    wings = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert wings == SUBPACKAGES
    for name in [*top, *wings]:
        rank_of(name)  # every module and wing has a row in WINGS


def test_each_wing_imports_only_from_wings_below_it() -> None:
    for name, targets in import_graph().items():
        wing = wing_of(name)
        for target in targets:
            other = wing_of(target)
            if other == wing:
                continue
            assert rank_of(other) < rank_of(wing), (
                f"{name} (wing {wing}) imports {target} (wing {other}): imports must point down"
            )


def test_no_circle_inside_a_wing() -> None:
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if wing_of(nxt) != wing_of(node):
                continue
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_lowest_rooms_know_nothing_of_the_rest() -> None:
    graph = import_graph()
    assert graph["charlm.config"] <= {"charlm.errors"}  # settings know nothing of the rest
    assert graph["charlm.errors"] == set()
    # The network sees a config and its cells, never a path, YAML or a tokenizer.
    for name in ("charlm.model.cells", "charlm.model.network", "charlm.model.regularise"):
        assert {wing_of(t) for t in graph[name]} <= {"model", "config", "errors"}, name
    for name, targets in graph.items():
        if wing_of(name) not in ("cli", "__main__"):
            assert not any(wing_of(t) == "cli" for t in targets), f"{name} imports the CLI"
        if wing_of(name) not in ("__init__", "cli", "__main__"):
            assert "charlm" not in targets, f"{name} imports the package face (use charlm._version)"


def test_lazy_and_string_imports_count() -> None:
    """The reader sees imports inside functions and through importlib or __import__ strings."""
    known = {"charlm", "charlm.api", "charlm.system", "charlm.system.threads", "charlm.errors"}
    source = (
        "import importlib\n"
        "def f():\n"
        "    from charlm import api\n"
        "    importlib.import_module('charlm.system.threads')\n"
        "    __import__('charlm.errors')\n"
        "    name = 'charlm.json'  # a plain string is no import\n"
    )
    found = imported("charlm.system.device", source, known | {"charlm.system.device"})
    assert found == {"charlm.api", "charlm.system.threads", "charlm.errors"}


def test_import_charlm_stays_cheap_and_charlm_train_is_the_api_function() -> None:
    """`import charlm` (every CLI call) loads neither torch nor the API; `charlm.load` brings
    them in when first used; `charlm.train` is the API's function, not a module."""
    code = (
        "import sys, inspect, charlm; cheap = 'torch' not in sys.modules and 'charlm.api' not in "
        "sys.modules; charlm.load; print(cheap, 'charlm.api' in sys.modules, "
        "inspect.isfunction(charlm.train), charlm.train.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "charlm.api"]
    import charlm

    assert inspect.isfunction(charlm.train)
