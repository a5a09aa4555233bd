"""The fast paths (lean sampling step, training precision and sync options) against the plain ones."""

from __future__ import annotations

import pytest
import torch

from charlm.config import ModelConfig
from charlm.model.cells import CELLS, map_state
from charlm.model.network import LeanStepper, RNNLanguageModel
from tests.helpers import cli


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


def test_bf16_precision_is_refused_on_a_cpu_with_the_fix(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("abc abd xyz\n" * 300, encoding="utf-8")
    tiny = ["model.layers=1", "model.hidden_size=8", "model.embedding_dim=4", "train.max_steps=2"]
    args = ["train", str(text), "--out", str(tmp_path / "run"), "--quiet"]
    for item in [*tiny, "train.device=cpu", "train.precision=bf16"]:
        args += ["--set", item]
    result = cli(*args)
    assert result.exit_code == 2
    assert "train.precision=fp32" in result.output


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
