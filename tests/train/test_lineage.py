"""The trainer side of the lineage: PPO with its critic, DAPO's dynamic sampling and overlong
shaping, end to end on the tiny model."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from drgrpo.config import build_config
from drgrpo.train.checkpoint import list_checkpoints
from drgrpo.train.critic import WEIGHTS
from drgrpo.train.logging import read_metrics
from drgrpo.train.trainer import train

QUIET = {"progress": False}


def _algorithmic(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _last(run_dir, name):
    return load_file(str(list_checkpoints(run_dir)[-1] / name))


def _steps(run_dir):
    return [r for r in read_metrics(run_dir) if "reward/mean" in r]


def test_ppo_learns_a_critic_and_resumes_bit_identically(tiny_policy_dir, tmp_path, dense_reward):
    # 2 mini-batches x 2 passes: off-policy ratios, and the critic's value clip can act
    straight = _ppo(tiny_policy_dir, tmp_path / "straight")
    train(straight, **QUIET)
    halves = _ppo(tiny_policy_dir, tmp_path / "halves")
    assert train(halves, stop_at_step=2, **QUIET) == {"stopped_at": 2}
    train(halves, resume=True, **QUIET)
    a, b = _steps(straight.output_dir), _steps(halves.output_dir)
    assert len(a) == 4 and _algorithmic(a) == _algorithmic(b)
    for row in a:
        for key in ("value/loss", "value/explained_variance", "value/clipfrac", "policy/loss"):
            assert math.isfinite(row[key]), (key, row[key])
    assert any(row["value/clipfrac"] > 0 for row in a)  # the second pass meets the clip
    # The critic moved away from its zero head, and both halves end on the same bits.
    ca, cb = _last(straight.output_dir, WEIGHTS), _last(halves.output_dir, WEIGHTS)
    assert float(ca["head.weight"].abs().sum()) > 0
    assert ca.keys() == cb.keys()
    for key in ca:
        assert torch.equal(ca[key], cb[key]), key
    pa = _last(straight.output_dir, "model/model.safetensors")
    pb = _last(halves.output_dir, "model/model.safetensors")
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
    manifest = json.loads((list_checkpoints(straight.output_dir)[-1] / "manifest.json").read_text())
    assert {"critic.safetensors", "critic_optimizer.pt"} <= set(manifest["files"])


def _ppo(base, out, *overrides):
    """tests/train/conftest.py's small_run under the ppo preset."""
    return build_config(preset="ppo", overrides=[
        f"model.base={base}", f"output_dir={out}", "rollout.prompts_per_step=2",
        "rollout.group_size=3", "rollout.max_new_tokens=6", "eval.num_prompts=3",
        "eval.num_samples=2", "eval.ks=[1,2]", "steps=4", "optim.lr=1e-2", "log_samples_every=1",
        "checkpoint_every=2", "no_eos_patience=1000", "monitor_kl=false",
        "optim.mini_batches=2", "optim.updates_per_rollout=2", *overrides,
    ])  # fmt: skip
