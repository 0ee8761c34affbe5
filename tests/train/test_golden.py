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
    {"reward/mean": 0.125, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 8.0,
     "policy/loss": 0.0, "policy/clipfrac": 0.0,
     "policy/entropy": 4.596203804016113, "optim/grad_norm": 1.0022484064102173},
    {"reward/mean": 0.0625, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 7.25,
     "policy/loss": -0.0703125, "policy/clipfrac": 0.0,
     "policy/entropy": 4.596284537479796, "optim/grad_norm": 0.3776976466178894},
    {"reward/mean": 0.1629464328289032, "reward/frac_zero_std_groups": 0.0, "rollout/len_mean": 8.0,
     "policy/loss": 5.960464477539063e-08, "policy/clipfrac": 0.0,
     "policy/entropy": 4.595977783203125, "optim/grad_norm": 1.0752887725830078},
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
