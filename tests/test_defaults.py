"""The defaults users meet first: the optimiser table with plain SGD, the initialisation schemes,
and the CPU thread choice."""

from __future__ import annotations

import math
import os

import pytest
import torch
from helpers import TINY, cli, seeded_model, train_tiny, write_corpus

from charlm.config import ModelConfig, OptimConfig, build_config, config_to_dict
from charlm.errors import ConfigError
from charlm.model.network import RNNLanguageModel
from charlm.training.optimizers import build_optimizer


def test_sgd_with_momentum_and_nesterov_builds_torch_sgd() -> None:
    model = torch.nn.Linear(3, 2)
    config = build_config(
        overrides=["optim.name=sgd", "optim.lr=20", "optim.momentum=0.9", "optim.nesterov=true"]
    )
    optimizer = build_optimizer(model, config.optim)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (20.0, 0.9, True)


def test_plain_sgd_step_is_lr_times_gradient() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    before = model.weight.detach().clone()
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.5))
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert torch.allclose(model.weight, before - 0.5 * torch.ones(1, 2))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.momentum=0.9"], "optim.momentum applies to optim.name=sgd"),
        (["optim.name=sgd", "optim.nesterov=true"], "optim.nesterov needs"),
        (["optim.name=sgd", "optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
        (["optim.name=lion"], "optim.name: 'lion' is not one of"),
    ],
)
def test_bad_optimiser_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        build_config(overrides=overrides)


def test_build_optimizer_refuses_a_name_outside_its_table() -> None:
    bogus = OptimConfig.__new__(OptimConfig)
    object.__setattr__(bogus, "name", "lion")
    with pytest.raises(Exception, match="unknown optimiser"):
        build_optimizer(torch.nn.Linear(1, 1), bogus)


