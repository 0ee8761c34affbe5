"""The measurements of benchmarks/gpu_check.py, one function per item, on drgrpo's own code
paths: `HFRolloutEngine` (rollout/hf.py, its fast stepper rollout/hf_fast.py), log-probs through
the FSDP2 `LogprobModel` root (models/forward.py), the optimizer step's building blocks
(train/update.py), and FSDP2 sharding, full-state gathers and DCP checkpoints (train/sharded.py).

Each item returns a JSON-ready dict. A `Session` holds one size's models: the trainer's float32
master (sharded by FSDP2 on first use, mixed precision in the run's dtype) and a plain copy in
the run's dtype that the rollout engine samples from, the way a colocated engine holds its own
weights and receives the trainer's after each update.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import gpu_check_models as M


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> dict:
    """The best rate of an n x n x n `torch.mm` on random data (2 n^3 FLOPs each), over 5
    rounds of `inner` products: the ceiling MFU is measured against."""
    n, inner = (8192, 20) if device.type == "cuda" else (1024, 3)
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty_like(a)
    for _ in range(2):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync(device)
        rates.append(2 * n**3 * inner / (time.perf_counter() - start))
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": max(rates) / 1e12,
            "tflops_rounds": [r / 1e12 for r in rates]}  # fmt: skip


class Session:
    """One size's models, tokenizer and prompts; `root()` shards the master on first use."""

    def __init__(self, size: str, device: torch.device, dtype: torch.dtype, work, seed: int):
        self.size, self.device, self.dtype, self.work, self.seed = size, device, dtype, work, seed
        self.master = M.build_model(size, device, seed)  # float32: the trainer's master weights
        self.config = self.master.config
        self.engine_model = copy.deepcopy(self.master).to(dtype).eval()  # the rollout engine's
        self.tokenizer = M.build_tokenizer(self.config.vocab_size)
        self.prompt_ids = M.prompt_ids(self.tokenizer, work, seed)
        self.parameters = sum(p.numel() for p in self.master.parameters())  # tied head once
        self._root = self._optimizer = None

    def root(self):
        """The FSDP2 `LogprobModel` root over the master (drgrpo.train.sharded.shard_model)."""
        if self._root is None:
            from drgrpo.train.sharded import shard_model

            mixed = None if self.dtype == torch.float32 else self.dtype
            self._root = shard_model(self.master, param_dtype=mixed)
        return self._root

    def reshard(self) -> None:
        """Put the root's own parameters (embedding, final norm) back in their shards. FSDP2
        never reshards the root after a forward (its backward would gather them again), so after
        a no-grad forward `root.parameters()` are the gathered plain tensors, not the DTensor
        parameters: an optimizer built then, or a DCP save, would hold the wrong objects."""
        if self._root is not None:
            self._root.reshard()

    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self.reshard()
            self._optimizer = torch.optim.AdamW(self.root().parameters(), lr=1e-6,
                                                weight_decay=0.0)  # fmt: skip
        return self._optimizer

    def describe(self) -> dict:
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "tie_word_embeddings", "max_position_embeddings")  # fmt: skip
        config = {k: getattr(self.config, k) for k in keys}
        rope = getattr(self.config, "rope_parameters", None) or {}  # transformers 5 keeps it here
        config["rope_theta"] = rope.get("rope_theta", getattr(self.config, "rope_theta", None))
        return {"config": config, "parameters": self.parameters,
                "workload": vars(self.work) | {"rows": self.work.rows}}  # fmt: skip


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def generation(s: Session, fast: bool) -> dict:
    """Sampling tokens/s of `HFRolloutEngine` on the engine's copy. The only stop id is the
    vocabulary size, an id no row can sample, so every row runs to `new_tokens` and the count
    (checked) is rows x new_tokens; the pad is never sampled (the engine bans it)."""
    from drgrpo.rollout.hf import HFRolloutEngine
    from drgrpo.rollout.hf_fast import LlamaStepper

    w, unreachable = s.work, s.config.vocab_size
    engine = HFRolloutEngine(s.engine_model, [unreachable], M.PAD_ID, fast_decode=fast)
    engine.generate(s.prompt_ids, max_new_tokens=min(8, w.new_tokens), seed=s.seed)  # warm-up
    reset_peak(s.device)
    seconds, rates = [], []
    for i in range(w.repeats):
        sync(s.device)
        start = time.perf_counter()
        out = engine.generate(s.prompt_ids, max_new_tokens=w.new_tokens, seed=s.seed + 1 + i)
        sync(s.device)
        seconds.append(time.perf_counter() - start)
        tokens = int(out.response_mask.sum())
        if tokens != w.rows * w.new_tokens or set(out.finish_reason) != {"length"}:
            raise RuntimeError(f"expected {w.rows} x {w.new_tokens} tokens, got {tokens}")
        rates.append(tokens / seconds[-1])
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
            "seconds_runs": seconds, "tokens": w.rows * w.new_tokens, "rows": w.rows,
            "new_tokens": w.new_tokens, "prompt_len": w.prompt_len,
            "fast_stepper": fast and LlamaStepper.supports(s.engine_model),
            "includes": "prefill + decode + sampling, one generate() call",
            "peak_gib": peak_gib(s.device)}  # fmt: skip


