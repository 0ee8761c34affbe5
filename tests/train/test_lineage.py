"""The trainer side of the lineage: PPO with its critic, DAPO's dynamic sampling and overlong
shaping, end to end on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from drgrpo.app.cli import main
from drgrpo.config import build_config
from drgrpo.train import rl_step as loop
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


def test_a_shared_critic_trains_the_policy_trunk_by_vf_coef(
    tiny_policy_dir, tmp_path, dense_reward
):
    # Step 1: every critic head is zero, so the advantages are the same in all three runs; only
    # the value gradient through a shared trunk (weighted by vf_coef) can make the policies differ.
    def policy_after(name, *overrides):
        cfg = _ppo(tiny_policy_dir, tmp_path / name, "steps=1", *overrides)
        train(cfg, **QUIET)
        return _last(cfg.output_dir, "model/model.safetensors")

    separate = policy_after("separate")
    shared_0 = policy_after("shared0", "model.critic=shared", "objective.vf_coef=0.0")
    shared = policy_after("shared", "model.critic=shared")
    assert all(torch.equal(separate[k], shared_0[k]) for k in separate)
    assert any(not torch.equal(separate[k], shared[k]) for k in separate)
    head = _last(tmp_path / "shared", WEIGHTS)
    assert set(head) == {"weight", "bias"}  # the shared critic saves its head only


def _patch_reward(monkeypatch, verify):
    """Every task's verifier replaced by verify(completion, reference) -> float."""
    from drgrpo.train import run as setup

    real_make = setup.make_task

    def make(name, **options):
        task = real_make(name, **options)
        object.__setattr__(task, "verify", verify)
        return task

    monkeypatch.setattr(setup, "make_task", make)


class _RowSeededEngine:
    """The HF engine, one row at a time, row r of the run seeded with r: rollouts that do not
    depend on how a call's rows are chunked (the HF engine's one stream does)."""

    def __init__(self, policy, stop_ids, pad_id):
        from drgrpo.rollout import HFRolloutEngine

        self.inner, self.rows, self.pad_id = HFRolloutEngine(policy, stop_ids, pad_id), 0, pad_id

    def generate(self, prompts, *, generator=None, seed=None, **kw):
        from drgrpo.rollout import concat_rollouts

        parts = []
        for ids in prompts:
            parts.append(self.inner.generate([ids], seed=10_000 + self.rows, **kw))
            self.rows += 1
        return concat_rollouts(parts, self.pad_id)

    def sync_weights(self, policy):
        self.inner.sync_weights(policy)


def test_dynamic_sampling_keeps_informative_groups_whatever_the_chunking(small_run, monkeypatch):
    from drgrpo.train import run as setup

    # Even answers: every sample scores 1 (a group that agrees); odd: the digit share (varies).
    def verify(completion, reference):
        if int(reference) % 2 == 0:
            return 1.0
        return sum(c.isdigit() for c in completion) / max(len(completion), 1)

    _patch_reward(monkeypatch, verify)
    monkeypatch.setattr(setup, "HFRolloutEngine", _RowSeededEngine)
    kept = []
    real = loop.step_metrics
    monkeypatch.setattr(loop, "step_metrics", lambda r, *a: kept.append(r) or real(r, *a))
    runs = []
    for chunk in (0, 3):
        kept.clear()
        cfg = small_run("objective.dynamic_sampling=true", f"rollout.chunk_rows={chunk}",
                        "objective.max_sampling_rounds=4", "steps=3", name=f"chunk{chunk}")  # fmt: skip
        train(cfg, **QUIET)
        runs.append((_algorithmic(_steps(cfg.output_dir)), [r.clone() for r in kept]))
    (rows, rewards), (rows3, rewards3) = runs
    assert rows == rows3 and all(torch.equal(a, b) for a, b in zip(rewards, rewards3, strict=True))
    assert any(r["rollout/sampling_rounds"] > 1 for r in rows)  # some round dropped groups
    for row, r in zip(rows, rewards, strict=True):
        assert row["rollout/groups_drawn"] == 2 * row["rollout/sampling_rounds"]
        informative = r.reshape(-1, 3).std(dim=1) > 0  # (B,)
        # every kept group is informative, or the rounds ran out (then topped up to B = 2)
        assert len(r) == 6
        if row["rollout/sampling_rounds"] < 4:
            assert bool(informative.all()), r


def test_overlong_shaping_shifts_the_rewards_by_the_soft_penalty(small_run, eos_policy_dir,
                                                                  monkeypatch):  # fmt: skip
    _patch_reward(monkeypatch, lambda completion, reference: 0.25)
    seen = []
    real = loop.step_metrics
    monkeypatch.setattr(
        loop, "step_metrics",
        lambda r, c, lengths, *a: seen.append((r, lengths)) or real(r, c, lengths, *a),
    )  # fmt: skip
    # L_max = 6, L_cache = round(0.5 * 6) = 3: R_len = 0 up to 3 tokens, -1/3, -2/3 at 4, 5,
    # -1 at 6 (truncated); times penalty 0.6: 0, -0.2, -0.4, -0.6.
    cfg = small_run(f"model.base={eos_policy_dir}", "objective.overlong_cache_fraction=0.5",
                    "objective.overlong_penalty=0.6", "steps=2", "rollout.prompts_per_step=4")  # fmt: skip
    train(cfg, **QUIET)
    hand = {1: 0.0, 2: 0.0, 3: 0.0, 4: -0.2, 5: -0.4, 6: -0.6}
    lengths_seen = set()
    for (rewards, lengths), row in zip(seen, _steps(cfg.output_dir), strict=True):
        expected = torch.tensor([0.25 + hand[int(n)] for n in lengths])
        torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-6)
        assert row["reward/mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
        lengths_seen |= {int(n) for n in lengths}
    assert 6 in lengths_seen and lengths_seen & {1, 2, 3}  # truncated and short rows both met


def test_cli_train_ppo_prints_the_gae_and_value_formula(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--preset", "ppo", "--no-progress", f"model.base={tiny_policy_dir}",
               f"output_dir={out}", "steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
               "rollout.max_new_tokens=4", "eval.num_prompts=2", "eval.num_samples=1",
               "eval.ks=[1]"])  # fmt: skip
    assert rc == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "r_it = [t = |y_i|] R_i - 0.05 * k1_it" in printed  # the outcome on the last token
    assert "GAE A_it = delta_it + 1 * 0.95 A_i,t+1; returns G_it = A_it + V_it" in printed
    assert "V^clip = clip(V_it, V^old_it +- 0.2)" in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["objective"]["baseline"] == "value" and saved["model"]["critic"] == "separate"


def test_cli_train_dapo_runs_two_steps(tiny_policy_dir, tmp_path):
    out = tmp_path / "dapo"
    rc = main(["train", "--preset", "dapo", "--no-progress", f"model.base={tiny_policy_dir}",
               f"output_dir={out}", "steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
               "rollout.max_new_tokens=4", "eval.num_prompts=2", "eval.num_samples=1",
               "eval.ks=[1]", "objective.max_sampling_rounds=2"])  # fmt: skip
    assert rc == 0
    rows = _steps(out)
    assert len(rows) == 2 and all(1 <= r["rollout/sampling_rounds"] <= 2 for r in rows)
