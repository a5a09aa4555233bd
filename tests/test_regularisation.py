"""AWD-LSTM's regularisers, variable BPTT, schedules, NT-ASGD averaging and early stopping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, seeded_model, write_corpus
from safetensors.torch import load_file

from charlm.config import build_config
from charlm.data.prepare import load_prepared
from charlm.errors import ConfigError
from charlm.inference.evaluate import evaluate_ids
from charlm.model import network as model_module
from charlm.model.network import RNNLanguageModel
from charlm.model.regularise import activation_penalty, embedding_dropout, locked_dropout
from charlm.rundir.checkpoint import load_checkpoint
from charlm.rundir.records import read_metrics
from charlm.training.ntasgd import WeightAverager, should_start_averaging
from charlm.training.run import train
from charlm.training.schedules import bptt_length, learning_rate

REGULARISED = (
    "model.embedding_dropout=0.1",
    "model.input_dropout=0.3",
    "model.hidden_dropout=0.3",
    "model.output_dropout=0.3",
    "model.weight_drop=0.5",
)


def overrides(*extra: str) -> list[str]:
    """TINY's settings as a list, on one thread (two collapse on a busy 2-core machine)."""
    pairs = (
        list(TINY) + ["--set", "train.threads=1"] + [x for item in extra for x in ("--set", item)]
    )
    return [pairs[i + 1] for i in range(0, len(pairs), 2)]


def tiny_model(cell: str = "lstm", layers: int = 2, *extra: str) -> RNNLanguageModel:
    config = build_config(
        overrides=[
            f"model.cell={cell}",
            f"model.layers={layers}",
            "model.hidden_size=16",
            "model.embedding_dim=8",
            *extra,
        ]
    )
    return seeded_model(11, **dataclasses.asdict(config.model))


def test_locked_dropout_uses_one_mask_for_every_time_step() -> None:
    x = torch.ones(20, 4, 32)
    out = locked_dropout(x, 0.5, training=True)
    assert torch.equal(out, out[:1].expand_as(out))  # the same at every step
    kept = out[0] != 0
    assert 0 < kept.sum() < kept.numel()  # some units dropped, some kept
    assert torch.allclose(out[0][kept], torch.full_like(out[0][kept], 2.0))  # kept ones scaled
    assert not torch.equal(out[0, 0], out[0, 1])  # each sequence has its own mask
    assert locked_dropout(x, 0.5, training=False) is x


