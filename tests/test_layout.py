"""The package's shape: one-line docstrings, and imports that only point down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charlm"


def charlm_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlm"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("charlm"))
    return names


def test_every_module_says_what_it_owns_in_one_line() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, f"{path.name} has no docstring"
        assert len(doc.splitlines()[0]) > 10, f"{path.name}: the first line should say what it owns"


def test_imports_point_down() -> None:
    imports = {p.stem: charlm_imports(p) for p in PACKAGE.glob("*.py")}
    assert imports["config"] <= {"charlm.errors"}  # settings know nothing of the rest
    # The network sees a config and its cells, never a path; its regularisers are torch-only.
    assert imports["model"] <= {"charlm.config", "charlm.regularise", "charlm.cells"}
    assert imports["cells"] <= {"charlm.config"}
    assert imports["regularise"] == set()
    assert imports["errors"] == set()
    for name, used in imports.items():
        if name not in ("cli", "__main__"):
            assert "charlm.cli" not in used, f"{name} imports the CLI; nothing may"


# The floors, lowest first: a module imports only from floors below its own. A new module goes
# on the lowest floor its imports allow (docs/architecture.md draws this).
FLOORS = [
    {"errors", "regularise", "metrics", "runfiles", "threads"},
    {
        "__init__",
        "config",
        "batching",
        "device",
        "distributed",
        "corpora",
        "textsource",
        "tokenizer",
        "runlock",
        "tasks",
        "tblog",
    },
    {"cells", "prepare", "schedules", "synth", "curriculum"},
    {"model"},
    {"checkpoint"},
    {"health", "lineup"},
    {"train_step", "warmstart"},
    {"evaluate", "sample", "gradients", "runinfo", "resume", "average", "export", "preflight"},
    {"evalsample"},
    {"plots", "train", "probes"},
    {"api", "cellplots"},
    {"cli"},
    {"__main__"},
]


def test_every_module_stands_on_a_floor_and_imports_only_from_below() -> None:
    floor_of = {name: level for level, names in enumerate(FLOORS) for name in names}
    for path in sorted(PACKAGE.glob("*.py")):
        assert path.stem in floor_of, f"{path.name} is on no floor of FLOORS"
        for name in _floor_imports(path):
            assert floor_of[name] < floor_of[path.stem], (
                f"{path.stem} (floor {floor_of[path.stem]}) imports {name} "
                f"(floor {floor_of[name]}): imports must point down"
            )


def _floor_imports(path: Path) -> set[str]:
    """The package modules `path` imports, by stem (`from charlm import x`: x if a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "charlm":
            for alias in node.names:
                is_module = (PACKAGE / f"{alias.name}.py").is_file()
                names.add(alias.name if is_module else "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("charlm."):
            names.add(node.module.removeprefix("charlm."))
        elif isinstance(node, ast.Import):
            names.update(
                a.name.removeprefix("charlm.") for a in node.names if a.name.startswith("charlm.")
            )
    return names


def test_import_charlm_stays_cheap_and_the_api_loads_on_first_use() -> None:
    """`import charlm` (every CLI call) loads neither torch nor the API; `charlm.load` and
    `charlm.train` (the module charlm/train.py, callable) bring them in when first used."""
    import subprocess
    import sys

    code = (
        "import sys, charlm; cheap = 'torch' not in sys.modules and 'charlm.api' not in "
        "sys.modules; charlm.load; print(cheap, 'charlm.api' in sys.modules, "
        "callable(charlm.train), charlm.train.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "charlm.train"]
