"""model.fsdp=true end to end: `drgrpo train` under torchrun (2 gloo ranks) and alone, on the
tiny model, float32 (tests/distributed/_train_worker.py: the drgrpo CLI with scripted rollouts,
the same for every world size, and a dense reward). Launches, each under a timeout:

    plain1      1 process, replicated (the reference), 4 steps
    plain2      2 ranks, plain replication, 4 steps: the legitimate reduction-order difference
    fsdp2       2 ranks, FSDP2, 4 steps (checkpoints every step, keep 2)
    chain       FSDP2: 2 ranks x 2 steps, resumed on 1 process (2 -> 1) to step 3, then on 2
                ranks (1 -> 2) to step 4
    corrupt     a copy of the chain's 2-step folder with its newest checkpoint's rank-1 shard
                truncated, resumed on 2 ranks to step 4
    export      `drgrpo export` of fsdp2's newest checkpoint (1 process)

and the evaluation split over ranks (_eval_worker.py).

Measured (torch 2.13 CPU, 2 ranks, 2 updates per rollout, lr 1e-2, weights moved 36% from the
base): final weights, |a - b| / |b| over all tensors: plain2 vs plain1 9.7e-6 (the legitimate
difference: rank halves, length buckets and prompt sharing in one process, another summation
order; Adam carries it over 8 optimizer steps); fsdp2 vs plain1 9.9e-6, fsdp2 vs plain2
4.2e-7; chain vs fsdp2 1.9e-8; corrupt vs fsdp2 exactly 0 (same world size, every state
restored). Per-step grad norms: plain2 vs plain1 <= 1.3e-5 relative.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
WORKER = HERE / "_train_worker.py"

WEIGHT_RTOL = 5e-5
"""5x the measured legitimate difference (plain2 vs plain1, 9.7e-6): another summation order,
amplified by Adam over 8 steps. A sharded run that averaged instead of summing, or a resume
that lost Adam's moments, is off by far more (the grad norm check below: 2x)."""
NORM_RTOL = 1e-4
"""Per-step gradient norms: the measured legitimate difference is <= 1.3e-5."""


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out["PYTHONPATH"] = os.pathsep.join([str(SRC), out.get("PYTHONPATH", "")])
    out.pop("WORLD_SIZE", None)
    return out


