"""VLLMRolloutEngine on CPU, checked against the trainer's own fp32 log-probs.

vLLM lives in its own venv (`make vllm-venv`, or DRGRPO_VLLM_PYTHON=/path/to/python): one child
process (vllm_worker.py) starts the engine once and samples every case; the tests here score
its rollouts with `sequence_logprobs` of this process's transformers. Skipped without that venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from drgrpo.models.logprobs import sequence_logprobs
from drgrpo.models.tokenizer import PAD_ID

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vllm_worker.py")
sys.path.insert(0, str(WORKER.parent))
from vllm_worker import MAX_NEW, STOP_IDS, TEMPERATURE  # noqa: E402

VLLM_PYTHON = Path(os.environ.get("DRGRPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM Python at {VLLM_PYTHON}: run `make vllm-venv` or set DRGRPO_VLLM_PYTHON",
)
TOL = 1e-4  # fp32 engine vs fp32 trainer; measured ~1e-6
STALE = 1e-2  # what a weight sync must move the log-probs by (random tiny models differ by ~1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="module")
def run_out_of_process(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("vllm_mp"), "--out-of-process")


def run_worker(out: Path, *flags: str):
    """Run vllm_worker.py in the vLLM Python; (results, models, rollouts) from what it saved."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind")  # fmt: skip
    try:
        done = subprocess.run([str(VLLM_PYTHON), str(WORKER), str(out), *flags], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the vLLM worker ran past 300 s:\n{(error.stderr or '')[-3000:]}")
    assert done.returncode == 0, f"the vLLM worker failed:\n{done.stderr[-5000:]}"
    results = json.loads((out / "results.json").read_text())
    models = {name: LlamaForCausalLM.from_pretrained(out / f"model_{name}", dtype=torch.float32)
              for name in ("a", "b")}  # fmt: skip
    rollouts = {name: load_file(out / f"{name}.safetensors") for name in results
                if isinstance(results[name], dict)}  # fmt: skip
    return results, models, rollouts


def trainer_logprobs(model, r, temperature) -> torch.Tensor:
    """(N, T) log-probs of the sampled tokens under `model`, as the trainer computes them."""
    input_ids = torch.cat([r["prompt_ids"], r["response_ids"]], dim=1)
    mask = torch.cat([r["prompt_mask"], r["response_mask"]], dim=1)
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(model, input_ids, mask, r["prompt_ids"].shape[1],
                                        temperature=temperature)  # fmt: skip
    return logprobs


def gap(model, r, temperature=TEMPERATURE) -> float:
    """Largest |sampler - trainer| log-prob over the sampled tokens."""
    diff = (r["sampler_logprobs"] - trainer_logprobs(model, r, temperature)).abs()
    return float(diff[r["response_mask"]].max())


def rows(r) -> list[list[int]]:
    return [
        ids[mask].tolist() for ids, mask in zip(r["response_ids"], r["response_mask"], strict=True)
    ]


@pytest.mark.parametrize(("name", "model", "temperature"),
                         [("a_seed11", "a", TEMPERATURE), ("b_synced", "b", TEMPERATURE),
                          ("b_t1", "b", 1.0)])  # fmt: skip
def test_sampler_logprobs_match_the_trainers_fp32_logprobs(run, name, model, temperature):
    _, models, rollouts = run
    assert gap(models[model], rollouts[name], temperature) < TOL


def test_after_a_sync_the_engine_samples_the_new_weights(run):
    _, models, rollouts = run
    assert gap(models["b"], rollouts["a_seed11"]) > STALE  # stale before the sync
    assert gap(models["b"], rollouts["b_synced"]) < TOL


def test_a_tied_head_synced_without_lm_head_keeps_stale_logprobs(run):
    # Negative control: without `lm_head.weight` vLLM's head keeps model A's embedding.
    _, models, rollouts = run
    assert gap(models["b"], rollouts["b_no_head"]) > STALE


def test_without_a_prefix_cache_reset_cached_prompt_blocks_are_stale(run):
    # Negative control: rows 8-11 have the 40-token prompt, whose first 32-token KV block was
    # computed with B's weights before the sync back to A; the other prompts fill no block.
    _, models, rollouts = run
    r = rollouts["a_stale_cache"]
    diff = (r["sampler_logprobs"] - trainer_logprobs(models["a"], r, TEMPERATURE)).abs()
    diff = diff.masked_fill(~r["response_mask"], 0).amax(dim=1)
    assert float(diff[8:12].min()) > STALE
    assert float(torch.cat([diff[:8], diff[12:]]).max()) < TOL


def test_stops_end_rows_inside_the_mask_and_pad_is_never_sampled(run):
    results, _, rollouts = run
    assert results["pad_redraws"] > 0  # the pad was drawn and redrawn: the rejection path ran
    for name, r in rollouts.items():
        for tokens, reason in zip(rows(r), results[name]["finish_reason"], strict=True):
            assert PAD_ID not in tokens, name
            assert not set(tokens[:-1]) & set(STOP_IDS), name  # nothing after a stop
            if reason == "stop":
                assert tokens[-1] in STOP_IDS, name
            else:
                assert reason == "length" and len(tokens) == MAX_NEW, name
        assert (r["response_ids"][~r["response_mask"]] == PAD_ID).all()
        lengths = r["response_mask"].sum(dim=1)
        # the mask is a prefix of each row: tokens, then padding
        assert (
            r["response_mask"] == (torch.arange(r["response_mask"].shape[1]) < lengths[:, None])
        ).all()
    reasons = [x for name in rollouts for x in results[name]["finish_reason"]]
    assert {"stop", "length"} <= set(reasons)  # both kinds occurred


def test_same_seed_same_tokens_whatever_the_batching(run):
    _, _, rollouts = run
    reference = rows(rollouts["a_seed11"])
    assert rows(rollouts["a_seed11_again"]) == reference
    assert rows(rollouts["a_seed11_head"]) + rows(rollouts["a_seed11_tail"]) == reference
    assert rows(rollouts["a_gen"]) == rows(rollouts["a_gen_again"])
    assert rows(rollouts["a_seed12"]) != reference
    assert len(set(map(tuple, reference[:4]))) > 1  # a group's K samples differ


def test_greedy_takes_the_argmax_without_pad(run):
    # At temperature 0 the pad is banned by a logit bias: the tokens are argmax over the other
    # ids and the log-probs (temperature 1) are renormalised over them (module docstring).
    _, models, rollouts = run
    r = rollouts["b_greedy"]
    input_ids = torch.cat([r["prompt_ids"], r["response_ids"]], dim=1)
    mask = torch.cat([r["prompt_mask"], r["response_mask"]], dim=1)
    p = r["prompt_ids"].shape[1]
    with torch.no_grad():
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = models["b"](input_ids=input_ids, attention_mask=mask.long(),
                             position_ids=positions).logits[:, p - 1 : -1].double()  # fmt: skip
    logits[..., PAD_ID] = -torch.inf
    m = r["response_mask"]
    assert (logits.argmax(-1)[m] == r["response_ids"][m]).all()
    expected = logits.log_softmax(-1).gather(-1, r["response_ids"][..., None])[..., 0]
    assert float((expected - r["sampler_logprobs"].double())[m].abs().max()) < TOL


def test_top_p_below_one_is_refused(run):
    results, _, _ = run
    assert results["top_p_refused"]


def test_out_of_process_engine_leaves_the_trainer_alone_and_syncs(run_out_of_process):
    results, models, rollouts = run_out_of_process
    assert results["rng_untouched"] and results["threads_settable"]
    assert gap(models["a"], rollouts["a_seed11"]) < TOL
    assert gap(models["b"], rollouts["a_seed11"]) > STALE
    assert gap(models["b"], rollouts["b_synced"]) < TOL
