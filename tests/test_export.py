"""`charlm export`: the exported step, run by its own runtime, gives charlm's logits to 1e-5."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli, readme_blocks, write_corpus

from charlm.inference.export import ONNX_MODULES
from charlm.rundir.checkpoint import load_checkpoint

MISSING_ONNX = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
if MISSING_ONNX and os.environ.get("CI"):  # CI installs the onnx extra: a skip there hides a gap
    raise RuntimeError(f"CI must install the onnx extra (missing {', '.join(MISSING_ONNX)})")
needs_onnx = pytest.mark.skipif(
    bool(MISSING_ONNX), reason=f"the onnx extra is not installed ({', '.join(MISSING_ONNX)})"
)

# One run per kind of state and output path: GRU and plain RNN carry one tensor, LSTM two; the
# tied LSTM (hidden 16, embedding 8) goes through the projection before the decoder.
VARIANTS = {
    "gru": ["--set", "model.cell=gru", "--set", "model.layers=2"],
    "rnn": ["--set", "model.cell=rnn"],
    "lstm-tied": ["--set", "model.cell=lstm", "--set", "model.tie_weights=true"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def runs(corpus: Path) -> dict[str, Path]:
    folder = corpus.parent
    out = {}
    for name, settings in VARIANTS.items():
        out[name] = folder / name
        result = cli(
            "train", corpus, "--out", out[name], "-q", *TINY, *settings,
            "--set", "train.max_steps=10",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    return out


def charlm_reference(run: Path, tokens: torch.Tensor, state: torch.Tensor):
    """charlm's own logits for a token sequence (the fused forward, not the exported step)."""
    model = load_checkpoint(run).build_model("cpu").eval()
    lstm = model.config.cell == "lstm"
    with torch.no_grad():
        logits, final = model(tokens, (state[0], state[1]) if lstm else state[0])
    return logits, torch.stack(final) if lstm else final.unsqueeze(0)


def load_torchscript(path: Path):
    module = torch.jit.load(str(path))
    return lambda token, state: module(token, state)


def load_onnx(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def step(token: torch.Tensor, state: torch.Tensor):
        logits, new = session.run(None, {"token": token.numpy(), "state": state.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(new)

    return step


def assert_matches_charlm(run: Path, step, vocab: int, layers: int) -> None:
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, vocab, (20, 4), generator=generator)  # 20 steps, a batch of 4
    width = 2 if "lstm" in run.name else 1
    state = torch.randn(width, layers, 4, 16, generator=generator) * 0.5
    expected, expected_state = charlm_reference(run, tokens, state)
    with torch.no_grad():
        for t in range(tokens.shape[0]):
            logits, state = step(tokens[t], state)
            torch.testing.assert_close(logits, expected[t], rtol=0, atol=1e-5)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, load",
    [("torchscript", load_torchscript), pytest.param("onnx", load_onnx, marks=needs_onnx)],
)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_gives_charlms_logits(runs, tmp_path: Path, variant: str, fmt: str, load) -> None:
    out = tmp_path / f"{variant}.{fmt}"
    result = cli("export", runs[variant], "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # the exporter's chatter stays off stdout
    assert "matches charlm's step to" in result.stderr
    info = load_checkpoint(runs[variant])
    assert_matches_charlm(
        runs[variant], load(out), info.meta["vocab_size"], info.config.model.layers
    )


def test_torchscript_carries_its_tokenizer_and_shape(runs, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    assert cli("export", runs["lstm-tied"], "--format", "torchscript", "--out", out).exit_code == 0
    files = {"charlm.json": "", "tokenizer.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    info = json.loads(files["charlm.json"])
    assert info["state_shape"] == [2, 1, 1, 16] and info["cell"] == "lstm"
    assert files["tokenizer.json"].decode() == load_checkpoint(runs["lstm-tied"]).tokenizer_json


@pytest.mark.slow
@needs_onnx
def test_the_readme_examples_run_as_written(
    runs, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(runs["gru"])
    monkeypatch.chdir(tmp_path)
    commands, *programs = readme_blocks("## Exporting")
    assert [c[:2] for c in commands] == [["charlm", "export"]] * 2 and len(programs) == 2
    for command in commands:
        result = cli(*command[1:])
        assert result.exit_code == 0, (command, result.stderr)
    texts = []
    for program in programs:
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        texts.append(done.stdout.rstrip("\n"))
    # Char level: 200 sampled tokens, each a character of the corpus or <unk>.
    for text in texts:
        plain = text.replace("<unk>", "\0")
        assert len(plain) == 200 and set(plain) <= set(corpus.read_text()) | {"\0"}, text


def test_refusals_write_nothing(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"mine")
    for args, message in [
        (("--format", "tflite", "--out", tmp_path / "a"), "'tflite' is not one of"),
        (("--format", "torchscript", "--out", taken), "already exists; pass --force"),
        (("--format", "torchscript", "--out", tmp_path, "--force"), "is a folder"),
        (("--format", "torchscript", "--out", tmp_path / "a", "--checkpoint", "x"), "--checkpoint"),
    ]:
        result = cli("export", runs["gru"], *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    assert taken.read_bytes() == b"mine" and not (tmp_path / "a").exists()
    forced = cli("export", runs["gru"], "--format", "torchscript", "--out", taken, "--force")
    assert forced.exit_code == 0 and taken.read_bytes() != b"mine"

    import charlm.inference.export

    monkeypatch.setattr(charlm.inference.export.importlib.util, "find_spec", lambda name: None)
    result = cli("export", runs["gru"], "--format", "onnx", "--out", tmp_path / "b.onnx")
    assert result.exit_code == 1 and "pip install 'charlm-rnn[onnx]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.pt"]