def mismatch_stats(sampler: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor) -> dict:
    """Sampler vs trainer log-probs of the same tokens, (N, T) each, `mask` the sampled tokens.

    d = trainer - sampler per token; k3 = exp(d) - d - 1, whose mean over the sampler's own
    samples estimates KL(sampler || trainer) (objective/correction.py). By response length
    (quarters of the longest possible), with |sum_t d| per row: the log sequence-level
    importance weight, which grows with length (why Dr.GRPO needs the geometric level).
    """
    from drgrpo.objective import mismatch_kl_per_token

    sampler, trainer, mask = sampler.double(), trainer.double(), mask.bool()
    d = (trainer - sampler).masked_fill(~mask, 0.0)  # (N, T)
    k3 = mismatch_kl_per_token(trainer, sampler, mask)  # (N, T)
    lengths, t = mask.sum(dim=1), mask.shape[1]

    def summary(rows: torch.Tensor) -> dict:
        m = mask[rows]
        tokens = int(m.sum())
        if tokens == 0:
            return {"rows": int(rows.sum()), "tokens": 0}
        return {"rows": int(rows.sum()), "tokens": tokens,
                "mean_abs": float(d[rows].abs().sum() / tokens),
                "max_abs": float(d[rows].abs().max()),
                "k3_mean": float(k3[rows].sum() / tokens),
                "seq_log_ratio_abs_mean": float(d[rows].sum(dim=1).abs().mean())}  # fmt: skip

    buckets = {}
    for q in range(4):
        lo, hi = q * t // 4, (q + 1) * t // 4
        buckets[f"{lo + 1}-{hi}"] = summary((lengths > lo) & (lengths <= hi))
    return summary(lengths > 0) | {"by_length": buckets}


def mismatch(s: Session) -> dict:
    """Rollouts from the engine's copy (fast stepper), then the log-probs of the same tokens
    from the trainer: through the FSDP2 root in the run's dtype (what a drgrpo step computes as
    old log-probs) and, before sharding, through the float32 master (the exact policy).

    A stop set of V / (T/2) ids makes a near-uniform random-init sampler stop with chance
    ~2/T a token, so lengths spread over 1..T (a geometric law cut at T)."""
    from drgrpo.models.logprobs import sequence_logprobs
    from drgrpo.rollout.hf import HFRolloutEngine

    w, v = s.work, s.config.vocab_size
    stops = range(M.FIRST_WORD_ID, M.FIRST_WORD_ID + max(1, round(v / (w.new_tokens / 2))))
    engine = HFRolloutEngine(s.engine_model, stops, M.PAD_ID, fast_decode=True)
    out = engine.generate(s.prompt_ids, max_new_tokens=w.new_tokens, seed=s.seed + 100)
    out = out.to(s.device)
    args = (out.input_ids, out.attention_mask, out.response_start)
    result = {"stop_ids": len(stops), "rows": w.rows,
              "mean_length": float(out.response_lengths.float().mean()),
              "sampler": f"HFRolloutEngine fast stepper, {s.dtype}"}  # fmt: skip
    with torch.no_grad():
        if s._root is None:  # the plain master still exists: the exact float32 policy
            exact, _ = sequence_logprobs(s.master, *args)
            result["vs_fp32_master"] = mismatch_stats(out.sampler_logprobs, exact,
                                                      out.response_mask)  # fmt: skip
        trainer, _ = sequence_logprobs(s.root(), *args)
    s.reshard()
    result["vs_fsdp2_trainer"] = mismatch_stats(out.sampler_logprobs, trainer, out.response_mask)
    return result