def test_embedding_dropout_drops_whole_words() -> None:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(6, 5)
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5] * 5]).T.repeat(1, 3)  # every id 15 times
    out = embedding_dropout(embedding, tokens, 0.5, training=True)  # (30, 3, 5)
    for token in range(6):
        rows = out[tokens == token]  # every occurrence of one word
        assert torch.equal(rows, rows[:1].expand_as(rows))
        dropped = bool((rows[0] == 0).all())
        expected = torch.zeros(5) if dropped else embedding.weight[token] * 2
        torch.testing.assert_close(rows[0], expected)
    torch.manual_seed(0)
    assert torch.equal(embedding_dropout(embedding, tokens, 0.5, False), embedding(tokens))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_regularised_model_shapes_and_eval_equals_plain_model(cell: str) -> None:
    model = tiny_model(cell, 2, *REGULARISED)
    plain = tiny_model(cell, 2)
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 11, (7, 3))
    state = model.initial_state(3)
    logits, new_state, output, dropped = model(tokens, state, return_hidden=True)
    assert logits.shape == (7, 3, 11) and output.shape == dropped.shape == (7, 3, 16)
    shapes = [s.shape for s in (new_state if isinstance(new_state, tuple) else (new_state,))]
    assert all(shape == (2, 3, 16) for shape in shapes)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(tokens, state)[0], plain(tokens, state)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_by_layer_path_matches_the_fused_stack(
    cell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the between-layer masks made all-ones, the per-layer path is the fused stack."""
    seen: list[tuple[int, ...]] = []

    def no_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        if p == 0.3:
            seen.append(tuple(x.shape))
        return x

    monkeypatch.setattr(model_module, "locked_dropout", no_drop)
    model = tiny_model(cell, 3, "model.hidden_dropout=0.3")
    tokens = torch.randint(0, 11, (6, 2))
    state = model.initial_state(2)
    state = tuple(s + 0.1 for s in state) if isinstance(state, tuple) else state + 0.1
    regularised, regularised_state = model(tokens, state)
    model.eval()
    fused, fused_state = model(tokens, state)
    torch.testing.assert_close(regularised, fused)
    torch.testing.assert_close(regularised_state, fused_state)
    assert seen == [(6, 2, 16), (6, 2, 16)]  # between layers 1-2 and 2-3, on (seq, batch, hidden)


def test_weight_drop_masks_only_recurrent_weights_and_nothing_at_eval() -> None:
    model = tiny_model("lstm", 1, "model.weight_drop=0.9")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 11, (12, 4))
    logits, _ = model(tokens, model.initial_state(4))
    logits.pow(2).sum().backward()
    zero_hh = (model.rnn.weight_hh_l0.grad == 0).float().mean().item()
    zero_ih = (model.rnn.weight_ih_l0.grad == 0).float().mean().item()
    assert zero_hh > 0.8  # dropped recurrent connections get no gradient
    assert zero_ih < 0.1  # input weights are never dropped
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # raw untouched
    model.eval()
    plain = tiny_model("lstm", 1)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    state = model.initial_state(4)
    assert torch.equal(model(tokens, state)[0], plain(tokens, state)[0])


def test_activation_penalties() -> None:
    output = torch.arange(12.0).reshape(3, 2, 2)
    dropped = output * 2
    ar = activation_penalty(output, 2.0, 0.0, dropped)
    torch.testing.assert_close(ar, 2.0 * dropped.pow(2).mean())
    tar = activation_penalty(output, 0.0, 1.0, dropped)
    torch.testing.assert_close(tar, torch.tensor(16.0))  # consecutive steps differ by 4
    constant = torch.ones(5, 2, 3)
    assert activation_penalty(constant, 0.0, 1.0, constant).item() == 0.0


def test_variable_bptt_lengths_are_reproducible_and_awd_shaped() -> None:
    lengths = np.array([bptt_length(70, 1, step) for step in range(2000)])
    assert [bptt_length(70, 1, s) for s in range(50)] == list(lengths[:50])
    assert lengths.min() >= 5
    half = lengths < 52  # the ~5% drawn around seq_len / 2
    assert 0.02 < half.mean() < 0.09
    assert abs(lengths[~half].mean() - 70) < 1.0
    assert bptt_length(70, 2, 0) != bptt_length(70, 1, 0) or bptt_length(70, 2, 1) != lengths[1]


def test_decay_schedule_is_char_rnns() -> None:
    optim = build_config(
        overrides=["optim.schedule=decay", "optim.decay_rate=0.5", "optim.decay_after_epochs=3"]
    ).optim
    rates = [learning_rate(optim, 0, 100, epoch=e) / optim.lr for e in range(6)]
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.25, 0.125]  # first decay at the end of epoch 3
    plateau = build_config(overrides=["optim.schedule=plateau"]).optim
    assert learning_rate(plateau, 5, 100, plateau_scale=0.25) == plateau.lr * 0.25


def test_nt_asgd_trigger() -> None:
    assert not should_start_averaging([3.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6], 5)
    assert not should_start_averaging([3.0, 2.0, 2.5], 5)  # too short a history
    assert should_start_averaging([3.0, 2.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.05], 5)
    # Worse than the last few but better than everything older: no trigger.
    assert not should_start_averaging([3.0, 2.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 0.99], 5)


def test_averaging_is_applied_for_evaluation_and_undone_for_training() -> None:
    model = tiny_model("gru", 1)
    averager = WeightAverager(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tokens = torch.randint(0, 11, (5, 2))
    snapshots = []
    averager.start()
    snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for _ in range(4):
        model(tokens, model.initial_state(2))[0].pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        averager.update()
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with averager.applied():
        for name, p in model.named_parameters():
            mean = torch.stack([s[name] for s in snapshots]).mean(0)
            torch.testing.assert_close(p, mean)
            assert not torch.equal(p, raw[name])
    assert all(torch.equal(p, raw[n]) for n, p in model.named_parameters())


def asgd_settings(*extra: str) -> list[str]:
    return overrides(
        "optim.name=asgd",
        "optim.lr=30",
        "optim.clip_norm=0.25",
        "optim.nonmono=1",
        "train.eval_every=2",
        "train.checkpoint_every=4",
        "train.eval_batches=2",
        "model.init=charlm",  # a trajectory whose averaging starts before step 12
        *extra,
    )


def test_nt_asgd_run_checkpoints_the_average_and_resumes_mid_averaging(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(straight, text=corpus, overrides=asgd_settings("train.max_steps=20"), show_progress=False)
    train(halves, text=corpus, overrides=asgd_settings("train.max_steps=12"), show_progress=False)
    middle = json.loads((halves / "checkpoints/step-00000012/state.json").read_text())
    assert middle["averaged_steps"] > 1  # the run was cut mid-averaging
    train(halves, overrides=asgd_settings("train.max_steps=20"), resume=True, show_progress=False)
    for name in ("model.safetensors", "raw_model.safetensors"):
        a, b = (load_file(str(r / "checkpoints/step-00000020" / name)) for r in (straight, halves))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder = straight / "checkpoints/step-00000020"
    average, raw = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(folder / "raw_model.safetensors")),
    )
    assert any(not torch.equal(average[k], raw[k]) for k in raw)
    # The logged validation loss is the averaged model's, as evaluate/sample load it.
    loaded = load_checkpoint(straight, "latest")
    data = load_prepared(Path(loaded.info["data_dir"]))
    nll, count = evaluate_ids(
        loaded.build_model(),
        data.val_ids,
        batching="stream",
        batch_size=4,
        seq_len=16,
        device=torch.device("cpu"),
        max_batches=2,
    )
    logged = [r for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert logged["step"] == 20
    assert nll / count == pytest.approx(logged["val_loss"], rel=1e-6)


def test_variable_bptt_and_ar_tar_run_resumes_exactly(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    common = ("train.variable_bptt=true", "train.ar_alpha=2", "train.tar_beta=1", *REGULARISED)
    common = (*common, "model.cell=lstm", "model.layers=2", "train.seq_len=12")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(
        straight,
        text=corpus,
        overrides=overrides(*common, "train.max_steps=20"),
        show_progress=False,
    )
    train(
        halves, text=corpus, overrides=overrides(*common, "train.max_steps=10"), show_progress=False
    )
    train(
        halves, overrides=overrides(*common, "train.max_steps=20"), resume=True, show_progress=False
    )
    a, b = (
        load_file(str(r / "checkpoints/step-00000020/model.safetensors"))
        for r in (straight, halves)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = {r["lr"] for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "train"}
    assert len(lrs) > 1  # the rate follows the drawn window length


def test_plateau_schedule_cuts_the_rate_and_resumes_exactly(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    common = asgd_settings("optim.schedule=plateau", "optim.decay_rate=0.5")
    common = [c for c in common if not c.startswith("optim.nonmono")]  # SGD, no averaging
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(straight, text=corpus, overrides=[*common, "train.max_steps=12"], show_progress=False)
    train(halves, text=corpus, overrides=[*common, "train.max_steps=6"], show_progress=False)
    train(halves, overrides=[*common, "train.max_steps=12"], resume=True, show_progress=False)
    folders = [r / "checkpoints/step-00000012" for r in (straight, halves)]
    states = [json.loads((f / "state.json").read_text()) for f in folders]
    assert states[0]["plateau"] == states[1]["plateau"]
    assert states[0]["plateau"]["scale"] < 1.0  # at least one cut happened
    a, b = (load_file(str(f / "model.safetensors")) for f in folders)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patience_stops_a_run_that_no_longer_improves(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    # An SGD rate too small to move any weight: validation never improves after the first.
    settings = overrides(
        "optim.name=asgd", "optim.lr=1e-30", "train.patience=2", "train.max_steps=100"
    )
    settings += ["train.eval_every=4", "train.eval_batches=2"]
    result = train(tmp_path / "run", text=corpus, overrides=settings, show_progress=False)
    assert result.steps == 12  # evaluations at 4 (best), 8 and 12 (no better): stop
    assert (tmp_path / "run/checkpoints/step-00000012").is_dir()


def test_config_refuses_bad_regularisation_settings() -> None:
    with pytest.raises(ConfigError) as error:
        build_config(
            overrides=[
                "model.weight_drop=1.0",
                "model.cell=rnn",
                "model.leak=0.5",
                "model.hidden_dropout=0.2",
                "data.level=word",
                "data.batching=sentence",
                "train.variable_bptt=true",
                "optim.decay_rate=0",
            ]
        )
    message = str(error.value)
    for key in (
        "model.weight_drop must be in",
        "need the fused kernels",
        "train.variable_bptt",
        "optim.decay_rate",
    ):
        assert key in message


def test_activation_penalty_ignores_padding() -> None:
    from charlm.model.regularise import activation_penalty

    torch.manual_seed(0)
    real = torch.randn(4, 1, 3)
    padded = torch.cat([real, torch.full((3, 1, 3), 50.0)])  # huge values where padding sits
    mask = torch.tensor([True] * 4 + [False] * 3).unsqueeze(1)
    expected = activation_penalty(real, 2.0, 1.0, real)
    torch.testing.assert_close(activation_penalty(padded, 2.0, 1.0, padded, mask), expected)
    assert activation_penalty(padded, 2.0, 1.0, padded) > 10 * expected  # unmasked, it counts


def test_tied_run_with_a_projection_trains_resumes_and_samples(tmp_path: Path) -> None:
    from charlm.inference.sample import SampleOptions, Sampler

    corpus = write_corpus(tmp_path)
    tied = ("model.tie_weights=true", "model.cell=lstm", "model.layers=2")  # hidden 16, embedding 8
    run = tmp_path / "run"
    train(run, text=corpus, overrides=overrides(*tied, "train.max_steps=10"), show_progress=False)
    result = train(
        run, overrides=overrides(*tied, "train.max_steps=20"), resume=True, show_progress=False
    )
    assert result.steps == 20
    loaded = load_checkpoint(run, "latest")
    model = loaded.build_model()
    assert model.projection is not None and model.decoder.weight is model.embedding.weight
    (text,) = Sampler(run, device="cpu").generate(
        SampleOptions(length=40, seed=1, prime="abc"), lambda i, s: None
    )
    assert text.startswith("abc") and len(text) >= 40


@pytest.mark.slow
def test_variable_bptt_runs_exactly_the_epochs_asked_for(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    run = tmp_path / "run"
    settings = ("train.variable_bptt=true", "train.seq_len=12", "train.max_steps=0")
    train(run, text=corpus, overrides=overrides(*settings, "train.epochs=2"), show_progress=False)
    latest = load_checkpoint(run, "latest").info
    # Two whole epochs and not a window more. Counting seq_len-long windows missed the mark:
    # the drawn windows average ~0.975 x seq_len, and an epoch's last window is cut short.
    assert latest["cursor"] == {"epoch": 2, "position": 0}, latest["cursor"]
