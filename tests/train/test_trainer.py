"""The trainer end to end on a small untrained model: resume parity, faults, checkpoints, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drgrpo.app.cli import main
from drgrpo.train import checkpoint as ckpt_mod
from drgrpo.train import rl_step as loop
from drgrpo.train import update as step
from drgrpo.train.checkpoint import CheckpointError, list_checkpoints
from drgrpo.train.logging import read_metrics
from drgrpo.train.rl_step import TrainingError
from drgrpo.train.trainer import train

QUIET = {"progress": False}


def _weights(run_dir):
    final = list_checkpoints(run_dir)[-1]
    return load_file(str(final / "model" / "model.safetensors"))


def _algorithmic(rows):
    """Metrics that must be identical between runs (timings are not)."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_resume_gives_identical_metrics_and_weights(small_run, dense_reward):
    straight = small_run(name="straight")
    train(straight, **QUIET)
    halves = small_run(name="halves")
    out = train(halves, stop_at_step=2, **QUIET)
    assert out == {"stopped_at": 2}
    train(halves, resume=True, **QUIET)
    a, b = read_metrics(straight.output_dir), read_metrics(halves.output_dir)
    assert len([r for r in a if "reward/mean" in r]) == 4
    assert _algorithmic(a) == _algorithmic(b)
    assert len({r["reward/mean"] for r in a if "reward/mean" in r}) > 1  # a run that learns
    wa, wb = _weights(straight.output_dir), _weights(halves.output_dir)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_training_changes_the_policy_and_writes_the_run_folder(
    small_run, tiny_policy_dir, dense_reward
):
    cfg = small_run()
    summary = train(cfg, **QUIET)
    run = cfg.output_dir
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json"):
        assert (Path(run) / name).exists(), name
    assert summary["steps"] == 4 and summary["preset"] == "dr_grpo"
    base = load_file(f"{tiny_policy_dir}/model.safetensors")
    trained = _weights(run)
    assert any(not torch.equal(base[k], trained[k]) for k in base)


