"""The trainer under torchrun (2 CPU processes, gloo): the update equals one process's, and a
whole `torchrun -m drgrpo train` run works, logs once, and resumes on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
sys.path.insert(0, str(HERE))
from _update_worker import AGGREGATIONS, random_batch, update  # noqa: E402

TIGHT = 1e-12  # float64: only the order of the cross-rank sums differs (~1e-16)


def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE.parent), env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           *args]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_two_rank_update_equals_one_process(tmp_path, mode):
    """run_updates itself: all-reduced normalizer counts, summed gradients, two passes (the
    second off-policy against fixed old log-probs), micro-batches of 2, KL on."""
    done = torchrun(str(HERE / "_update_worker.py"), str(tmp_path), mode, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(tmp_path / f"{mode}.pt")
    two_totals = json.loads((tmp_path / f"{mode}.json").read_text())
    one, one_totals = update(random_batch(n=8), mode)
    for name, p in one.named_parameters():
        torch.testing.assert_close(two[name], p.detach(), rtol=TIGHT, atol=TIGHT, msg=name)
    for key in ("loss", "pg_loss", "kl_loss", "tokens", "kl_sum", "clipped_tokens"):
        assert two_totals[key] == pytest.approx(one_totals[key], rel=TIGHT, abs=TIGHT), key


def test_torchrun_train_logs_once_and_resumes_on_one_process(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    common = [f"model.base={tiny_policy_dir}", f"output_dir={out}", "rollout.prompts_per_step=4",
              "rollout.group_size=2", "rollout.max_new_tokens=6", "eval.num_prompts=2",
              "eval.num_samples=1", "eval.ks=[1]", "monitor_kl=false", "no_eos_patience=1000",
              "checkpoint_every=1", "optim.lr=1e-2", "optim.mini_batches=2"]  # fmt: skip
    done = torchrun("-m", "drgrpo", "train", "--no-progress", *common, "steps=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 2]  # base eval, 2 steps, final eval: once each
    state = json.loads((out / "checkpoints" / "step-000002" / "state.json").read_text())
    assert len(state["rank_rng"]) == 2 and state["rank_rng"][0] != state["rank_rng"][1]
    # Continue the same run on one process (a different world size): 2 more steps.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC))
    more = subprocess.run([sys.executable, "-m", "drgrpo", "train", "--no-progress", "--resume",
                           str(out), "steps=4"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1
