"""Several processes equal one: 2 gloo ranks under torchrun against world size 1.

Three launches (tests/distributed/_worker.py), each under a timeout, in this order:

    dcp_first   1 process: step 1, DCP checkpoint, step 2 (the trajectory)
    two_ranks   torchrun, 2 ranks: loss/gradient invariance for every aggregation mode, KL on
                and off, ratio != 1 (old log-probs perturbed), FSDP2 and plain replication, in
                float64; a per-rank normalizer as the negative control; uneven micro-batch
                counts padded; the fast-path guards on DTensor shards; gathered rewards and
                advantages; NaN on one rank; DCP 1 -> 2 resume, and a checkpoint at 2 ranks
    dcp_resume  1 process: DCP 2 -> 1 resume

and `_timeout_probe.py` (2 ranks, one skips a collective) for the timeout message.

Measured (2 CPU cores): every invariance error <= 1.3e-15 relative, the per-rank normalizer
100-130% off; the DCP resumes continue the trajectory to ~4e-17.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drgrpo.train import distributed as D

WORKER = Path(__file__).with_name("_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
TIGHT = 1e-12  # float64: the sums differ only in the order ranks add them (~1e-16)


def launch(scenario, out_dir, ranks, script=WORKER):
    """Run `script scenario out_dir` (under torchrun when ranks > 1); rank 0's JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    args = [str(out_dir)] if script != WORKER else [scenario, str(out_dir)]
    cmd = [sys.executable, str(script), *args]
    if ranks > 1:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                    str(script)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise AssertionError(f"{scenario} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads((out_dir / f"{scenario}.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    first = launch("dcp_first", out, 1)
    return {
        "first": first,
        "two": launch("two_ranks", out, 2),
        "resume": launch("dcp_resume", out, 1),
    }


def invariance_rows(results, mode):
    rows = {k: v for k, v in results["two"].items() if k.endswith("/" + mode)}
    assert len(rows) == 8  # 4 aggregation modes x KL on/off
    return rows


@pytest.mark.parametrize("mode", ["fsdp2", "replicate"])
def test_two_ranks_equal_one_for_every_aggregation_and_kl(results, mode):
    for name, err in invariance_rows(results, mode).items():
        assert err["loss"] < TIGHT and err["grad"] < TIGHT and err["norm"] < TIGHT, (name, err)


def test_a_per_rank_normalizer_fails_the_same_check(results):
    """Each rank's own Z: N/2 sequences makes the loss and gradient 2x (100% off); a token count
    of half the batch is off by as much as the halves' token counts differ."""
    for name, err in invariance_rows(results, "per_rank_z").items():
        assert err["grad"] > 0.5 and err["loss"] > 0.5, (name, err)


def test_uneven_micro_batch_counts_are_padded_to_the_same_gradient(results):
    err = results["two"]["uneven"]
    assert err["loss"] < TIGHT and err["grad"] < TIGHT


def test_fast_paths_refuse_dtensor_shards(results):
    guards = results["two"]["guards"]
    assert "DTensor" in guards["describe"] and "FSDP2" in guards["describe"]
    assert guards["stepper_supports"] is False
    assert guards["head_raw"] is False  # the fused head's check, outside the root's forward
    assert "LogprobModel root" in guards["bare_lm"]


def test_advantages_from_gathered_rewards_are_bit_identical(results):
    assert results["two"]["gathered_rewards_equal"] is True
    assert results["two"]["advantages_equal"] == {
        "none": True,
        "group_std": True,
        "batch_std": True,
    }


def test_nan_on_one_rank_makes_every_rank_skip(results):
    assert results["two"]["any_rank"] == [True, False]
    assert results["two"]["nan_skipped"] == {"fsdp2": [True, True], "replicate": [True, True]}


def test_dcp_resume_across_world_sizes_continues_the_trajectory(results):
    assert results["two"]["dcp"]["one_to_two"] < TIGHT
    assert results["two"]["dcp"]["state"]["world_size"] == 1
    assert results["two"]["dcp"]["export_equal"] is True  # full CPU state dict on rank 0
    resume = results["resume"]
    assert resume["two_to_one"] < TIGHT
    assert resume["fresh_optimizer"] > 1e-4  # control: without Adam's moments it diverges
    assert resume["state"] == {"step": 1, "world_size": 2, "rng_restored": False}
    assert {"__0_0.distcp", "__1_0.distcp", "state.json", "rng"} <= set(resume["files"])
    assert resume["same_world_rng"] == [True, True]


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    w = D.init_distributed()
    assert (w.rank, w.world_size, w.is_main) == (0, 1, True)
    assert D.global_counts(3, 17) == (3, 17)
    assert D.micro_batch_count(2) == 2 and D.any_rank(True) and not D.any_rank(False)


def test_a_partial_torchrun_environment_names_the_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node"):
        D.init_distributed()


def test_generation_from_a_gathered_sharded_model_equals_the_plain_model(results):
    """Inside `gathered`, the decoder and head hold full weights; the engine's generic path
    (the fast stepper refuses FSDP modules) samples exactly what the plain fast path does."""
    gen = results["two"]["generation"]
    assert gen == {"same_tokens": True, "logprob_error": 0.0, "resharded_after": True}


def test_lora_under_fsdp2_equals_one_process_and_adapters_off_is_the_base(results):
    lora = results["two"]["lora"]
    assert lora["loss"] < TIGHT and lora["grad"] < TIGHT
    assert lora["adapters_off_error"] == 0.0 and lora["reference_helper_error"] == 0.0


def test_a_collective_timeout_says_what_the_ranks_disagree_on(tmp_path):
    """Rank 1 skips a collective rank 0 waits in (6 s timeout)."""
    message = launch("timeout", tmp_path, 2, WORKER.with_name("_timeout_probe.py"))["message"]
    assert "collective `any_rank` failed or timed out" in message
    assert "different number of collectives" in message and "Timed out" in message
