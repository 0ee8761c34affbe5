"""Rollout tokens/s: VLLMRolloutEngine against HFRolloutEngine, same CPU, same model, same work.

    python -m benchmarks.vllm_vs_hf [--configs tiny,small] [--prompts 8] [--k 8]
                                    [--max-new-tokens 128] [--repeats 3] [--threads 2] [--rounds 2]

Each engine runs in a process of its own: HF in this Python, vLLM in .venv-vllm (`make
vllm-venv`, or DRGRPO_VLLM_PYTHON). Both load the same random-init model folder (fp32) and
sample the same B prompts x K samples at temperature 1, stop id EOS, pad never sampled, with
the same torch/OpenMP thread count. One warm-up call, then `repeats` timed `generate` calls;
tokens/s = sampled tokens (EOS included) / wall seconds of a call; the median and the best call
over two rounds in flipped order (each a fresh process) are reported. A
random model rarely samples EOS, so nearly every row runs to max_new_tokens in both engines.
Writes benchmarks/results/vllm_vs_hf.json (with the load average before and after, since the
machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "vllm_vs_hf.json"
VLLM_PYTHON = Path(os.environ.get("DRGRPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


def prompts(n_prompts: int, k: int) -> list[list[int]]:
    """B arithmetic prompts ("<bos>12+34="), each K times in a row (a group)."""
    from drgrpo.models.tokenizer import BOS_ID, build_tokenizer

    tokenizer = build_tokenizer()
    texts = [f"{10 + 7 * i}+{23 + 5 * i}=" for i in range(n_prompts)]
    return [[BOS_ID] + tokenizer.encode(t) for t in texts for _ in range(k)]


def time_engine(engine: str, model_dir: str, spec: dict) -> dict:
    """Build one engine, warm it up, time `repeats` calls (runs in the engine's own process)."""
    import torch

    from drgrpo.models.tokenizer import EOS_ID, PAD_ID

    started = time.perf_counter()
    if engine == "hf":
        from drgrpo.models import load_policy
        from drgrpo.rollout import HFRolloutEngine

        torch.set_num_threads(spec["threads"])
        model, _ = load_policy(model_dir)
        rollout = HFRolloutEngine(model, EOS_ID, PAD_ID)
    else:
        from drgrpo.rollout.vllm import VLLMRolloutEngine

        rollout = VLLMRolloutEngine(model_dir, stop_token_ids=[EOS_ID], pad_token_id=PAD_ID,
                                    dtype="float32", enforce_eager=spec["enforce_eager"],
                                    max_model_len=512, seed=0)  # fmt: skip
    startup_s = time.perf_counter() - started
    rows = prompts(spec["prompts"], spec["k"])
    calls = []
    for i in range(1 + spec["repeats"]):
        start = time.perf_counter()
        out = rollout.generate(rows, max_new_tokens=spec["max_new_tokens"], temperature=1.0,
                               seed=100 + i)  # fmt: skip
        seconds = time.perf_counter() - start
        calls.append({"s": seconds, "tokens": int(out.response_mask.sum())})
    timed = calls[1:]
    return {"startup_s": startup_s, "threads": torch.get_num_threads(), "calls": timed,
            "tokens_per_s": statistics.median(c["tokens"] / c["s"] for c in timed)}  # fmt: skip


def run_in(python: Path, engine: str, model_dir: str, spec: dict, timeout: int = 900) -> dict:
    """`time_engine` in a fresh process of `python`, through a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
                   OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1",
                   VLLM_CPU_KVCACHE_SPACE="2", VLLM_CPU_OMP_THREADS_BIND="nobind")  # fmt: skip
        args = [str(python), "-m", "benchmarks.vllm_vs_hf", "--worker", engine, model_dir,
                json.dumps(spec), str(out)]  # fmt: skip
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{engine} worker failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small", help="model sizes (models/tiny.py)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2, choices=(1, 2))
    parser.add_argument("--compile", action="store_true", help="vLLM without enforce_eager")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        engine, model_dir, spec, out = args.worker
        Path(out).write_text(json.dumps(time_engine(engine, model_dir, json.loads(spec))))
        return
    if not VLLM_PYTHON.exists():
        sys.exit(f"no vLLM Python at {VLLM_PYTHON}: run `make vllm-venv` or set DRGRPO_VLLM_PYTHON")

    from drgrpo.models.tiny import build_model
    from drgrpo.models.tokenizer import build_tokenizer

    spec = dict(prompts=args.prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                repeats=args.repeats, threads=args.threads, enforce_eager=not args.compile)  # fmt: skip
    results = {"spec": spec, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "configs": {}}  # fmt: skip
    for size in args.configs.split(","):
        with tempfile.TemporaryDirectory() as model_dir:
            build_model(size, 100).save_pretrained(model_dir)
            build_tokenizer().save_pretrained(model_dir)
            # Two rounds in flipped order (HF, vLLM, vLLM, HF): neither engine always runs
            # first, and a burst of load elsewhere shows up as a gap between the rounds.
            runs = {"hf": [], "vllm": []}
            for engine in ("hf", "vllm", "vllm", "hf")[: 2 * args.rounds]:
                python = Path(sys.executable) if engine == "hf" else VLLM_PYTHON
                runs[engine].append(run_in(python, engine, model_dir, spec))
        entry = {}
        for engine, engine_runs in runs.items():
            rates = [c["tokens"] / c["s"] for run in engine_runs for c in run["calls"]]
            entry[engine] = {"runs": engine_runs, "tokens_per_s_median": statistics.median(rates),
                             "tokens_per_s_best": max(rates)}  # fmt: skip
        entry["vllm_over_hf_median"] = (entry["vllm"]["tokens_per_s_median"]
                                        / entry["hf"]["tokens_per_s_median"])  # fmt: skip
        entry["vllm_over_hf_best"] = (entry["vllm"]["tokens_per_s_best"]
                                      / entry["hf"]["tokens_per_s_best"])  # fmt: skip
        results["configs"][size] = entry
        print(f"{size}: HF {entry['hf']['tokens_per_s_median']:.0f} tok/s, vLLM "
              f"{entry['vllm']['tokens_per_s_median']:.0f} tok/s (median; "
              f"{entry['vllm_over_hf_median']:.2f}x, best {entry['vllm_over_hf_best']:.2f}x), "
              f"vLLM startup {entry['vllm']['runs'][0]['startup_s']:.1f} s", flush=True)  # fmt: skip
    results["loadavg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