def fsdp_step(s: Session, matmul_tflops: float | None) -> dict:
    """One Dr.GRPO optimizer step under FSDP2, as `run_updates` does it for one mini-batch:
    the normalizer from the whole batch, forward/backward per micro-batch, the global gradient
    norm clipped to 1, AdamW. Timed after one warm-up step; MFU against the measured matmul."""
    from benchmarks.flops import Arch, rl_step_flops
    from drgrpo.train import distributed as D
    from drgrpo.train.update import accumulate_gradients, normalizer_for

    w, root, optimizer = s.work, s.root(), s.optimizer()
    spec, batch = M.step_batch(s.config, w, s.device, s.seed + 200)

    def step() -> dict:
        optimizer.zero_grad(set_to_none=True)
        z = normalizer_for(spec, batch, max_tokens=w.new_tokens)
        totals = accumulate_gradients(root, batch, spec, z, micro_batch_size=w.micro_batch)
        totals["grad_norm"] = D.clip_grad_norm(root, 1.0)
        optimizer.step()
        return totals

    reset_peak(s.device)
    seconds = []
    try:
        for _ in range(1 + w.repeats):
            sync(s.device)
            start = time.perf_counter()
            totals = step()
            sync(s.device)
            seconds.append(time.perf_counter() - start)
    finally:  # an out-of-memory step must not leave its gradients to the next items
        optimizer.zero_grad(set_to_none=True)
    if not all(math.isfinite(totals[k]) for k in ("loss", "grad_norm")):
        raise RuntimeError(f"the step's loss or gradient norm is not finite: {totals}")
    arch = Arch.from_config(s.config)
    rows = [(w.prompt_len, w.new_tokens)] * w.rows
    flops = rl_step_flops(arch, rows, with_reference=False, group=w.k).train
    flops_rowwise = rl_step_flops(arch, rows, with_reference=False, group=1).train
    median = statistics.median(seconds[1:])
    rate = None if matmul_tflops is None else matmul_tflops * 1e12

    def mfu(f):
        return None if rate is None else f / (median * rate)

    return {"seconds": median, "seconds_runs": seconds[1:], "first_step_s": seconds[0],
            "tokens": w.rows * (w.prompt_len + w.new_tokens), "response_tokens": int(totals["tokens"]),
            "micro_batch": w.micro_batch, "model_flops": flops, "mfu": mfu(flops),
            "model_flops_rowwise": flops_rowwise, "mfu_rowwise": mfu(flops_rowwise),
            "loss": totals["loss"], "grad_norm": totals["grad_norm"],
            "objective": "dr_grpo (group-mean baseline, no std, sum / constant N), on-policy",
            "optimizer": "AdamW (master float32), grad clip 1.0", "peak_gib": peak_gib(s.device)}  # fmt: skip


def _copy_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The engine's parameters (a tied head once) from a full state dict (cast to its dtype)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state[name], non_blocking=True)