def launch(ranks: int, *args: str, cwd: Path, script: Path = WORKER) -> str:
    cmd = [sys.executable, str(script), *args]
    if ranks > 1:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                    str(script)]  # fmt: skip
    done = subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def common(policy: str) -> list[str]:
    return [f"model.base={policy}", "rollout.prompts_per_step=4", "rollout.group_size=2",
            "rollout.max_new_tokens=6", "eval.num_prompts=3", "eval.num_samples=2",
            "eval.ks=[1]", "eval.every=0", "monitor_kl=true", "no_eos_patience=1000",
            "checkpoint_every=1", "optim.lr=1e-2", "optim.updates_per_rollout=2",
            "log_samples_every=0"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_train")
    base = ["train", "--no-progress", *common(tiny_policy_dir)]
    logs = {}
    for name, ranks, extra in [("plain1", 1, []), ("plain2", 2, []),
                               ("fsdp2", 2, ["model.fsdp=true"]),
                               ("chain", 2, ["model.fsdp=true"])]:  # fmt: skip
        steps = "steps=2" if name == "chain" else "steps=4"
        logs[name] = launch(ranks, *base, f"output_dir={root / name}", steps, *extra, cwd=root)
    shutil.copytree(root / "chain", root / "corrupt")
    logs["chain"] += launch(1, "train", "--no-progress", "--resume", str(root / "chain"),
                            "steps=3", cwd=root)  # fmt: skip
    logs["chain"] += launch(2, "train", "--no-progress", "--resume", str(root / "chain"),
                            "steps=4", cwd=root)  # fmt: skip
    shard = root / "corrupt" / "checkpoints" / "step-000002" / "dcp" / "__1_0.distcp"
    with shard.open("r+b") as f:  # a partial write of rank 1's shards
        f.truncate(100)
    logs["corrupt"] = launch(2, "train", "--no-progress", "--resume", str(root / "corrupt"),
                             "steps=4", cwd=root)  # fmt: skip
    logs["export"] = launch(1, "export", str(root / "fsdp2"), str(root / "exported"), cwd=root)
    return root, logs


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def relative(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    diff = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a)
    return (diff / sum(float(b[k].double().norm() ** 2) for k in b)) ** 0.5


def grad_norms(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["optim/grad_norm"] for r in rows if "optim/grad_norm" in r]


def test_sharded_run_equals_replicated_and_one_process(runs, tiny_policy_dir):
    root, _ = runs
    one = weights(root / "plain1" / "final")
    moved = relative(one, weights(Path(tiny_policy_dir)))
    assert moved > 0.1  # the runs learn: the comparison below is not between two base models
    assert relative(weights(root / "plain2" / "final"), one) < WEIGHT_RTOL  # the yardstick
    assert relative(weights(root / "fsdp2" / "final"), one) < WEIGHT_RTOL
    assert relative(weights(root / "fsdp2" / "final"), weights(root / "plain2" / "final")) < (
        WEIGHT_RTOL
    )
    # Gradients are sums over ranks, not averages: an un-undone FSDP mean would halve these.
    want = grad_norms(root / "plain1")
    assert len(want) == 4
    for name in ("plain2", "fsdp2"):
        got = grad_norms(root / name)
        assert got == pytest.approx(want, rel=NORM_RTOL), name
    summary = json.loads((root / "fsdp2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4


def test_sharded_checkpoints_are_dcp_in_verified_folders(runs):
    root, _ = runs
    ckpts = sorted(p.name for p in (root / "fsdp2" / "checkpoints").iterdir())
    assert ckpts == ["step-000003", "step-000004"]  # keep_checkpoints=2, no leftovers
    ckpt = root / "fsdp2" / "checkpoints" / "step-000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng/rank0.pt",
            "rng/rank1.pt", "state.json", "config.json", "model/config.json"} <= set(manifest)  # fmt: skip
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4 and "rank_rng" not in state


def test_dcp_resume_two_to_one_to_two_continues_the_trajectory(runs):
    """2 steps on 2 ranks + 1 on 1 process + 1 on 2 ranks == 4 straight steps on 2 ranks."""
    root, logs = runs
    assert relative(weights(root / "chain" / "final"), weights(root / "fsdp2" / "final")) < (
        WEIGHT_RTOL
    )
    assert "checkpoint from another world size" in logs["chain"]
    rows = [json.loads(x) for x in (root / "chain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "optim/grad_norm" in r] == [1, 2, 3, 4]


def test_a_corrupt_sharded_checkpoint_is_set_aside_and_the_previous_one_loaded(runs):
    """Step 2's rank-1 shard truncated: resumed from step 1 on the same world size, the run is
    the straight run exactly (every state restored, the same summation order)."""
    root, logs = runs
    assert "skipped step-000002: dcp/__1_0.distcp is corrupt" in logs["corrupt"]
    aside = [p.name for p in (root / "corrupt" / "checkpoints").iterdir()]
    assert any(name.startswith(".corrupt-step-000002") for name in aside)
    got, want = weights(root / "corrupt" / "final"), weights(root / "fsdp2" / "final")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_export_of_a_sharded_run_loads_in_plain_transformers(runs):
    from transformers import AutoModelForCausalLM

    root, _ = runs
    final = weights(root / "fsdp2" / "final")
    exported = weights(root / "exported")  # drgrpo export of the newest DCP checkpoint
    assert sorted(exported) == sorted(final)
    assert all(torch.equal(exported[k], final[k]) for k in final)
    model = AutoModelForCausalLM.from_pretrained(root / "exported", local_files_only=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], final[k]) for k in final)
    assert relative(final, weights(root / "plain1" / "final")) < WEIGHT_RTOL


def test_evaluation_split_over_ranks_equals_one_process(tmp_path):
    launch(2, str(tmp_path), cwd=tmp_path, script=HERE / "_eval_worker.py")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["plain_split"] == result["plain_one"]
    assert result["sharded_split"] == result["generic_one"]
    assert result["calls_per_rank"] == [5, 3]  # sampled 3 + 2 batches, greedy 2 + 1
    assert 0 < result["plain_one"]["accuracy"] < 1  # the grader tells rows apart


@pytest.mark.parametrize(
    ("override", "named"),
    [("model.lora_rank=4", "model.lora_rank"), ("rollout.engine=vllm", "rollout.engine=vllm")],
)
def test_fsdp_refuses_what_it_does_not_support_when_the_config_is_made(override, named):
    from drgrpo.config import build_config

    with pytest.raises(ValueError, match="model.fsdp=true does not support") as e:
        build_config(overrides=["model.fsdp=true", override])
    assert named in str(e.value) and "model.fsdp=false" in str(e.value)
    with pytest.raises(ValueError, match="baseline=value"):
        build_config(preset="ppo", overrides=["model.fsdp=true"])
