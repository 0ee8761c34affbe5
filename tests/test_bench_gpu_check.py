"""benchmarks/gpu_check.py at its tiny size on CPU: every item runs through drgrpo's own code
paths and writes every field, with values that can only come out of a working run; the
deadline guard skips and records; the mismatch statistics against hand-derived numbers.

The GPU numbers themselves need the lent GPU machine (benchmarks/README.md says how to run it).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root holds benchmarks/

from benchmarks.gpu_check_items import mismatch_stats  # noqa: E402

ITEMS = ("generation_fast", "generation_hf", "mismatch", "fsdp_step", "weight_sync",
         "checkpoint", "vllm")  # fmt: skip


VLLM_PYTHON = Path(os.environ.get("DRGRPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


def run_check(out: Path, *extra: str, python: str = sys.executable, timeout: int = 55) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind")  # fmt: skip
    args = [python, str(ROOT / "benchmarks" / "gpu_check.py"), "--size", "tiny",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check-cpu.json").read_text())


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    return run_check(tmp_path_factory.mktemp("gpu_check"))


def test_header_and_every_item_ran(result):
    assert result["complete"] is True and result["schema"] == 1
    assert result["device"]["slug"] == "cpu" and result["backend"] == "gloo"
    assert result["dtype"] == "float32"
    assert result["versions"]["torch"] == torch.__version__
    assert result["versions"]["transformers"]
    assert result["matmul"]["status"] == "ok" and result["matmul"]["tflops"] > 0
    tiny = result["sizes"]["tiny"]
    assert tiny["config"]["vocab_size"] == 512 and tiny["config"]["tie_word_embeddings"]
    assert tiny["parameters"] > 0
    items = tiny["items"]
    assert set(items) == set(ITEMS)
    for name in ITEMS[:-1]:
        assert items[name]["status"] == "ok", items[name].get("traceback", items[name])
    assert items["vllm"]["status"] == "skipped"  # no vLLM in the main venv


def test_generation_counts_every_row_to_full_length(result):
    items, work = result["sizes"]["tiny"]["items"], result["sizes"]["tiny"]["workload"]
    for name, fast in (("generation_fast", True), ("generation_hf", False)):
        g = items[name]
        assert g["tokens"] == work["rows"] * work["new_tokens"] == 8 * 16
        assert g["tokens_per_s"] > 0 and len(g["tokens_per_s_runs"]) == work["repeats"]
        assert g["fast_stepper"] is fast


def test_step_mfu_in_range(result):
    step = result["sizes"]["tiny"]["items"]["fsdp_step"]
    assert 0 < step["mfu"] <= 1 and 0 < step["mfu_rowwise"] <= 1
    assert step["mfu_rowwise"] > step["mfu"]  # every row's prompt counted: more FLOPs
    assert step["response_tokens"] == 8 * 16
    assert math.isfinite(step["loss"]) and step["grad_norm"] > 0


def test_mismatch_is_float32_rounding(result):
    """Sampler and trainer differ only by the order of float32 operations: the fast stepper
    against the full forward (through the FSDP2 root, and the plain master)."""
    mis = result["sizes"]["tiny"]["items"]["mismatch"]
    for key in ("vs_fsdp2_trainer", "vs_fp32_master"):
        stats = mis[key]
        assert stats["tokens"] > 0 and stats["rows"] == 8
        assert 0 <= stats["mean_abs"] < 1e-5 and 0 <= stats["max_abs"] < 1e-4
        assert 0 <= stats["k3_mean"] < 1e-9
        buckets = stats["by_length"]
        assert sum(b["rows"] for b in buckets.values()) == 8
        assert sum(b["tokens"] for b in buckets.values()) == stats["tokens"]


def test_weight_sync_and_checkpoint_restore_exactly(result):
    items = result["sizes"]["tiny"]["items"]
    sync = items["weight_sync"]
    assert sync["max_abs_diff_after_sync"] == 0.0  # the engine was moved by +1 before each path
    assert sync["via_host"]["total_s"] > 0 and sync["on_device"]["total_s"] > 0
    ckpt = items["checkpoint"]
    assert ckpt["perturbed_max_abs_diff"] == pytest.approx(1.0, abs=1e-3)  # the load had work
    assert ckpt["loaded_max_abs_diff"] == 0.0 and ckpt["optimizer_max_abs_diff"] == 0.0
    assert ckpt["optimizer_state_tensors"] > 0  # AdamW moments were in the checkpoint
    assert ckpt["bytes"] > 0 and ckpt["save_s"] > 0 and ckpt["load_s"] > 0


def test_deadline_skips_and_records(tmp_path):
    result = run_check(tmp_path, "--deadline-s", "0")
    assert result["complete"] is True
    assert result["matmul"]["status"] == "skipped"
    assert result["sizes"]["tiny"]["build"]["status"] == "skipped"
    assert {i["status"] for i in result["sizes"]["tiny"]["items"].values()} == {"skipped"}


def test_mismatch_stats_by_hand():
    """Row 0 samples 2 tokens, row 1 one token; T = 4, so the length quarters are 1, 2, 3, 4.
    d = trainer - sampler: row 0 (-0.1, +0.1), row 1 (0.0).
    mean |d| = 0.2 / 3 = 0.0666667; max 0.1
    k3 = e^d - d - 1: e^-0.1 + 0.1 - 1 = 0.0048374180, e^0.1 - 0.1 - 1 = 0.0051709181, 0
    k3 mean = 0.0100083361 / 3 = 0.0033361120
    |sum_t d| per row: 0.0 and 0.0."""
    sampler = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    trainer = torch.tensor([[-1.1, -1.9, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    stats = mismatch_stats(sampler, trainer, mask)
    assert stats["tokens"] == 3 and stats["rows"] == 2
    assert stats["mean_abs"] == pytest.approx(0.0666667, abs=1e-7)
    assert stats["max_abs"] == pytest.approx(0.1, abs=1e-12)
    assert stats["k3_mean"] == pytest.approx(0.0033361120, abs=1e-10)
    assert stats["seq_log_ratio_abs_mean"] == pytest.approx(0.0, abs=1e-12)
    assert stats["by_length"]["1-1"]["rows"] == 1 and stats["by_length"]["2-2"]["rows"] == 1
    assert stats["by_length"]["2-2"]["k3_mean"] == pytest.approx(0.0100083361 / 2, abs=1e-10)
    assert stats["by_length"]["3-3"] == {"rows": 0, "tokens": 0}


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM Python at {VLLM_PYTHON}: run "
                    "`make vllm-venv` or set DRGRPO_VLLM_PYTHON")  # fmt: skip
def test_vllm_item_where_vllm_is_importable(tmp_path):
    """The same check under vllm-cpu's Python (~40 s, most of it vLLM's start-up): its
    engine's float32 log-probs agree with the FSDP2 trainer's to rounding; against a trainer
    whose weights were all scaled by 1.1 its old samples are stale, and after `sync_weights`
    its fresh ones agree again."""
    result = run_check(tmp_path, python=str(VLLM_PYTHON), timeout=300)
    v = result["sizes"]["tiny"]["items"]["vllm"]
    assert v["status"] == "ok", v.get("traceback", v)
    assert v["tokens_per_s"] > 0 and v["tokens"] > 0 and v["sync_weights_s"] > 0
    assert v["vs_fsdp2_trainer"]["mean_abs"] < 1e-5 and v["after_sync"]["mean_abs"] < 1e-5
    assert v["stale_before_sync"]["mean_abs"] > 1e-2
