"""model.nonlinearity=relu for the plain RNN (IRNN with identity init): equations, fused == step,
leaky units, refusal with other cells, and runs saved without the key reading as tanh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from charlm.model.network import LeanStepper, RNNLanguageModel
from charlm.rundir.checkpoint import load_checkpoint
from tests.helpers import cli, seeded_model, train_tiny, write_corpus


def _model(**kwargs) -> RNNLanguageModel:
    settings = {"cell": "rnn", "nonlinearity": "relu", "layers": 2, "hidden_size": 6}
    return seeded_model(7, **{**settings, "embedding_dim": 5, **kwargs})


def _by_hand(model: RNNLanguageModel, tokens: torch.Tensor, leak: float) -> list[torch.Tensor]:
    """The relu RNN written out from its equations, independent of the model's step code."""
    x, finals = model.embedding(tokens), []
    for layer in range(model.config.layers):
        w = model.layer_weights(layer)
        h, outs = torch.zeros(tokens.shape[1], 6), []
        for x_t in x:
            new = torch.relu(x_t @ w.w_ih.T + w.b_ih + h @ w.w_hh.T + w.b_hh)
            h = leak * h + (1 - leak) * new
            outs.append(h)
        x = torch.stack(outs)
        finals.append(h)
    return finals


@pytest.mark.parametrize("leak", [0.0, 0.6])
@pytest.mark.parametrize("init", ["default", "identity"])
def test_relu_rnn_follows_its_equations_on_every_path(leak: float, init: str) -> None:
    model = _model(leak=leak, recurrent_init=init).eval()
    tokens = torch.randint(0, 7, (9, 3))
    logits, state = model(tokens, model.initial_state(3))  # fused nn.RNN, or unrolled if leaky
    expected = _by_hand(model, tokens, leak)
    for layer in range(2):
        torch.testing.assert_close(state[layer], expected[layer], rtol=1e-5, atol=1e-6)
    # relu leaves units at exactly 0 (tanh never does): the activation really is relu.
    assert (state == 0).any() or init == "identity"
    step_state, lean_state = model.initial_state(3), model.initial_state(3)
    lean = LeanStepper(model)
    for t, token in enumerate(tokens):
        step_logits, step_state = model.step(token, step_state)
        lean_logits, lean_state = lean(token, lean_state)
        torch.testing.assert_close(step_logits, logits[t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lean_logits, logits[t], rtol=1e-5, atol=1e-5)


def test_relu_differs_from_tanh_and_the_fused_kernel_is_relu() -> None:
    relu, tanh = _model(), _model(nonlinearity="tanh")
    tanh.load_state_dict(relu.state_dict())  # same parameter names: one layout for both
    assert relu.rnn.nonlinearity == "relu" and tanh.rnn.nonlinearity == "tanh"
    tokens = torch.randint(0, 7, (5, 2))
    _, a = relu(tokens, relu.initial_state(2))
    _, b = tanh(tokens, tanh.initial_state(2))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm-peephole"])
def test_relu_with_a_gated_cell_is_refused_before_anything_is_written(
    tmp_path: Path, cell: str
) -> None:
    corpus = write_corpus(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli(
        "train", corpus, "--out", tmp_path / "run", "-q",
        "--set", f"model.cell={cell}", "--set", "model.nonlinearity=relu",
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("charlm:")]
    assert len(lines) == 1 and "model.nonlinearity=relu applies to model.cell=rnn" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_irnn_trains_and_resumes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    irnn = ("--set", "model.cell=rnn", "--set", "model.nonlinearity=relu")
    irnn += ("--set", "model.recurrent_init=identity")
    run = tmp_path / "run"
    assert train_tiny(corpus, "--out", run, *irnn, steps=10).exit_code == 0
    resumed = train_tiny("--out", run, "--resume", steps=20)
    assert resumed.exit_code == 0, resumed.stderr
    loaded = load_checkpoint(run, "latest")
    assert loaded.step == 20 and loaded.config.model.nonlinearity == "relu"
    assert loaded.build_model().rnn.nonlinearity == "relu"


def test_a_run_saved_before_the_setting_reads_as_tanh(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    assert train_tiny(corpus, "--out", run, "--set", "model.cell=rnn", steps=10).exit_code == 0
    text = tmp_path / "t.txt"
    text.write_text("abc abd xyz\n" * 20, encoding="utf-8")
    before = cli("evaluate", run, "--text", text)
    # Remove the key from every saved config, as an earlier charlm wrote them.
    for path in run.rglob("config.yaml"):
        saved = yaml.safe_load(path.read_text())
        assert saved["model"].pop("nonlinearity") == "tanh"
        path.write_text(yaml.safe_dump(saved, sort_keys=False))
    loaded = load_checkpoint(run)
    assert loaded.config.model.nonlinearity == "tanh"
    assert loaded.build_model().rnn.nonlinearity == "tanh"
    after = cli("evaluate", run, "--text", text)
    assert before.exit_code == after.exit_code == 0, after.stderr
    assert after.stdout == before.stdout
