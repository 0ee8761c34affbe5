"""How drgrpo's step time scales: doubling K, B or the response length, and decode cost by position.

    python -m benchmarks.scaling [--size small] [--quick]

Goals (issue 5): doubling K, B or max_new_tokens at most doubles the step time (+10%), and the
per-token decode cost does not grow with position beyond attention's share. Each variant runs
in its own process (as in vs_trl.py), medians over a few steps after a warm-up. The decode
probe times every decode step of one rollout (64 rows, 128 tokens, no row ever stops) and the
attention calls inside each: the cost at the last 16 positions over the first 16, with and
without attention (which reads a KV cache that grows with the position). Writes
benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workers import StepSpec, call_in_subprocess
from drgrpo.models.tiny import MODEL_SIZES

RESULTS = Path(__file__).parent / "results" / "scaling.json"


def time_steps(spec: StepSpec, warmup: int, repeats: int) -> dict:
    """Median step time of drgrpo's RL step, timed exactly as vs_trl.py times it."""
    from benchmarks.vs_trl import Worker

    worker = Worker("drgrpo", spec)
    try:
        for _ in range(warmup):
            worker.step()
        steps = [worker.step() for _ in range(repeats)]
        worker.close()
    finally:
        if worker.proc.is_alive():
            worker.proc.kill()
    lengths = [c for step in steps for _, c in step["rows"]]
    return {"step_s": statistics.median(s["step_s"] for s in steps),
            "len_mean": statistics.fmean(lengths)}  # fmt: skip


def decode_profile(model_dir: str, rows: int, tokens: int, threads: int) -> dict:
    """Seconds of each decode step of one rollout in which no row ever stops, and the seconds
    of attention (scaled_dot_product_attention calls) inside each step."""
    import torch

    from drgrpo.models import load_policy
    from drgrpo.rollout import HFRolloutEngine

    torch.set_num_threads(threads)
    model, tokenizer = load_policy(model_dir)
    # EOS can never be sampled: its logit is -inf through a bias on the head.
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eos_token_id] = -torch.inf
    engine = HFRolloutEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    stamps, attention = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def timed_sdpa(*args, **kwargs):
        t0 = time.perf_counter()
        out = sdpa(*args, **kwargs)
        attention.append((t0, time.perf_counter() - t0))
        return out

    # One stamp per decode step, whatever the head is (a large one is replaced by a transposed
    # copy inside the engine, so a hook on lm_head would never fire).
    sample = engine._sample

    def stamped_sample(*args, **kwargs):
        stamps.append(time.perf_counter())
        return sample(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = timed_sdpa
    engine._sample = stamped_sample
    prompts = [[tokenizer.bos_token_id] + tokenizer.encode("12+34+56=")] * rows
    engine.generate(prompts, max_new_tokens=tokens, seed=0)  # warm-up
    stamps.clear()
    attention.clear()
    engine.generate(prompts, max_new_tokens=tokens, seed=0)
    torch.nn.functional.scaled_dot_product_attention = sdpa
    steps, attn = [], []
    for a, b in zip(stamps, stamps[1:], strict=False):
        steps.append(b - a)
        attn.append(sum(dt for t0, dt in attention if a <= t0 < b))
    return {"step_s": steps, "attention_s": attn, "prompt_len": len(prompts[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=list(MODEL_SIZES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    from rich.console import Console

    from benchmarks.vs_trl import model_folder

    console = Console()
    warmup, repeats = (1, 2) if args.quick else (1, 4)
    folder = model_folder(args.size, Path(tempfile.mkdtemp(prefix="bench-models-")))
    base = dict(prompts=4, group=4, max_new_tokens=32)
    variants = {"base": base, "2K": {**base, "group": 8}, "2B": {**base, "prompts": 8},
                "2T": {**base, "max_new_tokens": 64}}  # fmt: skip
    out: dict = {"size": args.size, "threads": args.threads, "variants": {}}
    for name, v in variants.items():
        spec = StepSpec(model_dir=str(folder), kl_coef=0.04, threads=args.threads, **v)
        out["variants"][name] = {**v, **time_steps(spec, warmup, repeats)}
        console.print(f"{name}: {out['variants'][name]}")
    base_s = out["variants"]["base"]["step_s"]
    for name in ("2K", "2B", "2T"):
        ratio = out["variants"][name]["step_s"] / base_s
        out["variants"][name]["ratio"] = ratio
        out["variants"][name]["goal_met"] = ratio <= 2.2
    rows, tokens = 64, 128
    profile = call_in_subprocess(decode_profile, str(folder), rows, tokens, args.threads)
    steps, attn = profile["step_s"], profile["attention_s"]
    other = [s - a for s, a in zip(steps, attn, strict=True)]

    def growth(xs):  # median of the last 16 steps over the first 16
        return statistics.median(xs[-16:]) / statistics.median(xs[:16])

    out["decode"] = {
        "rows": rows, "tokens": tokens,
        "first16_ms": 1e3 * statistics.median(steps[:16]),
        "last16_ms": 1e3 * statistics.median(steps[-16:]),
        "growth": growth(steps), "growth_without_attention": growth(other),
        "attention_first16_ms": 1e3 * statistics.median(attn[:16]),
        "attention_last16_ms": 1e3 * statistics.median(attn[-16:]),
        "goal_met": growth(other) <= 1.1,
        "step_ms": [round(1e3 * x, 2) for x in steps],
        "attention_ms": [round(1e3 * x, 2) for x in attn],
    }  # fmt: skip
    d = out["decode"]
    console.print(
        f"decode step: {d['first16_ms']:.1f} ms at the first 16 positions, {d['last16_ms']:.1f} ms "
        f"at the last 16 (x{d['growth']:.2f}); attention {d['attention_first16_ms']:.1f} -> "
        f"{d['attention_last16_ms']:.1f} ms; everything else x{d['growth_without_attention']:.2f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
