from __future__ import annotations

import pytest

from drgrpo.config import build_config


@pytest.fixture
def small_run(tiny_policy_dir, tmp_path):
    """A config for a few cheap steps; extra overrides on top."""

    def make(*overrides: str, name: str = "run"):
        return build_config(overrides=[
            f"model.base={tiny_policy_dir}", f"output_dir={tmp_path / name}",
            "rollout.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=6",
            "eval.num_prompts=3", "eval.num_samples=2", "eval.ks=[1,2]", "steps=4",
            "optim.lr=1e-2", "log_samples_every=1", "checkpoint_every=2", "no_eos_patience=1000", "monitor_kl=false",
            *overrides,
        ])  # fmt: skip

    return make