def _max_diff(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return max(float((p.float() - state[n].to(p.device, p.dtype).float()).abs().max())
                   for n, p in model.named_parameters())  # fmt: skip


def _perturb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def weight_sync(s: Session) -> dict:
    """The trainer's weights into the engine's copy, as a colocated engine receives them:
    (a) drgrpo's `full_state_dict` (gathered from the FSDP2 shards to host memory, what the HF
    export writes), then copied in; (b) gathered on the device (no host offload), copied in.
    Checked: the engine's weights are moved by +1 before each path, and afterwards it holds
    exactly the trainer's weights in its dtype (so every weight was written)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from drgrpo.train.sharded import full_state_dict

    root, dev = s.root(), s.device
    s.reshard()
    _perturb(s.engine_model)
    sync(dev)
    start = time.perf_counter()
    state = full_state_dict(root)
    gathered = time.perf_counter()
    _copy_into(s.engine_model, state)
    sync(dev)
    done = time.perf_counter()
    host = {"gather_s": gathered - start, "copy_s": done - gathered, "total_s": done - start}
    equal_host = _max_diff(s.engine_model, state)
    bytes_ = sum(t.numel() * t.element_size() for t in state.values())
    del state
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    _perturb(s.engine_model)
    sync(dev)
    start = time.perf_counter()
    state = get_model_state_dict(root.model, options=options)
    sync(dev)
    gathered = time.perf_counter()
    _copy_into(s.engine_model, state)
    sync(dev)
    done = time.perf_counter()
    device_path = {"gather_s": gathered - start, "copy_s": done - gathered, "total_s": done - start}
    equal_device = _max_diff(s.engine_model, state)
    return {"via_host": host, "on_device": device_path, "master_bytes": bytes_,
            "max_abs_diff_after_sync": max(equal_host, equal_device)}  # fmt: skip


def _optimizer_tensors(optimizer) -> list[torch.Tensor]:
    """Every optimizer state tensor (local shards), in a fixed order, copied where it is."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for _, value in sorted(optimizer.state.get(p, {}).items()):
                if torch.is_tensor(value):
                    local = value.to_local() if hasattr(value, "to_local") else value
                    out.append(local.detach().clone())
    return out


def checkpoint(s: Session, folder: str | None) -> dict:
    """DCP save and load (drgrpo.train.sharded.save_checkpoint / load_checkpoint) of the
    sharded model and its AdamW state. Between them every weight and moment is moved by +1,
    so the load must restore them: checked against the saved values (max |diff| 0)."""
    from drgrpo.train.sharded import full_state_dict, load_checkpoint, save_checkpoint

    root, optimizer, dev = s.root(), s.optimizer(), s.device
    s.reshard()
    # Cloned: on a CPU run the "offloaded" state dict aliases the live parameters.
    saved = {k: v.clone() for k, v in full_state_dict(root).items()}
    saved_moments = _optimizer_tensors(optimizer)
    where = Path(tempfile.mkdtemp(prefix="drgrpo-gpu-check-", dir=folder))
    try:
        sync(dev)
        start = time.perf_counter()
        save_checkpoint(where / "ckpt", root, optimizer, {"step": 1})
        sync(dev)
        save_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (where / "ckpt").rglob("*") if f.is_file())
        with torch.no_grad():
            for p in root.parameters():
                p.add_(1.0)
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value) and value.dim() > 0:
                        value.add_(1.0)
        moved = full_state_dict(root)
        perturbed = max(float((moved[k] - saved[k]).abs().max()) for k in saved)
        del moved
        sync(dev)
        start = time.perf_counter()
        load_checkpoint(where / "ckpt", root, optimizer)
        sync(dev)
        load_s = time.perf_counter() - start
    finally:
        shutil.rmtree(where, ignore_errors=True)
    loaded = full_state_dict(root)
    moments = _optimizer_tensors(optimizer)
    return {"save_s": save_s, "load_s": load_s, "bytes": size, "gib": size / 2**30,
            "optimizer_state_tensors": len(saved_moments),
            "perturbed_max_abs_diff": perturbed,
            "loaded_max_abs_diff": max(float((loaded[k] - saved[k]).abs().max()) for k in saved),
            "optimizer_max_abs_diff": max((float((a - b).abs().max()) for a, b
                                           in zip(moments, saved_moments, strict=True)), default=0.0),
            "folder": "a temporary folder under " + (folder or tempfile.gettempdir())}  # fmt: skip
