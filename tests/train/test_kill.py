"""`drgrpo train` killed with SIGKILL at many moments and resumed until done ends exactly where an
uninterrupted run ends: same weights, same metrics, samples and summary, no row twice.

The kills come from the DRGRPO_KILL_AT hook (drgrpo/train/run_dir.py): inside a checkpoint
write, inside the overwrite of the last checkpoint, in the middle of a metrics line, while
pruning, after an evaluation before its row, before summary.json. Each launch is the real CLI in
a fresh process, under a timeout; only the reward is swapped for a dense one so that the
untrained model learns at every step (else every weight would stay equal and prove nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import drgrpo
from drgrpo.train.checkpoint import list_checkpoints

RUNNER = """
import sys
from drgrpo.train import run as setup

real_make = setup.make_task

def digits(completion, reference):
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)

def make(name, **options):
    task = real_make(name, **options)
    object.__setattr__(task, "verify", digits)
    return task

setup.make_task = make
from drgrpo.app.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

# (kill point, what the launch resumes from, what it reaches before it dies).
SCHEDULE = [
    ("log.before:1", "fresh", "the base evaluation, before its row"),
    ("log.after:3", "no checkpoint", "step 2's row; checkpoint 1 is written"),
    ("checkpoint.after_model:1", "step 1", "inside checkpoint 2, after the weights"),
    ("checkpoint.after_manifest:2", "step 1", "checkpoint 3 complete, not yet renamed in"),
    ("log.before:1", "step 2", "step 3's evaluation, before its row"),
    ("log.mid_row:2", "step 2", "half of step 4's row"),
    ("checkpoint.prune:1", "step 3", "pruning checkpoint 2, moved to trash"),
    ("log.before:3", "step 4", "the final evaluation, before its row"),
    ("checkpoint.overwrite_moved_aside:1", "step 6", "re-save of 6: old moved aside"),
    ("checkpoint.overwrite_renamed_in:1", "step 6", "re-save of 6: new in, old not deleted"),
    ("checkpoint.before_manifest:1", "step 6", "re-save of 6: new copy without manifest"),
    ("log.after:1", "step 6", "the final evaluation's row, before summary.json"),
]
TIMEOUT_S = 120


def _launch(tmp_path, policy, out, *flags, kill=None):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(drgrpo.__file__).parents[1])}  # fmt: skip
    env.pop("DRGRPO_KILL_AT", None)
    if kill:
        env["DRGRPO_KILL_AT"] = kill
    args = [f"model.base={policy}", f"output_dir={out}", "steps=6", "rollout.prompts_per_step=2",
            "rollout.group_size=2", "rollout.max_new_tokens=16", "eval.num_prompts=8",
            "eval.num_samples=2", "eval.ks=[1,2]", "eval.every=3", "checkpoint_every=1",
            "keep_checkpoints=2", "log_samples_every=1", "optim.lr=1e-2", "no_eos_patience=1000"]  # fmt: skip
    cmd = [sys.executable, str(runner), "train", "--no-progress", *flags]
    if "--resume" not in flags:
        cmd += args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _algorithmic(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]  # a torn line fails


@pytest.mark.slow
def test_sigkill_at_many_moments_then_resume_matches_an_uninterrupted_run(
    tmp_path, tiny_policy_dir
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _launch(tmp_path, tiny_policy_dir, straight)
    assert done.returncode == 0, done.stderr[-3000:]

    outputs = []
    for i, (kill, _, reached) in enumerate(SCHEDULE):
        flags = ("--resume", str(killed)) if i else ()
        proc = _launch(tmp_path, tiny_policy_dir, killed, *flags, kill=kill)
        assert proc.returncode == -signal.SIGKILL, (i, kill, reached, proc.stderr[-3000:])
        outputs.append(proc.stdout)
    # The launch after the kill between move-aside and rename-in put the old copy back.
    assert "recovered step-000006 from .old-step-000006-" in outputs[9]
    last = _launch(tmp_path, tiny_policy_dir, killed, "--resume", str(killed))
    assert last.returncode == 0, last.stderr[-3000:]
    again = _launch(tmp_path, tiny_policy_dir, killed, "--resume", str(killed))
    assert again.returncode == 0 and "already finished" in again.stdout

    metrics = _rows(killed / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4, 5, 6, 6]  # base, 6 steps, final
    assert _algorithmic(metrics) == _algorithmic(_rows(straight / "metrics.jsonl"))
    assert len({r["reward/mean"] for r in metrics if "reward/mean" in r}) > 1  # it learns
    for name in ("samples.jsonl", "reward_faults.jsonl"):
        a, b = straight / name, killed / name
        assert a.exists() == b.exists() and (not a.exists() or a.read_text() == b.read_text())
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    for key in ("wall_s", "run_dir", "final_model"):  # timing and the folders' own paths
        sa.pop(key), sb.pop(key)
    assert sa == sb
    fa, fb = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, killed))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    root = killed / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000005", "step-000006"]
    assert [p.name for p in list_checkpoints(straight)] == ["step-000005", "step-000006"]
    for ckpt in ("step-000005", "step-000006"):
        wa, wb = (load_file(str(d / "checkpoints" / ckpt / "model" / "model.safetensors"))
                  for d in (straight, killed))  # fmt: skip
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (ckpt, key)
