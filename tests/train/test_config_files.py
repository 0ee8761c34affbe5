"""The shipped configs: each builds, default.yaml is the built-in default, and the paper run
keeps no reference model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drgrpo.config import build_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds(path):
    assert build_config(path).steps > 0


def test_default_yaml_is_the_built_in_default():
    assert dataclasses.asdict(build_config(CONFIGS / "default.yaml")) == dataclasses.asdict(
        build_config()
    )


def test_oat_zero_keeps_no_reference_model():
    cfg = build_config(CONFIGS / "oat_zero.yaml")
    assert cfg.objective.kl_coef == 0 and not cfg.objective.uses_reference
    assert cfg.monitor_kl is False  # otherwise a frozen copy of a 1.5B model and a forward a step
