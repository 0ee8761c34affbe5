"""The KL monitor's default: on for small models, off above MONITOR_KL_MAX_PARAMS (a frozen copy
of a large model is a GPU's worth of memory), and an explicit choice always wins."""

from __future__ import annotations

import pytest
from rich.console import Console

from drgrpo.config import fields
from drgrpo.config.fields import MONITOR_KL_MAX_PARAMS, TrainConfig
from drgrpo.train import rl_step
from drgrpo.train.run import build_run


@pytest.mark.parametrize(
    ("choice", "params", "expected"),
    [(None, 10**6, True), (None, MONITOR_KL_MAX_PARAMS, True), (None, 7 * 10**9, False),
     (True, 7 * 10**9, True), (False, 10**6, False)],
)  # fmt: skip
def test_default_follows_the_model_size_and_an_explicit_choice_wins(choice, params, expected):
    assert TrainConfig(monitor_kl=choice).monitors_kl(params) is expected


@pytest.mark.parametrize("limit", [10**9, 0])  # the tiny model is below 1e9 and above 0
def test_the_default_builds_a_reference_only_below_the_limit(small_run, monkeypatch, limit):
    monkeypatch.setattr(fields, "MONITOR_KL_MAX_PARAMS", limit)
    cfg = small_run("monitor_kl=null", "objective.kl_coef=0.0")
    assert cfg.monitor_kl is None
    run = build_run(cfg, resume=False, console=Console(quiet=True))
    try:
        on = limit > 0
        assert run.monitor_kl is on and (run.reference is not None) is on
        metrics = rl_step.rl_step(run, 1)
        assert (metrics["policy/kl"] is not None) is on
    finally:
        run.scorer.close()
