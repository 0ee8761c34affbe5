"""Golden CPU runs: three steps of Dr.GRPO and of GRPO on a fixed tiny model, metrics pinned.

The run is built to discriminate: the policy stops on EOS after a few tokens (so the loss is
not zero by construction, as it is when every response is truncated), two updates per rollout
make the second pass off-policy (so the clip acts: clipfrac > 0), and the rewards differ
within groups. Dr.GRPO and GRPO see the same first rollout and must then diverge.

Recorded on: x86_64, 2 cores, torch 2.13.0+cpu, transformers 5.24.0, Python 3.11.7, one
intra-op thread (tests/conftest.py). Sampling is seeded, so rewards and lengths are exact;
float metrics are compared at 1e-5 relative, which allows for a different BLAS kernel but not for
a change of algorithm. If a deliberate change moves them, run this test with `-s`, check the
printed values make sense, and paste them below with a note of what changed.
"""

from __future__ import annotations

import pytest

from drgrpo.config import build_config
from drgrpo.train.logging import read_metrics
from drgrpo.train.trainer import train

PINNED_KEYS = ("reward/mean", "reward/frac_zero_std_groups", "rollout/len_mean",
               "rollout/truncated_frac", "policy/loss", "policy/clipfrac", "policy/entropy",
               "optim/grad_norm")  # fmt: skip

GOLDEN = {
    "dr_grpo": [
        {"reward/mean": 0.12094156444072723, "reward/frac_zero_std_groups": 0.0,
         "rollout/len_mean": 6.625, "rollout/truncated_frac": 0.0,
         "policy/loss": -0.11335568875074387, "policy/clipfrac": 0.11320754716981132,
         "policy/entropy": 3.8841968752303213, "optim/grad_norm": 4.235475778579712},
        {"reward/mean": 0.03125, "reward/frac_zero_std_groups": 0.5, "rollout/len_mean": 4.25,
         "rollout/truncated_frac": 0.125, "policy/loss": -0.04194350913167,
         "policy/clipfrac": 0.029411764705882353, "policy/entropy": 3.9877144308651196,
         "optim/grad_norm": 1.4341145157814026},
        {"reward/mean": 0.18125000596046448, "reward/frac_zero_std_groups": 0.0,
         "rollout/len_mean": 7.0, "rollout/truncated_frac": 0.25,
         "policy/loss": 0.6571151912212372, "policy/clipfrac": 0.026785714285714284,
         "policy/entropy": 4.219231605529785, "optim/grad_norm": 6.942980527877808},
    ],
    "grpo": [
        {"reward/mean": 0.12094156444072723, "reward/frac_zero_std_groups": 0.0,
         "rollout/len_mean": 6.625, "rollout/truncated_frac": 0.0,
         "policy/loss": -0.02588891237974167, "policy/clipfrac": 0.04716981132075472,
         "policy/entropy": 4.105934574918927, "optim/grad_norm": 3.820816397666931},
        {"reward/mean": 0.0669642835855484, "reward/frac_zero_std_groups": 0.5,
         "rollout/len_mean": 3.875, "rollout/truncated_frac": 0.0,
         "policy/loss": -0.0015996992588043213, "policy/clipfrac": 0.04838709677419355,
         "policy/entropy": 4.014793395996094, "optim/grad_norm": 4.811855435371399},
        {"reward/mean": 0.01785714365541935, "reward/frac_zero_std_groups": 0.5,
         "rollout/len_mean": 8.625, "rollout/truncated_frac": 0.5,
         "policy/loss": -0.0060608722269535065, "policy/clipfrac": 0.021739130434782608,
         "policy/entropy": 4.467950572138247, "optim/grad_norm": 1.7651349902153015},
    ],
}  # fmt: skip


def golden_config(base: str, out: str, preset: str):
    return build_config(preset=preset, overrides=[
        f"model.base={base}", f"output_dir={out}", "steps=3", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "optim.lr=5e-4",
        "optim.updates_per_rollout=2", "eval.num_prompts=2", "eval.num_samples=1", "eval.ks=[1]",
        "checkpoint_every=0", "no_eos_patience=1000", "monitor_kl=false",
        "objective.kl_coef=0.0", "rollout.truncated=zero_reward",
    ])  # fmt: skip


@pytest.mark.parametrize("preset", sorted(GOLDEN))
def test_golden_run(eos_policy_dir, tmp_path, dense_reward, preset):
    cfg = golden_config(eos_policy_dir, str(tmp_path / preset), preset)
    train(cfg, progress=False)
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/mean" in r]
    observed = [{k: r[k] for k in PINNED_KEYS} for r in rows]
    print(preset, observed)
    # What makes the run discriminating, checked before the numbers:
    assert all(r["rollout/truncated_frac"] < 1 for r in observed)  # rows reach EOS
    assert any(r["policy/clipfrac"] > 0 for r in observed)  # the clip acts
    assert all(r["policy/loss"] != 0 for r in observed)
    golden = GOLDEN[preset]
    assert len(observed) == len(golden)
    for got, want in zip(observed, golden, strict=True):
        for key in PINNED_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def test_the_two_golden_runs_differ_only_after_the_shared_first_rollout():
    first = {k: GOLDEN["dr_grpo"][0][k] for k in ("reward/mean", "rollout/len_mean")}
    assert first == {k: GOLDEN["grpo"][0][k] for k in first}
    assert GOLDEN["dr_grpo"][0]["policy/loss"] != GOLDEN["grpo"][0]["policy/loss"]
