"""Cell options: LSTM forget bias, identity/orthogonal recurrence, leaky units, clip by value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from charlm.config import ModelConfig
from charlm.model.network import RNNLanguageModel
from charlm.rundir.checkpoint import load_checkpoint
from tests.helpers import seeded_model


def _model(**kwargs) -> RNNLanguageModel:
    return seeded_model(7, **{"layers": 2, "hidden_size": 6, "embedding_dim": 5, **kwargs})


@pytest.mark.parametrize("bias", [1.0, 2.5, 0.0])
def test_forget_bias_sits_in_the_forget_slice_once(bias):
    model = _model(cell="lstm", forget_bias=bias)
    h = 6
    for layer in range(2):
        w = model.layer_weights(layer)
        total = (w.b_ih + w.b_hh).detach()  # PyTorch adds both biases: i, f, g, o blocks
        torch.testing.assert_close(total[h : 2 * h], torch.full((h,), bias))
        for block in (0, 2, 3):  # the other gates keep PyTorch's random initialisation
            assert not torch.allclose(total[block * h : (block + 1) * h], torch.full((h,), bias))


def test_forget_gate_starts_at_sigmoid_of_the_bias():
    model = _model(cell="lstm", forget_bias=2.0, layers=1)
    w = model.layer_weights(0)
    with torch.no_grad():
        w.w_ih.zero_()
        w.w_hh.zero_()
    x, h, c = torch.zeros(1, 5), torch.zeros(1, 6), torch.ones(1, 6)
    from charlm.model.network import cell_step

    _, c_new = cell_step("lstm", w, x, (h, c))
    i, g = torch.sigmoid(w.b_ih[:6] + w.b_hh[:6]), torch.tanh(w.b_ih[12:18] + w.b_hh[12:18])
    expected = torch.sigmoid(torch.tensor(2.0)) * c + i * g
    torch.testing.assert_close(c_new, expected.detach())


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_identity_init_is_the_identity_with_zero_biases(cell):
    model = _model(cell=cell, recurrent_init="identity")
    for layer in range(2):
        w = model.layer_weights(layer)
        for block in w.w_hh.detach().split(6, dim=0):
            torch.testing.assert_close(block, torch.eye(6))
        assert not w.b_ih.any() and not w.b_hh.any()


def test_recurrent_gain_scales_the_identity_and_the_orthogonal_start():
    irnn = _model(cell="rnn", recurrent_init="identity", recurrent_gain=0.5)
    torch.testing.assert_close(irnn.layer_weights(0).w_hh.detach(), 0.5 * torch.eye(6))
    ortho = _model(cell="gru", recurrent_init="orthogonal", recurrent_gain=0.9)
    for block in ortho.layer_weights(1).w_hh.detach().split(6, dim=0):
        torch.testing.assert_close(block @ block.T, 0.81 * torch.eye(6), atol=1e-5, rtol=0)
    problems = ModelConfig(recurrent_gain=0.5).validate()  # no identity/orthogonal start to scale
    assert any("recurrent_gain" in p for p in problems)
    assert any("recurrent_gain" in p for p in ModelConfig(recurrent_gain=0.0).validate())


def test_orthogonal_init_gives_orthogonal_blocks():
    model = _model(cell="gru", recurrent_init="orthogonal")
    for block in model.layer_weights(1).w_hh.detach().split(6, dim=0):
        torch.testing.assert_close(block @ block.T, torch.eye(6), atol=1e-5, rtol=0)


def test_leaky_units_follow_the_formula_and_change_the_dynamics():
    leak = 0.7
    model = _model(cell="rnn", leak=leak)
    tokens = torch.randint(0, 7, (9, 3))
    _, state = model(tokens, model.initial_state(3))
    # The formula written out independently of the model's own step code.
    x = model.embedding(tokens)
    for layer in range(2):
        w = model.layer_weights(layer)
        h, outs = torch.zeros(3, 6), []
        for x_t in x:
            h = leak * h + (1 - leak) * torch.tanh(x_t @ w.w_ih.T + w.b_ih + h @ w.w_hh.T + w.b_hh)
            outs.append(h)
        x = torch.stack(outs)
        torch.testing.assert_close(state[layer], h, rtol=1e-5, atol=1e-6)
    plain = RNNLanguageModel(ModelConfig(**{**model.config.__dict__, "leak": 0.0}), 7)
    plain.load_state_dict(model.state_dict())
    _, plain_state = plain(tokens, plain.initial_state(3))
    assert (plain_state - state).abs().max() > 1e-3


def test_clip_by_value_bounds_every_update(tmp_path: Path):
    from charlm.training.run import train

    text = tmp_path / "t.txt"
    text.write_text("abcabd abd cab\n" * 50, encoding="utf-8")
    limit, lr = 1e-3, 1.0
    overrides = ["model.cell=gru", "model.layers=1", "model.hidden_size=8"]
    overrides += ["optim.name=asgd", f"optim.lr={lr}", "optim.clip_norm=0"]
    overrides += [f"optim.clip_value={limit}", "train.max_steps=1", "train.seed=3"]
    train(tmp_path / "run", text=text, overrides=overrides, show_progress=False)
    loaded = load_checkpoint(tmp_path / "run", "latest")
    trained = loaded.build_model()
    torch.manual_seed(3)  # the training loop seeds this way before building the model
    initial = RNNLanguageModel(loaded.config.model, int(loaded.meta["vocab_size"]))
    # Plain SGD: each weight moves by lr * its gradient, which was clipped to [-limit, limit].
    moves = [
        (a - b).abs().max().item()
        for a, b in zip(trained.parameters(), initial.parameters(), strict=True)
    ]
    # A clipped weight w moves by limit up to the rounding of w -/+ limit in float32: half a
    # float32 step of the result, up to 1.2e-4 of the limit for an embedding weight near 2
    # (the N(0, 1) initial weights reach ~3). Those weights' last bits come from the CPU's
    # vectorised normal sampler, which differs between CPU families, so the slack is that
    # rounding bound (eps * the largest weight, ~3e-4 of the limit), not a fixed 1e-4.
    # An unclipped or wrongly clipped step is off by far more.
    largest = max(float(p.detach().abs().max()) for p in initial.parameters()) + lr * limit
    slack = torch.finfo(torch.float32).eps * largest
    assert max(moves) <= lr * limit + slack
    assert max(moves) >= lr * limit - slack  # some gradient was large enough to be clipped
