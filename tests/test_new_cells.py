"""The two cells added through cells.py alone: lstm-peephole and gru-tutorial.

Each is checked against its equations written out here, step by step (independently of
cells.py), in the unrolled forward, the model's step, the lean sampling step and the gradients;
then trained, resumed, sampled and measured through the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlm.config import ModelConfig
from charlm.model.network import LeanStepper, RNNLanguageModel
from tests.helpers import cli, train_tiny, write_corpus

NEW = ("lstm-peephole", "gru-tutorial")
H, E, V = 6, 5, 9


def _model(cell: str, layers: int = 2) -> RNNLanguageModel:
    torch.manual_seed(0)
    model = RNNLanguageModel(
        ModelConfig(cell=cell, layers=layers, hidden_size=H, embedding_dim=E), V
    )
    with torch.no_grad():  # non-zero biases and peepholes, so a misplaced term cannot hide
        for name, p in model.rnn.named_parameters():
            if "bias" in name or "peep" in name:
                p.uniform_(-0.5, 0.5)
    return model


def _peephole(p: dict, layer: int, x, state):
    h, c = state
    g = x @ p[f"weight_ih_l{layer}"].T + p[f"bias_ih_l{layer}"]
    g = g + h @ p[f"weight_hh_l{layer}"].T + p[f"bias_hh_l{layer}"]
    wi, wf, wo = p[f"weight_peep_l{layer}"].reshape(3, H)
    i = torch.sigmoid(g[:, :H] + wi * c)
    f = torch.sigmoid(g[:, H : 2 * H] + wf * c)
    c = f * c + i * torch.tanh(g[:, 2 * H : 3 * H])
    o = torch.sigmoid(g[:, 3 * H :] + wo * c)
    return o * torch.tanh(c), (o * torch.tanh(c), c)


def _tutorial(p: dict, layer: int, x, s):
    def hard_sigmoid(v):  # Theano's: clip(0.2 v + 0.5, 0, 1)
        return torch.clamp(0.2 * v + 0.5, 0.0, 1.0)

    U, W, b = p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"], p[f"bias_ih_l{layer}"]
    U_z, U_r, U_c = U.split(H)
    W_z, W_r, W_c = W.split(H)
    b_z, b_r, b_c = b.split(H)
    z = hard_sigmoid(x @ U_z.T + s @ W_z.T + b_z)
    r = hard_sigmoid(x @ U_r.T + s @ W_r.T + b_r)
    c = torch.tanh(x @ U_c.T + (s * r) @ W_c.T + b_c)
    s = (1 - z) * c + z * s
    return s, s


REFERENCE = {"lstm-peephole": _peephole, "gru-tutorial": _tutorial}


def _reference_forward(model: RNNLanguageModel, tokens, state):
    """Logits (seq, batch, vocab) and the final state, one step at a time from the formulas."""
    p = dict(model.rnn.named_parameters())
    step = REFERENCE[model.config.cell]
    paired = isinstance(state, tuple)
    layer_states = [(state[0][k], state[1][k]) if paired else state[k] for k in range(2)]
    logits = []
    for token in tokens:
        x = model.embedding(token)
        for k in range(2):
            x, layer_states[k] = step(p, k, x, layer_states[k])
        logits.append(model.decoder(x))
    if paired:
        final = tuple(torch.stack([s[i] for s in layer_states]) for i in range(2))
    else:
        final = torch.stack(layer_states)
    return torch.stack(logits), final


def _random_state(cell: str, batch: int):
    shape = (2, batch, H)
    return (
        (torch.randn(shape), torch.randn(shape)) if cell == "lstm-peephole" else torch.randn(shape)
    )


@pytest.mark.parametrize("cell", NEW)
def test_forward_step_and_lean_step_follow_the_equations(cell: str) -> None:
    model = _model(cell).eval()
    tokens = torch.randint(0, V, (7, 3))
    state = _random_state(cell, 3)
    expected, expected_state = _reference_forward(model, tokens, state)
    with torch.no_grad():
        logits, final = model(tokens, state)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final, expected_state, atol=1e-5, rtol=1e-5)
        lean, step_state, lean_state = LeanStepper(model), state, state
        for t, token in enumerate(tokens):
            step_logits, step_state = model.step(token, step_state)
            lean_logits, lean_state = lean(token, lean_state)
            torch.testing.assert_close(step_logits, expected[t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lean_logits, expected[t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean_state, expected_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", NEW)
def test_gradients_match_the_equations(cell: str) -> None:
    model = _model(cell)
    model.eval()
    tokens = torch.randint(0, V, (6, 2))
    state = _random_state(cell, 2)
    logits, _ = model(tokens, state)
    ours = torch.autograd.grad(logits.square().sum(), list(model.rnn.parameters()))
    expected, _ = _reference_forward(model, tokens, state)
    theirs = torch.autograd.grad(expected.square().sum(), list(model.rnn.parameters()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert a.abs().sum() > 0  # every parameter, the peepholes included, is trained


def test_the_tutorial_gru_has_one_bias_per_gate_and_hard_gates() -> None:
    model = _model("gru-tutorial", layers=1)
    names = {name for name, _ in model.rnn.named_parameters()}
    assert names == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0"}
    fresh = RNNLanguageModel(ModelConfig(cell="gru-tutorial", layers=1, hidden_size=H), V)
    assert not fresh.rnn.bias_ih_l0.any()  # the tutorial starts its biases at zero
    # A saturated gate is exactly 0 or 1 (a logistic sigmoid never is): z = 1 keeps the state.
    with torch.no_grad():
        model.rnn.bias_ih_l0[:H] = 100.0
    s = torch.randn(1, 4, H)
    _, new = model(torch.randint(0, V, (1, 4)), s)
    assert torch.equal(new, s)


def test_peepholes_start_at_zero_as_a_plain_lstm() -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(
        ModelConfig(cell="lstm-peephole", layers=1, hidden_size=H, forget_bias=1.0), V
    )
    assert not model.rnn.weight_peep_l0.any()
    w = model.layer_weights(0)
    assert float((w.b_ih + w.b_hh).detach()[H : 2 * H].min()) == 1.0  # the forget bias, as for lstm


@pytest.mark.parametrize("cell", NEW)
def test_train_resume_sample_and_gradients(tmp_path: Path, cell: str) -> None:
    corpus = write_corpus(tmp_path)
    common = ("--set", f"model.cell={cell}", "--set", "model.dropout=0.2")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert train_tiny(corpus, "--out", straight, *common, steps=20).exit_code == 0
    assert train_tiny(corpus, "--out", halves, *common, steps=10).exit_code == 0
    result = train_tiny("--out", halves, "--resume", *common, steps=20)
    assert result.exit_code == 0, result.stderr
    a, b = (
        load_file(str(run / "checkpoints/step-00000020/model.safetensors"))
        for run in (straight, halves)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    samples = [cli("sample", run, "--length", "30", "--seed", "3") for run in (straight, halves)]
    assert samples[0].exit_code == 0 and samples[0].stdout == samples[1].stdout
    assert len(samples[0].stdout) >= 30
    profile = cli("gradients", straight, "--text", corpus, "--max-lag", "4", "--json")
    assert profile.exit_code == 0, profile.stderr
    record = json.loads(profile.stdout.strip().splitlines()[0])
    assert record["cell"] == cell and len(record["grad_norm"][0]) == 4
    # The export checks its own step against charlm's (1e-5) before it writes the file.
    out = tmp_path / "step.pt"
    exported = cli("export", straight, "--format", "torchscript", "--out", out)
    assert exported.exit_code == 0, exported.stderr
    assert out.is_file()
