"""`drgrpo train rollout.engine=vllm`: three steps on the tiny model, sampled by vLLM on CPU.

vLLM lives in its own venv (`make vllm-venv`; or DRGRPO_VLLM_PYTHON): the whole run is a child
process of that Python, under a timeout. Skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("DRGRPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM Python at {VLLM_PYTHON}: run `make vllm-venv` or set DRGRPO_VLLM_PYTHON",
)


@pytest.fixture(scope="module")
def vllm_policy_dir(tmp_path_factory) -> str:
    """The built-in tiny shape (head_dim 32: vLLM's CPU attention has no kernel for 16)."""
    from drgrpo.models import build_model, build_tokenizer, save_policy

    tokenizer = build_tokenizer()
    path = tmp_path_factory.mktemp("vllm-policy")
    save_policy(build_model("tiny", len(tokenizer), seed=0, num_hidden_layers=2), tokenizer, path)
    return str(path)


def test_three_steps_with_vllm_rollouts_and_behaviour_correction(vllm_policy_dir, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")  # fmt: skip
    cmd = [str(VLLM_PYTHON), "-m", "drgrpo", "train", "--no-progress",
           f"model.base={vllm_policy_dir}", f"output_dir={out}", "rollout.engine=vllm",
           "steps=3", "rollout.prompts_per_step=2", "rollout.group_size=3",
           "rollout.max_new_tokens=8", "eval.num_prompts=2", "eval.num_samples=1", "eval.ks=[1]",
           "checkpoint_every=0", "monitor_kl=false", "no_eos_patience=1000",
           "objective.behavior_correction=tis", "optim.lr=1e-2"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and Path(summary["final_model"]).is_dir()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/len_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # The sampler (vLLM, fp32) and the trainer agree closely: the mismatch is tiny but measured.
    for r in steps:
        assert r["rollout/mismatch_kl"] is not None and 0 <= r["rollout/mismatch_kl"] < 1e-3
        assert r["policy/behavior_corrected_frac"] is not None
