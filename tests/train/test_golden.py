"""A golden CPU run: three steps of Dr.GRPO on a fixed tiny model, metrics pinned.

Recorded on: x86_64, 2 cores, torch 2.13.0+cpu, transformers 5.24.0, Python 3.11.7, one
intra-op thread (tests/conftest.py). Sampling is seeded, so rewards and lengths are exact;
float metrics are compared at 1e-5 relative, which allows for a different BLAS kernel but not for
a change of algorithm. If a deliberate change moves them, run this test with `-s`, check the
printed values make sense, and paste them below with a note of what changed.
"""

from __future__ import annotations

import pytest

from drgrpo.train.logging import read_metrics
from drgrpo.train.trainer import train

PINNED_KEYS = ("reward/mean", "reward/frac_zero_std_groups", "rollout/len_mean", "policy/loss",
               "policy/clipfrac", "policy/entropy", "optim/grad_norm")  # fmt: skip

GOLDEN = [
    {"reward/mean": 0.0647321417927742, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 8.0,
     "policy/loss": -1.30385160446167e-08, "policy/clipfrac": 0.0,
     "policy/entropy": 4.596721172332764, "optim/grad_norm": 0.4737868010997772},
    {"reward/mean": 0.0647321417927742, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 7.375,
     "policy/loss": -0.039062537252902985, "policy/clipfrac": 0.0,
     "policy/entropy": 4.596476409394862, "optim/grad_norm": 0.5144718885421753},
    {"reward/mean": 0.1272321343421936, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 8.0,
     "policy/loss": -1.4901161193847656e-08, "policy/clipfrac": 0.0,
     "policy/entropy": 4.596175670623779, "optim/grad_norm": 0.9815104007720947},
]  # fmt: skip


def test_golden_run(small_run, dense_reward):
    cfg = small_run("steps=3", "rollout.prompts_per_step=2", "rollout.group_size=4",
                    "rollout.max_new_tokens=8", "optim.lr=3e-3", "eval.num_prompts=2")  # fmt: skip
    train(cfg, progress=False)
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/mean" in r]
    observed = [{k: r[k] for k in PINNED_KEYS} for r in rows]
    print(observed)
    assert len(observed) == len(GOLDEN)
    for got, want in zip(observed, GOLDEN, strict=True):
        for key in PINNED_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
