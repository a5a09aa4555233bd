"""The network: the lean step path equals the fused kernel, state shapes, initialisation options."""

from __future__ import annotations

import pytest
import torch

from charlm.config import ModelConfig
from charlm.model.network import RNNLanguageModel, count_parameters, detach_state
from tests.helpers import seeded_model


def make(cell: str, **kw: object) -> RNNLanguageModel:
    return seeded_model(20, cell=cell, layers=2, hidden_size=12, embedding_dim=6, **kw)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_step_matches_the_fused_forward(cell: str) -> None:
    model = make(cell).eval()
    tokens = torch.randint(0, 20, (9, 3))  # (seq_len, batch)
    full_logits, full_state = model(tokens, model.initial_state(3))
    state = model.initial_state(3)
    for t in range(tokens.shape[0]):
        logits, state = model.step(tokens[t], state)
        torch.testing.assert_close(logits, full_logits[t], atol=1e-5, rtol=1e-5)
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        full_state if isinstance(full_state, tuple) else (full_state,),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_leaky_rnn_follows_its_formula() -> None:
    leak = 0.7
    model = make("rnn", leak=leak).eval()
    plain = make("rnn").eval()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 20, (1, 2))
    _, h_leaky = model(tokens, model.initial_state(2) + 0.5)
    _, h_plain = plain(tokens, plain.initial_state(2) + 0.5)
    # One layer deep, the leaky unit is the plain update mixed with the old state.
    torch.testing.assert_close(h_leaky[0], leak * 0.5 + (1 - leak) * h_plain[0])
    logits, _ = model.step(tokens[0], model.initial_state(2) + 0.5)
    full, _ = model(tokens, model.initial_state(2) + 0.5)
    torch.testing.assert_close(logits, full[0], atol=1e-5, rtol=1e-5)


def test_state_shapes_and_detach() -> None:
    lstm = make("lstm")
    h, c = lstm.initial_state(5)
    assert h.shape == c.shape == (2, 5, 12)
    gru = make("gru")
    assert gru.initial_state(5).shape == (2, 5, 12)
    _, state = gru(torch.zeros(3, 5, dtype=torch.long), gru.initial_state(5))
    assert state.requires_grad and not detach_state(state).requires_grad


def test_forget_bias_and_identity_init() -> None:
    model = make("lstm", forget_bias=1.0)
    b_ih, b_hh = model.rnn.bias_ih_l0, model.rnn.bias_hh_l0
    assert torch.all(b_ih[12:24] + b_hh[12:24] == 1.0)
    irnn = make("rnn", recurrent_init="identity")
    assert torch.equal(irnn.rnn.weight_hh_l1, torch.eye(12))
    ortho = make("rnn", recurrent_init="orthogonal")
    w = ortho.rnn.weight_hh_l0
    torch.testing.assert_close(w @ w.t(), torch.eye(12), atol=1e-5, rtol=0)


def test_tied_weights_are_one_tensor() -> None:
    torch.manual_seed(0)
    config = ModelConfig(cell="gru", layers=1, hidden_size=8, embedding_dim=8, tie_weights=True)
    model = RNNLanguageModel(config, 30)
    assert model.decoder.weight is model.embedding.weight
    untied = RNNLanguageModel(ModelConfig(cell="gru", layers=1, hidden_size=8, embedding_dim=8), 30)
    assert count_parameters(untied) - count_parameters(model) == 30 * 8


def test_tying_different_sizes_goes_through_a_projection() -> None:
    torch.manual_seed(0)
    config = ModelConfig(cell="lstm", layers=2, hidden_size=12, embedding_dim=5, tie_weights=True)
    model = RNNLanguageModel(config, 30)
    assert model.decoder.weight is model.embedding.weight
    assert model.projection is not None and model.projection.weight.shape == (5, 12)
    logits, _ = model(torch.randint(0, 30, (7, 3)), model.initial_state(3))
    assert logits.shape == (7, 3, 30)
    logits.sum().backward()  # the tied matrix learns from both ends, the projection too
    assert model.projection.weight.grad is not None and model.embedding.weight.grad is not None
    equal = RNNLanguageModel(ModelConfig(hidden_size=8, embedding_dim=8, tie_weights=True), 30)
    assert equal.projection is None  # equal sizes need none: the models of before are unchanged


def test_unigram_bias_is_the_scaled_smoothed_log_frequency() -> None:
    import numpy as np

    model = RNNLanguageModel(ModelConfig(layers=1, hidden_size=8, embedding_dim=4), 5)
    ids = np.array([0, 0, 0, 1, 3, 3], dtype=np.uint16)  # ids 2 and 4 never occur
    unigram = torch.tensor([4.0, 2.0, 1.0, 3.0, 1.0]) / 11.0  # add-one smoothed
    torch.nn.init.zeros_(model.decoder.weight)  # then the model's first guess is the bias alone
    for scale in (1.0, 0.5):
        model.init_output_bias(ids, scale)
        assert abs(float(model.decoder.bias.detach().mean())) < 1e-6  # centred
        logits, _ = model(torch.tensor([[1]]), model.initial_state(1, "cpu"))
        expected = torch.log_softmax(scale * torch.log(unigram), -1)  # unigram ** scale
        torch.testing.assert_close(torch.log_softmax(logits[0, 0], -1), expected)
