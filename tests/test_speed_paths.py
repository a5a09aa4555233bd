"""The fast paths (lean sampling step, training precision and sync options) against the plain ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlm.config import ModelConfig
from charlm.model.cells import CELLS, map_state
from charlm.model.network import LeanStepper, RNNLanguageModel
from charlm.rundir.checkpoint import load_checkpoint
from charlm.rundir.info import describe
from charlm.rundir.records import read_metrics
from charlm.system.device import cpu_bf16_features, cpu_flags
from charlm.training import precision
from tests.helpers import TINY, cli, write_corpus


def _model(cell: str, leak: float = 0.0, tie: bool = False) -> RNNLanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        cell=cell, layers=2, hidden_size=16, embedding_dim=8, leak=leak, tie_weights=tie
    )
    model = RNNLanguageModel(config, vocab_size=11).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced bias cannot hide
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return model


def _random_state(model: RNNLanguageModel, batch: int):
    return map_state(torch.randn_like, model.initial_state(batch, torch.device("cpu")))


@pytest.mark.parametrize(
    ("cell", "leak", "tie"),
    [
        # Every registered cell: a new cell's lean sampling step must match its full model, or
        # `charlm sample` would be quietly wrong.
        *[(name, 0.0, False) for name in sorted(CELLS)],
        ("rnn", 0.3, False),
        ("lstm", 0.0, True),  # tied with hidden 16 != embedding 8: through the projection
    ],
)
def test_lean_step_matches_the_full_model_over_several_steps(
    cell: str, leak: float, tie: bool
) -> None:
    model = _model(cell, leak, tie)
    lean = LeanStepper(model)
    tokens = torch.randint(0, 11, (6, 3))  # (steps, batch)
    full_state = lean_state = _random_state(model, 3)
    with torch.inference_mode():
        full_logits, _ = model(tokens, full_state)  # the fused kernel over the whole sequence
        for t in range(tokens.shape[0]):
            logits, lean_state = lean(tokens[t], lean_state)
            torch.testing.assert_close(logits, full_logits[t], atol=1e-5, rtol=1e-5)
            step_logits, full_state = model.step(tokens[t], full_state)
            torch.testing.assert_close(logits, step_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean_state, full_state, atol=1e-5, rtol=1e-5)


def test_lean_stepper_is_a_snapshot_of_the_weights() -> None:
    model = _model("lstm")
    lean = LeanStepper(model)
    token, state = torch.tensor([1, 2]), _random_state(model, 2)
    before, _ = lean(token, state)
    with torch.no_grad():
        model.rnn.weight_hh_l0.add_(1.0)
    after, _ = lean(token, state)
    torch.testing.assert_close(before, after)
    assert not torch.allclose(LeanStepper(model)(token, state)[0], before)


# -- train.precision=bf16 on a CPU ------------------------------------------------------------

AMX = ["AMX-BF16", "AVX512-BF16"]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: equal means untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _bf16_cpu(monkeypatch: pytest.MonkeyPatch, features: list[str]) -> None:
    """Pretend the CPU has (or lacks) native bf16; autocast itself runs on any CPU."""
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: features)


def _train(out: Path, corpus: Path | None, steps: int, *extra: str, resume: bool = False):
    items = ("train.device=cpu", f"train.max_steps={steps}", *extra)
    sets = [x for item in items for x in ("--set", item)]
    args = ["train", *([corpus] if corpus else []), "--out", out, *TINY, *sets]
    return cli(*args, *(["--resume"] if resume else []))


def test_bf16_on_a_cpu_without_native_bf16_is_refused_before_a_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bf16_cpu(monkeypatch, [])
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    assert _train(run, corpus, 10).exit_code == 0
    before = _tree(tmp_path)
    resumed = _train(run, None, 20, "train.precision=bf16", resume=True)
    fresh = _train(tmp_path / "new", corpus, 2, "train.precision=bf16")
    for result in (resumed, fresh):
        assert result.exit_code == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("charlm:")]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "AVX512-BF16 or AMX-BF16" in lines[0] and "lacks" in lines[0]
        assert "--set train.precision=fp32" in lines[0]
    assert _tree(tmp_path) == before  # nor was tmp_path/new made


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _starts(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "start"]


def test_bf16_trains_an_lstm_on_a_cpu_with_native_bf16_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bf16_cpu(monkeypatch, AMX)
    corpus, runs = write_corpus(tmp_path), {p: tmp_path / p for p in ("fp32", "bf16")}
    for name, run in runs.items():
        result = _train(run, corpus, 10, "model.cell=lstm", f"train.precision={name}")
        assert result.exit_code == 0, result.stderr
        assert ("precision: bf16 autocast on the CPU" in result.stderr) == (name == "bf16")
        assert [s["precision"] for s in _starts(run)] == [name]
        info = cli("info", run, "--checkpoint", "latest")
        assert f"precision: {name}" in info.stdout.splitlines()
    fp32, bf16 = (_weights(runs[p], 10) for p in ("fp32", "bf16"))
    assert fp32.keys() == bf16.keys() and all(w.dtype == torch.float32 for w in bf16.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)  # bf16 products were used
    losses = [load_checkpoint(runs[p], "latest").state.last_val_loss for p in ("fp32", "bf16")]
    assert abs(losses[0] - losses[1]) < 0.05, losses


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_bf16_run_stopped_and_resumed_equals_the_straight_run_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cell: str
) -> None:
    _bf16_cpu(monkeypatch, AMX)
    corpus, straight, halves = write_corpus(tmp_path), tmp_path / "straight", tmp_path / "halves"
    settings = (f"model.cell={cell}", "model.layers=2", "train.precision=bf16")
    assert _train(straight, corpus, 20, *settings).exit_code == 0
    assert _train(halves, corpus, 10, *settings).exit_code == 0
    assert _train(halves, None, 20, *settings, resume=True).exit_code == 0
    a, b = _weights(straight, 20), _weights(halves, 20)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(s["resumed"], s["precision"]) for s in _starts(halves)] == [
        (False, "bf16"),
        (True, "bf16"),
    ]


def test_a_run_resumed_in_bf16_records_each_session_s_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bf16_cpu(monkeypatch, AMX)
    corpus, run = write_corpus(tmp_path), tmp_path / "run"
    assert _train(run, corpus, 10, "model.cell=lstm").exit_code == 0
    assert "precision: fp32" in cli("info", run).stdout.splitlines()
    assert _train(run, None, 20, "train.precision=bf16", resume=True).exit_code == 0
    assert [s["precision"] for s in _starts(run)] == ["fp32", "bf16"]
    assert describe(run, "latest")["precision"] == "bf16"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "lstm-peephole"])
def test_cpu_bf16_forward_returns_fp32_close_to_fp32_but_not_equal(
    monkeypatch: pytest.MonkeyPatch, cell: str
) -> None:
    _bf16_cpu(monkeypatch, AMX)
    device, model = torch.device("cpu"), _model(cell)
    forward = precision.with_precision(model, "bf16", device)
    tokens = torch.randint(0, 11, (5, 3))
    logits, state = forward(tokens, model.initial_state(3, device))
    states = state if isinstance(state, tuple) else (state,)
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in states)
    reference, _ = model(tokens, model.initial_state(3, device))
    torch.testing.assert_close(logits, reference, atol=5e-2, rtol=5e-2)
    assert not torch.equal(logits, reference)  # the recurrent products ran in bf16


def test_the_bf16_header_hint_quotes_where_bf16_was_measured_slower() -> None:
    hint = precision.cpu_bf16_hint
    lstm, gru = ModelConfig(cell="lstm", hidden_size=512), ModelConfig(cell="gru", hidden_size=128)
    assert hint(lstm, AMX, onednn=True) is None  # measured faster: no hint
    assert hint(ModelConfig(cell="lstm", hidden_size=128), AMX, onednn=True) is None
    assert hint(ModelConfig(cell="gru", hidden_size=512), AMX, onednn=False) is None
    without_amx = hint(lstm, ["AVX512-BF16"], onednn=True)
    assert without_amx and "without AMX" in without_amx and "x fp32" in without_amx
    small = hint(gru, AMX, onednn=False)
    assert small and "128 < 256" in small and "train.precision=fp32" in small
    for unmeasured in (
        hint(lstm, ["BF16"], onednn=True),  # ARM
        hint(ModelConfig(cell="lstm-peephole", hidden_size=512), AMX, onednn=False),
        hint(lstm, AMX, onednn=False),  # sentence batching turns oneDNN off
    ):
        assert unmeasured and "unmeasured" in unmeasured


def test_native_bf16_detection_agrees_with_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with on this system")
    found = cpu_bf16_features()
    expected = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "BF16"}
    assert set(found) == {label for flag, label in expected.items() if flag in flags}
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # an older torch: the flags alone
    assert cpu_bf16_features() == found


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is a CUDA path")
def test_bf16_forward_returns_fp32_logits_and_state() -> None:
    from charlm.training.step import with_precision

    device = torch.device("cuda")
    model = _model("lstm").to(device)
    forward = with_precision(model, "bf16", device)
    tokens = torch.randint(0, 11, (5, 3), device=device)
    logits, (h, c) = forward(tokens, model.initial_state(3, device))
    assert logits.dtype == h.dtype == c.dtype == torch.float32
    reference, _ = model(tokens, model.initial_state(3, device))
    torch.testing.assert_close(logits, reference, atol=5e-2, rtol=5e-2)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from helpers import train_tiny, write_corpus
    from safetensors.torch import load_file

    compiled_calls = []
    real_compile = torch.compile

    def spy(fn, **kwargs):  # noqa: ANN001, ANN003, ANN202
        compiled_calls.append(kwargs)
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    corpus = write_corpus(tmp_path)
    for name, compile_ in (("eager", "false"), ("compiled", "true")):
        result = train_tiny(
            corpus, "--out", tmp_path / name, "--set", f"train.compile={compile_}", steps=12
        )
        assert result.exit_code == 0, result.stderr
    assert compiled_calls == [{"dynamic": True}]  # the compiled run only
    eager, compiled = (
        load_file(str(tmp_path / name / "checkpoints/step-00000012/model.safetensors"))
        for name in ("eager", "compiled")
    )
    moved = max(float((eager[k] - compiled[k]).abs().max()) for k in eager)
    assert moved < 1e-4  # the same run, up to the fused kernels' float rounding
