"""Peak memory of one RL step: rollout chunking and gradient checkpointing (issue 12's goals).

    python -m benchmarks.memory            # writes benchmarks/results/memory.json

Each measurement is one drgrpo step in a fresh child process (peak RSS is per process, and a
child starts from nothing), on an untrained model of the benchmark sizes, CPU fp32:
- wide-vocab-128 (V=151,936, 128 new tokens) at 2 and 8 prompts x 8 samples, both with
  rollout.chunk_rows=16 and optim.micro_batch_size=16: the step's peak should grow with the
  chunk and the micro-batch, not with prompts x samples (goal: 4x the prompts within 1.2x);
- small-128 at 8 prompts x 8 samples (micro-batches of 16 rows) with and without
  model.gradient_checkpointing (goal: the training peak at least 2x lower).
Peak RSS is a memory measure, robust to a busy CPU (unlike timings); the step's "training
peak" is the RSS growth during the update over the RSS before it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import tempfile
from pathlib import Path

from benchmarks.vs_trl import model_folder

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
CHUNK, MICRO = ["rollout.chunk_rows=16"], ["optim.micro_batch_size=16"]
CASES = {
    "wide-vocab-128, 2 prompts, chunk 16": ("wide-vocab", 2, 128, [*CHUNK, *MICRO]),
    "wide-vocab-128, 8 prompts, chunk 16": ("wide-vocab", 8, 128, [*CHUNK, *MICRO]),
    "wide-vocab-128, 8 prompts, no chunk": ("wide-vocab", 8, 128, MICRO),
    "small-128, 8 prompts": ("small", 8, 128, ["optim.micro_batch_size=16"]),
    "small-128, 8 prompts, gradient checkpointing": (
        "small", 8, 128, ["optim.micro_batch_size=16", "model.gradient_checkpointing=true"]),
}  # fmt: skip


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _one_step(model_dir: str, prompts: int, tokens: int, extra: list[str], out) -> None:
    import torch
    from rich.console import Console

    torch.set_num_threads(2)
    from drgrpo.config import build_config
    from drgrpo.train import rl_step as step_module
    from drgrpo.train.run import build_run

    work = tempfile.mkdtemp(prefix="bench-memory-")
    cfg = build_config(overrides=[
        f"model.base={model_dir}", "model.device=cpu", f"output_dir={work}",
        f"rollout.prompts_per_step={prompts}", "rollout.group_size=8",
        f"rollout.max_new_tokens={tokens}", "monitor_kl=false", "checkpoint_every=0",
        "log_samples_every=0", "no_eos_patience=1000000", *extra,
    ])  # fmt: skip
    run = build_run(cfg, resume=False, console=Console(quiet=True))
    marks = {}
    real_updates = step_module.run_updates

    def measured(*args, **kwargs):
        marks["before_update_mb"], marks["peak_before_update_mb"] = _current_mb(), _rss_mb()
        return real_updates(*args, **kwargs)

    step_module.run_updates = measured
    metrics = step_module.rl_step(run, 1)
    out.put(
        {
            **marks,
            "peak_mb": _rss_mb(),
            "rows": prompts * 8,
            "response_tokens": metrics["rollout/len_mean"] * prompts * 8,
        }
    )


def measure(name: str, work: Path) -> dict:
    size, prompts, tokens, extra = CASES[name]
    folder = str(model_folder(size, work))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_one_step, args=(folder, prompts, tokens, extra, queue))
    child.start()
    result = queue.get(timeout=1800)
    child.join(timeout=60)
    result["rollout_peak_mb"] = result["peak_before_update_mb"]
    result["training_growth_mb"] = result["peak_mb"] - result["before_update_mb"]
    return result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-models-"))
    results = {}
    for name in CASES:
        results[name] = measure(name, work)
        print(name, json.dumps({k: round(v, 1) for k, v in results[name].items()}), flush=True)
    wide = [results[f"wide-vocab-128, {p} prompts, chunk 16"]["peak_mb"] for p in (2, 8)]
    plain, ckpt = (
        results[n]["training_growth_mb"]
        for n in ("small-128, 8 prompts", "small-128, 8 prompts, gradient checkpointing")
    )
    results["goals"] = {
        "chunked step peak, 4x prompts": {"ratio": wide[1] / wide[0], "goal": "<= 1.2"},
        "training growth without / with checkpointing": {"ratio": plain / ckpt, "goal": ">= 2"},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["goals"], indent=2))


if __name__ == "__main__":
    main()
