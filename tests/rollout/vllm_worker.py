"""Child process of test_vllm.py: runs VLLMRolloutEngine once and saves what it sampled.

Run with a Python that has vLLM (.venv-vllm): `python vllm_worker.py OUT_DIR [--out-of-process]`. vLLM in process
seeds the global RNGs and disables torch.set_num_threads, hence a process of its own. It saves
two tiny tied-embedding Llama folders (A: the engine's start, B: the weights synced in), the
rollouts of each check as `<name>.safetensors` (prompt/response ids and masks, sampler
log-probs) and `results.json` (finish reasons, pad redraws, timings); the parent scores them
with the trainer's log-probs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from drgrpo.models.tiny import build_model
from drgrpo.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from drgrpo.rollout.vllm import VLLMRolloutEngine

STOP_IDS = (EOS_ID, 40)  # EOS and the character "%" (id 40): a set of stop ids, pad not in it
TEMPERATURE = 0.7
MAX_NEW = 24
SIZE = dict(num_hidden_layers=2)


def prompts() -> list[list[int]]:
    """Four groups of four rows; the third prompt (40 tokens) spans a full 32-token KV block."""
    short = [[BOS_ID, 50, 51, 52], [BOS_ID, 60, 61], [BOS_ID] + list(range(50, 89)), [BOS_ID, 70]]
    return [p for p in short for _ in range(4)]


def save(out: Path, name: str, rollouts, results: dict) -> None:
    tensors = {k: getattr(rollouts, k).contiguous() for k in
               ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampler_logprobs")}  # fmt: skip
    save_file(tensors, out / f"{name}.safetensors")
    results[name] = {"finish_reason": rollouts.finish_reason}


def main(out: Path) -> None:
    started = time.perf_counter()
    model_a = build_model("tiny", 100, seed=0, **SIZE)
    model_b = build_model("tiny", 100, seed=1, **SIZE)
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        model.save_pretrained(out / name)
        build_tokenizer().save_pretrained(out / name)
    engine = VLLMRolloutEngine(out / "model_a", stop_token_ids=STOP_IDS, pad_token_id=PAD_ID,
                               dtype="float32", enforce_eager=True, block_size=32,
                               max_model_len=128, seed=0)  # fmt: skip
    results: dict = {"startup_s": time.perf_counter() - started}
    rows = prompts()
    sample = dict(max_new_tokens=MAX_NEW, temperature=TEMPERATURE)

    save(out, "a_seed11", engine.generate(rows, seed=11, **sample), results)
    save(out, "a_seed11_again", engine.generate(rows, seed=11, **sample), results)
    # Split inside the second group: the row offset keeps every row's seed.
    head = engine.generate(rows[:6], seed=11, **sample)
    tail = engine.generate(rows[6:], seed=11, row_offset=6, **sample)
    save(out, "a_seed11_head", head, results)
    save(out, "a_seed11_tail", tail, results)
    for name in ("a_gen", "a_gen_again"):
        save(out, name, engine.generate(rows, generator=torch.Generator().manual_seed(3), **sample),
             results)  # fmt: skip
    save(out, "a_seed12", engine.generate(rows, seed=12, **sample), results)

    engine._send_tied_head = False  # negative control: the head keeps A's embedding
    engine.sync_weights(model_b)
    save(out, "b_no_head", engine.generate(rows, seed=13, **sample), results)
    engine._send_tied_head = True
    synced = time.perf_counter()
    engine.sync_weights(model_b)
    results["sync_s"] = time.perf_counter() - synced
    save(out, "b_synced", engine.generate(rows, seed=14, **sample), results)
    save(out, "b_greedy", engine.generate(rows, temperature=0.0, max_new_tokens=MAX_NEW), results)
    save(out, "b_t1", engine.generate(rows, seed=15, max_new_tokens=MAX_NEW, temperature=1.0),
         results)  # fmt: skip
    # Negative control: back to A without resetting the prefix cache. The 40-token prompt's
    # first 32-token KV block, computed with B, is reused; the short prompts fill no block.
    engine._reset_prefix_cache = False
    engine.sync_weights(model_a)
    save(out, "a_stale_cache", engine.generate(rows, seed=16, **sample), results)
    try:
        engine.generate(rows, seed=1, top_p=0.9, **sample)
        results["top_p_refused"] = False
    except ValueError as error:
        results["top_p_refused"] = "renormalised over the nucleus" in str(error)
    results["pad_redraws"] = engine.pad_redraws
    results["total_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))


def main_out_of_process(out: Path) -> None:
    """`in_process=False`: the trainer's process keeps its RNG and thread count; syncs still work."""
    for name, seed in (("model_a", 0), ("model_b", 1)):
        model = build_model("tiny", 100, seed=seed, **SIZE)
        model.save_pretrained(out / name)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    engine = VLLMRolloutEngine(out / "model_a", stop_token_ids=STOP_IDS, pad_token_id=PAD_ID,
                               dtype="float32", enforce_eager=True, block_size=32,
                               max_model_len=128, seed=0, in_process=False)  # fmt: skip
    results: dict = {"rng_untouched": bool(torch.equal(torch.rand(4), expected))}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    results["threads_settable"] = torch.get_num_threads() == threads + 1
    sample = dict(max_new_tokens=MAX_NEW, temperature=TEMPERATURE)
    save(out, "a_seed11", engine.generate(prompts(), seed=11, **sample), results)
    engine.sync_weights(build_model("tiny", 100, seed=1, **SIZE))
    save(out, "b_synced", engine.generate(prompts(), seed=14, **sample), results)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[2:] == ["--out-of-process"]:
        main_out_of_process(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