def test_sgd_trains_through_the_cli(tmp_path) -> None:
    corpus = write_corpus(tmp_path)
    result = train_tiny(
        corpus, "--out", tmp_path / "run", "--set", "optim.name=sgd", "--set", "optim.lr=1",
        "--set", "optim.momentum=0.9", steps=20,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"val_loss"' in line for line in lines)


def _model(init: str, **kwargs) -> RNNLanguageModel:
    return seeded_model(500, init=init, **{"hidden_size": 64, "embedding_dim": 32, **kwargs})


def test_charlm_init_is_the_old_scheme() -> None:
    model = _model("charlm")
    assert model.embedding.weight.abs().max() <= 0.1
    assert torch.count_nonzero(model.decoder.bias) == 0
    assert model.decoder.weight.abs().max() <= 1 / math.sqrt(64)


def test_pytorch_init_keeps_the_modules_own_defaults() -> None:
    model = _model("pytorch")
    assert 0.9 < model.embedding.weight.std().item() < 1.1  # nn.Embedding: N(0, 1)
    assert torch.count_nonzero(model.decoder.bias) > 0  # nn.Linear: U(+-1/sqrt(fan_in))
    assert model.decoder.bias.abs().max() <= 1 / math.sqrt(64)


def test_lstm_forget_bias_applies_under_every_init() -> None:
    for init in ("pytorch", "charlm"):
        model = _model(init, cell="lstm", forget_bias=1.0)
        total = model.rnn.bias_ih_l0[64:128] + model.rnn.bias_hh_l0[64:128]
        assert torch.allclose(total, torch.ones(64)), init


def test_a_saved_config_without_init_means_the_scheme_it_was_trained_with() -> None:
    saved = config_to_dict(build_config())
    del saved["model"]["init"]
    assert build_config(base=saved).model.init == "charlm"
    assert build_config().model.init == ModelConfig().init  # a new run gets today's default


class FakeMeter:
    """Other programs' load, in cores, as the test dictates."""

    def __init__(self, *loads: float | None) -> None:
        self.loads = list(loads)

    def others(self) -> float | None:
        return self.loads.pop(0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _governor(
    requested: int = 0, macs: int = 1 << 24, loads=(0.0,), environ=None, adapt=False, recorded=None
):
    from charlm.system.threads import ThreadGovernor

    applied: list[int] = []
    clock = FakeClock()
    governor = ThreadGovernor(
        requested, macs, applied.append, 2, meter=FakeMeter(*loads), clock=clock,
        environ={} if environ is None else environ, adapt=adapt, recorded=recorded,
    )  # fmt: skip
    clock.now += 1.0  # the first window has passed: start() does not wait
    return governor, applied, clock


def test_by_default_the_thread_count_is_fixed_for_the_run_whatever_the_load() -> None:
    """A thread change alters the last bits: by default the load never changes the count, and
    a busy machine gets one line saying what would help (once)."""
    governor, applied, clock = _governor(loads=(1.5, 1.5))
    assert governor.start() is None and applied == [2]
    for _ in range(3):
        clock.now += 2.0
        assert governor.check() is None
    assert applied == [2]
    clock.now += 2.0
    hint = governor.busy_hint()
    assert hint is not None and "1.5 cores" in hint and "train.threads=1" in hint
    clock.now += 2.0
    assert governor.busy_hint() is None  # said once; FakeMeter would fail if asked again
    assert governor.describe() == "2 threads (auto: every core, fixed for the run)"


def test_an_idle_machine_gets_no_busy_hint() -> None:
    governor, applied, clock = _governor(loads=(0.1,))
    governor.start()
    clock.now += 2.0
    assert governor.busy_hint() is None and applied == [2]


def test_a_resumed_run_keeps_its_recorded_count_unless_the_user_sets_one() -> None:
    governor, applied, _ = _governor(recorded=1, loads=())
    governor.start()
    assert applied == [1] and "as the run recorded" in governor.describe()
    governor, applied, _ = _governor(requested=2, recorded=1, loads=())
    governor.start()
    assert applied == [2] and "as set" in governor.describe()


def test_adapt_threads_follows_the_load_on_an_idle_then_busy_machine() -> None:
    governor, applied, clock = _governor(loads=(0.1, 1.0, 1.0, 0.05), adapt=True)
    assert governor.start() is None and applied == [2]
    assert governor.check() is None  # less than MIN_WINDOW_S since the last judgement
    clock.now += 2.0
    change = governor.check()
    assert change is not None and change.threads == 1 and "1.0 cores" in change.reason
    clock.now += 2.0
    assert governor.check() is None  # still busy: stays on one
    clock.now += 2.0
    assert governor.check().threads == 2 and applied == [2, 1, 2]
    assert "2 threads" in governor.describe()


def test_with_adapt_threads_a_busy_start_trains_on_one_thread() -> None:
    governor, applied, _ = _governor(loads=(1.2,), adapt=True)
    change = governor.start()
    assert change is not None and change.threads == 1 and applied == [2, 1]
    assert governor.describe().startswith("1 thread (adapt_threads")


def test_small_steps_train_on_one_thread_without_watching_the_load() -> None:
    governor, applied, clock = _governor(macs=4096, loads=())
    assert governor.start() is None and applied == [1]
    clock.now += 10
    assert governor.check() is None  # FakeMeter would fail if it were asked
    assert "too small to split" in governor.describe()


@pytest.mark.parametrize(
    ("requested", "environ", "expected"), [(3, {}, 3), (0, {"OMP_NUM_THREADS": "1"}, 2)]
)
def test_a_users_thread_count_is_kept_whatever_the_load(requested, environ, expected) -> None:
    governor, applied, clock = _governor(requested, loads=(), environ=environ)
    governor.start()
    clock.now += 10
    assert governor.check() is None and applied == [expected]
    assert "as set" in governor.describe()


def test_openmp_defaults_yield_to_any_user_setting() -> None:
    from charlm.system.threads import DEFAULT_SPINCOUNT, set_openmp_defaults

    environ: dict[str, str] = {}
    assert "spin" in set_openmp_defaults(environ)
    assert environ == {"GOMP_SPINCOUNT": DEFAULT_SPINCOUNT}
    mine = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_WAIT_POLICY=PASSIVE" in set_openmp_defaults(mine)
    assert mine == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "before charlm" in set_openmp_defaults({}, torch_loaded=True)


def test_load_meter_reads_other_programs_cpu_time_on_linux() -> None:
    from charlm.system.threads import LoadMeter

    meter = LoadMeter()
    if meter.last is None:
        pytest.skip("no /proc/stat on this system")
    others = meter.others()
    assert others is None or 0.0 <= others <= (os.cpu_count() or 1) + 0.01


def test_training_header_names_threads_and_openmp_policy(tmp_path) -> None:
    corpus = write_corpus(tmp_path)
    result = cli("train", corpus, "--out", tmp_path / "run", *TINY, "--set", "train.max_steps=5")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("cpu:"))
    assert "thread" in line and "OpenMP" in line


def test_uniform_init_bounds_every_weight_and_bias() -> None:
    model = _model("uniform", cell="lstm", forget_bias=0.0, init_range=0.05)
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.05, name
    assert model.embedding.weight.std() > 0.02  # drawn, not zeroed


def test_every_shipped_config_loads() -> None:
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert {"wlm-wikitext2.yaml", "zaremba-small.yaml"} <= {c.name for c in configs}
    for path in configs:
        build_config(config_file=path)
    assert build_config(config_file=configs[0].parent / "wlm-wikitext2.yaml").optim.name == "sgd"


def test_tied_weights_start_small_under_the_pytorch_init() -> None:
    model = _model("pytorch", tie_weights=True, hidden_size=32)
    assert model.decoder.weight is model.embedding.weight
    assert model.embedding.weight.abs().max() <= 0.1


def test_sample_and_evaluate_use_trainings_thread_rule_and_restore_the_callers(
    tmp_path, monkeypatch
) -> None:
    """Sampling and scoring run on the count training's rule gives for their batch (fixed by the
    model's size and the cores, never the load), then leave the caller's setting as it was."""
    import charlm
    import charlm.api
    from charlm.system.threads import choose_threads

    corpus = write_corpus(tmp_path)
    assert train_tiny(corpus, "--out", tmp_path / "run", steps=5).exit_code == 0
    lm = charlm.load(tmp_path / "run", device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rule = choose_threads(0, 0, 2)  # the tiny model's step is far below SMALL_STEP_MACS
        pieces = lm.stream("abc", length=5, seed=1)
        next(pieces)
        assert torch.get_num_threads() == rule
        list(pieces)
        assert torch.get_num_threads() == 2
        seen = []
        real = charlm.api.score_text
        monkeypatch.setattr(
            charlm.api,
            "score_text",
            lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k),
        )
        lm.score("abc abd xyz\n" * 5)
        assert seen == [rule] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_thread_rule_splits_only_large_steps_and_keeps_a_chosen_count() -> None:
    from charlm.system.threads import SMALL_STEP_MACS, _usable_cores, choose_threads

    cores = min(2, _usable_cores())
    assert choose_threads(0, SMALL_STEP_MACS - 1, 2, environ={}) == 1
    assert choose_threads(0, SMALL_STEP_MACS, 2, environ={}) == cores
    assert choose_threads(3, 0, 2, environ={}) == 3
    assert choose_threads(0, 0, 2, environ={"OMP_NUM_THREADS": "2"}) == cores