def test_one_update_without_kl_spends_no_extra_forward(small_run, monkeypatch):
    calls = []
    real = loop.sequence_logprobs
    monkeypatch.setattr(loop, "sequence_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(small_run("steps=2", name="a"), **QUIET)
    assert calls == []  # no old-logprob pass (ratio is 1) and no reference pass (beta = 0)
    train(small_run("steps=2", "optim.updates_per_rollout=2", name="b"), **QUIET)
    assert len(calls) == 2  # one old-logprob pass per step
    calls.clear()
    # Two mini-batches of one rollout: the second optimizer step is off-policy, so pi_old is
    # computed (once per rollout) even with a single pass.
    train(small_run("steps=2", "optim.mini_batches=2", name="m"), **QUIET)
    assert len(calls) == 2
    calls.clear()
    train(small_run("steps=2", "objective.kl_coef=0.1", name="c"), **QUIET)
    assert len(calls) == 2  # one reference pass per step


def test_second_mini_batch_of_a_rollout_is_clipped_against_pi_old(small_run, dense_reward):
    """With mini_batches=2 and one pass, the first optimizer step moves the policy; the second
    mini-batch must see ratio != 1 (before pi_old was computed here, its ratio was exactly 1 and
    the clip could never act, so clipfrac stayed 0)."""
    cfg = small_run("steps=3", "optim.mini_batches=2", "optim.lr=5e-2",
                    "optim.max_grad_norm=0")  # fmt: skip
    train(cfg, **QUIET)
    rows = [r for r in read_metrics(cfg.output_dir) if "policy/clipfrac" in r]
    assert max(r["policy/clipfrac"] for r in rows) > 0
    assert all(r["optim/steps"] == 2 for r in rows)


def test_reward_function_that_raises_or_hangs_scores_zero(small_run, monkeypatch):
    from drgrpo.train import run as setup

    real_make = setup.make_task

    def faulty(name, **options):
        task = real_make(name, **options)
        calls = {"n": 0}

        def verify(completion, reference):
            calls["n"] += 1
            if calls["n"] % 3 == 1:
                raise RuntimeError("verifier bug")
            if calls["n"] % 3 == 2:
                time.sleep(5)
            return 1.0

        object.__setattr__(task, "verify", verify)
        return task

    monkeypatch.setattr(setup, "make_task", faulty)
    cfg = small_run(
        "steps=1",
        "rollout.reward_timeout_s=0.05",
        "eval.num_prompts=1",
        "eval.num_samples=1",
        "eval.ks=[1]",
        "eval.greedy=false",
        "rollout.max_reward_fault_fraction=1.0",
    )  # 4 of 6 faults: tolerated here
    # fmt: skip
    train(cfg, **QUIET)
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/errors" in r]
    assert rows[0]["reward/errors"] == 2 and rows[0]["reward/timeouts"] == 2
    assert rows[0]["reward/mean"] == pytest.approx(2 / 6)
    faults = [
        json.loads(x) for x in Path(cfg.output_dir, "reward_faults.jsonl").read_text().splitlines()
    ]
    assert {f["fault"].split(":")[0] for f in faults} >= {"RuntimeError"}


def test_a_run_whose_rewards_all_fault_stops_naming_the_reward(small_run, monkeypatch):
    from drgrpo.train import run as setup

    real_make = setup.make_task

    def broken(name, **options):
        task = real_make(name, **options)
        object.__setattr__(task, "verify", lambda completion, reference: "1.0")  # a string
        return task

    monkeypatch.setattr(setup, "make_task", broken)
    cfg = small_run("steps=2", "eval.num_prompts=1", "eval.num_samples=1", "eval.ks=[1]",
                    "eval.greedy=false")  # fmt: skip
    with pytest.raises(TrainingError, match=r"reward 'verifier' .*every call") as err:
        train(cfg, **QUIET)
    assert "learning rate" not in str(err.value) and "'1.0'" in str(err.value)
    faults = Path(cfg.output_dir, "reward_faults.jsonl").read_text()
    assert "'1.0'" in faults or '"1.0"' in faults  # logged with the offending value first


def test_nan_loss_skips_steps_then_stops_with_last_checkpoint_intact(
    small_run, monkeypatch, dense_reward
):
    cfg = small_run("steps=6", "checkpoint_every=1", "max_nonfinite_steps=2")
    real = step.objective_loss
    state = {"calls": 0}

    def poisoned(*args, **kwargs):
        state["calls"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan"), stats) if state["calls"] > 2 else (loss, stats)

    monkeypatch.setattr(step, "objective_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg, **QUIET)
    # Steps 1-2 trained; step 3 was skipped (weights untouched, still checkpointed); step 4 was
    # skipped too and stopped the run before any save.
    kept = list_checkpoints(cfg.output_dir)
    assert [p.name for p in kept] == ["step-000002", "step-000003"]
    w2, w3 = (load_file(str(p / "model" / "model.safetensors")) for p in kept)
    for key in w2:
        assert torch.equal(w2[key], w3[key]) and torch.isfinite(w3[key]).all()
    rows = [r for r in read_metrics(cfg.output_dir) if "optim/skipped_steps" in r]
    assert [r["optim/skipped_steps"] for r in rows] == [0, 0, 1]


def test_interrupted_checkpoint_write_leaves_no_valid_looking_checkpoint(small_run, monkeypatch):
    cfg = small_run("steps=2", "checkpoint_every=1")
    real_save = ckpt_mod.torch.save

    def crash_on_second(obj, path, *a, **k):
        if "000002" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", crash_on_second)
    with pytest.raises(OSError):
        train(cfg, **QUIET)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step-000001"]
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    train(cfg, resume=True, **QUIET)  # continues from step 1, cleans the partial folder
    root = Path(cfg.output_dir) / "checkpoints"
    assert not list(root.glob(".tmp-*"))
    assert list_checkpoints(cfg.output_dir)[-1].name == "step-000002"


def test_foreign_or_corrupt_checkpoint_is_refused(small_run):
    cfg = small_run("steps=2", name="r")
    train(cfg, stop_at_step=1, **QUIET)
    other = small_run("steps=2", "objective.clip_eps_high=0.28", name="r")
    with pytest.raises(CheckpointError, match="objective"):
        train(other, resume=True, **QUIET)
    last = list_checkpoints(cfg.output_dir)[-1]
    (last / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg, resume=True, **QUIET)


def test_cli_train_end_to_end(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--preset", "grpo", "--no-progress", f"model.base={tiny_policy_dir}",
               f"output_dir={out}", "steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
               "rollout.max_new_tokens=4", "eval.num_prompts=2", "eval.num_samples=1",
               "eval.ks=[1]"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "grpo" and summary["steps"] == 2
    assert (out / "plots" / "training.png").is_file()  # the front end plots, the trainer does not
    saved = json.loads((out / "config.json").read_text())
    assert saved["objective"]["scale"] == "group_std"
    assert "(1/|y_i|)" in capsys.readouterr().out  # the resolved formula is printed


def test_cli_config_error_names_the_field(capsys):
    assert main(["train", "rollout.group_sise=4"]) == 2
    err = capsys.readouterr().err
    assert "group_sise" in err and "group_size" in err


def test_rollouts_are_generated_in_chunks_of_whole_groups(small_run, monkeypatch):
    from drgrpo.rollout.hf import HFRolloutEngine

    sizes = []
    real = HFRolloutEngine.generate

    def recording(self, prompt_ids, **kwargs):
        sizes.append(len(prompt_ids))
        return real(self, prompt_ids, **kwargs)

    monkeypatch.setattr(HFRolloutEngine, "generate", recording)
    cfg = small_run("steps=2", "rollout.prompts_per_step=4", "rollout.chunk_rows=6",
                    "eval.every=0", "eval.greedy=false", "eval.num_prompts=1",
                    "eval.num_samples=1", "eval.ks=[1]")  # fmt: skip
    train(cfg, **QUIET)
    training_calls = sizes[1:-1]  # the first and the last call are the evaluations
    assert training_calls == [6, 6, 6, 6]  # 4 prompts x 3 samples = 12 rows, in chunks of 6
    rows = [r for r in read_metrics(cfg.output_dir) if "rollout/len_mean" in r]
    assert len(rows) == 2


def test_chunk_rows_must_hold_whole_groups():
    from drgrpo.config import build_config

    with pytest.raises(ValueError, match="multiple of rollout.group_size"):
        build_config(overrides=["rollout.group_size=4", "rollout.chunk_rows=6"])
