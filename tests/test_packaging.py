"""Installing charlm: the wheel's contents, shipped configs by name, the lock, shell completion."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest
from helpers import cli
from packaging.requirements import Requirement

from charlm.config import build_config, resolve_config_file, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def run_charlm(*args: str, cwd: Path, pythonpath: Path | None = None, **env: str):
    environ = {**os.environ, **env}
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "charlm", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source (offline: no build isolation, no deps)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("charlm", "configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("*.whl")
    return found


@pytest.mark.slow
def test_wheel_carries_configs_license_and_our_name(wheel: Path) -> None:
    assert wheel.name.startswith("charlm_rnn-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for config in CONFIGS:
            packed = archive.read(f"charlm/configs/{config.name}")
            assert packed == config.read_bytes(), config.name
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        assert "MIT" in archive.read(f"{info}/licenses/LICENSE").decode()
    assert re.search(r"^Name: charlm-rnn$", metadata, re.M)
    assert re.search(r"^License-Expression: MIT$", metadata, re.M)
    assert "charlm = charlm.cli:main" in entry_points
    assert "charlm/py.typed" in names  # PEP 561: type checkers read the annotations
    assert re.search(r"^Classifier: Typing :: Typed$", metadata, re.M)
    assert re.search(r"^Classifier: Operating System :: OS Independent$", metadata, re.M)
    from charlm._version import __version__

    assert re.search(rf"^Version: {re.escape(__version__)}$", metadata, re.M)  # one source
    assert len(CONFIGS) >= 6 and not any(n.startswith(("tests/", "configs/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run_charlm("--version", cwd=elsewhere, pythonpath=site)
    assert where.returncode == 0, where.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import charlm; print(charlm.__file__)"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(site)  # the wheel's copy, not the checkout's

    listing = run_charlm("config", "list", cwd=elsewhere, pythonpath=site)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [c.stem for c in CONFIGS]
    for spelling in ("tutorial-gru", "tutorial-gru.yaml", "configs/tutorial-gru.yaml"):
        shown = run_charlm("config", "show", "--config", spelling, cwd=elsewhere, pythonpath=site)
        assert shown.returncode == 0, shown.stderr
        assert "level: word" in shown.stdout and "vocab_size: 8000" in shown.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_venv_and_trains_and_samples_without_fcntl(
    wheel: Path, tmp_path: Path
) -> None:
    """pip installs the wheel into a fresh venv (offline: no index, no dependencies; those
    come from this interpreter's site-packages, added by a .pth file, so that its own .pth
    files, an editable charlm among them, are not run); its `charlm` script then trains and
    samples with fcntl, os.O_DIRECTORY and os.statvfs gone, as on Windows."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (site / "outer.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index"]
        + ["--no-deps", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    # As on Windows: no fcntl, no folder fsync, no statvfs (filelock takes its soft lock there
    # and says so once; Windows gets its msvcrt lock instead). Idempotent: where lib64 links to
    # lib, site reads the venv's .pth files twice.
    (site / "zz_as_on_windows.pth").write_text(
        "import os, sys, warnings; sys.modules['fcntl'] = None; "
        "[delattr(os, n) for n in ('O_DIRECTORY', 'statvfs') if hasattr(os, n)]; "
        "warnings.filterwarnings('ignore', 'only soft file lock is available')\n"
    )
    script = venv / ("Scripts/charlm.exe" if os.name == "nt" else "bin/charlm")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc abd xyz\n" * 400, encoding="utf-8")

    def charlm(*args: str | Path) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [script, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        return done

    where = subprocess.run(
        [python, "-c", "import charlm, os, sys; print(charlm.__file__, sys.modules['fcntl'], "
         "hasattr(os, 'statvfs'))"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=True,
    ).stdout.split()  # fmt: skip
    assert Path(where[0]).is_relative_to(site) and where[1:] == ["None", "False"], where
    tiny = ["--set", "model.hidden_size=16", "--set", "train.batch_size=4"]
    tiny += ["--set", "train.seq_len=16", "--set", "train.max_steps=5"]
    charlm("train", corpus, "--out", "run", "-q", *tiny)
    sampled = charlm("sample", "run", "--length", "30", "--seed", "1", "--device", "cpu")
    assert len(sampled.stdout) >= 30


def test_bare_names_and_checkout_paths_give_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list(shipped_configs()) == [c.stem for c in CONFIGS]
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for config in CONFIGS:
        expected = build_config(config_file=config)
        for spelling in (config.stem, config.name, f"configs/{config.name}"):
            assert build_config(config_file=Path(spelling)) == expected, spelling


def test_an_existing_file_wins_over_a_shipped_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("quickstart").write_text("model:\n  hidden_size: 24\n", encoding="utf-8")
    assert resolve_config_file(Path("quickstart")) == Path("quickstart")
    assert build_config(config_file=Path("quickstart")).model.hidden_size == 24
    # Only a bare name or configs/NAME.yaml falls back; other missing paths stay missing.
    assert resolve_config_file(Path("other/quickstart.yaml")) == Path("other/quickstart.yaml")


def test_unknown_config_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    result = cli("config", "show", "--config", "tutorial-gruu")
    assert result.exit_code == 2
    assert result.stderr.startswith("charlm: error: tutorial-gruu: config file not found")
    assert "tutorial-gru," in result.stderr and "charlm config list" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_list_describes_each_config() -> None:
    result = cli("config", "list")
    assert result.exit_code == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["char-rnn"].startswith("karpathy/char-rnn's")
    assert set(lines) == {c.stem for c in CONFIGS}
    for name, description in lines.items():  # a whole sentence for a user, no tracker talk
        assert description.strip().endswith("."), (name, description)
        assert not re.search(r"\bissue \d+", description), (name, description)
        assert len(description) <= 100, (name, description)


def test_lock_pins_every_dependency_within_its_range() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: '{line}' is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    declared = requires("charlm-rnn")  # runtime and extras, as installed from pyproject.toml
    assert any("extra ==" in text for text in declared)
    for text in declared:
        req = Requirement(text)
        extras = ("dev", "onnx", "tensorboard", "transformers", "wandb")  # scripts/setup.sh's
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"constraints.txt has no pin for {name}: run scripts/lock.sh"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside '{text}'"


def test_shell_completion_is_on(tmp_path: Path) -> None:
    assert "--install-completion" in cli("--help").stdout
    shown = cli("--show-completion", "bash")
    assert shown.exit_code == 0 and "_CHARLM_COMPLETE=complete_bash" in shown.stdout

    def complete(words: str) -> list[str]:
        result = run_charlm(
            cwd=tmp_path,
            _CHARLM_COMPLETE="complete_bash",
            COMP_WORDS=words,
            COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    installed = run_charlm("--install-completion", "bash", cwd=tmp_path, HOME=str(tmp_path))
    assert installed.returncode == 0, installed.stderr
    script = (tmp_path / ".bash_completions" / "charlm.sh").read_text(encoding="utf-8")
    assert "_CHARLM_COMPLETE=complete_bash" in script
    assert "charlm.sh" in (tmp_path / ".bashrc").read_text(encoding="utf-8")
    assert complete("charlm config l") == ["list"]
    assert complete("charlm train --config tutorial") == ["tutorial-gru-fast", "tutorial-gru"]


def _source_files() -> list[Path]:
    """The project's files: git's list in a checkout, else everything (e.g. in an sdist)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / name for name in listed.stdout.split("\0") if name]
    skip = {"__pycache__", ".pytest_cache", ".ruff_cache", ".venv", ".hypothesis", "runs"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def _collected(folder: Path) -> str:
    """`pytest --collect-only` of `folder`'s tests, importing charlm from `folder` alone."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]  # "N tests collected in S s"


@pytest.mark.slow
def test_the_sdist_collects_every_test_from_itself(tmp_path: Path) -> None:
    """Distribution packagers run the tests from the sdist: it must carry conftest.py,
    helpers.py and the fixtures, and its own tests must all collect (with charlm from it)."""
    src = tmp_path / "src"
    for path in _source_files():
        if path.is_file():
            target = src / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    build = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    out = tmp_path / "dist"
    made = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-3000:]
    with tarfile.open(out / made.stdout.strip().splitlines()[-1]) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    for needed in ("tests/conftest.py", "tests/helpers.py", "tests/fixtures/old_checkpoints"):
        assert (unpacked / needed).exists(), needed
    theirs, ours = _collected(unpacked), _collected(ROOT)
    assert theirs.split()[0] == ours.split()[0] and "error" not in theirs, (theirs, ours)
