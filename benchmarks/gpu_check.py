"""drgrpo on a GPU, one command: generation, one FSDP2 Dr.GRPO step, sampler/trainer mismatch,
weight sync and DCP checkpoints, on random-init Qwen2.5-0.5B / 1.5B-shaped models (nothing is
downloaded). On a CPU, `--size tiny` runs the same code paths in seconds (the test does).

    PYTHONUNBUFFERED=1 PYTHONPATH=src timeout 500 python3 benchmarks/gpu_check.py --out $OUT
    PYTHONPATH=src python benchmarks/gpu_check.py --size tiny --out /tmp/check    # CPU

Per size, in this order (benchmarks/gpu_check_items.py has each item's exact method):
  generation_fast / generation_hf  tokens/s of HFRolloutEngine, its fast stepper / the model's
                  own forward, 64 rows x 256 new tokens in the run's dtype (bf16 on CUDA), no
                  reachable stop id, so every row samples exactly 256 tokens (counted, checked)
  mismatch        the engine's sampling log-probs against the trainer's of the same tokens
                  (the FSDP2 root in bf16, and the float32 master): mean / max |diff|, k3
                  mismatch KL, by response length
  fsdp_step       one Dr.GRPO optimizer step under FSDP2 (world size 1, bf16 compute, float32
                  master and reduction, AdamW), median of 2 after a warm-up, and its MFU
  weight_sync     full_state_dict from the shards into the engine's plain copy (via host, and
                  on the device), checked equal
  checkpoint      DCP save and load of model + AdamW state, time and size, checked equal
  vllm            only where vLLM is importable (it is not on the lent H200; else recorded
                  skipped): drgrpo's VLLMRolloutEngine tokens/s, mismatch and sync_weights

MFU = model FLOPs / (step seconds x measured matmul FLOP/s in the run's dtype). Model FLOPs
(benchmarks/flops.py): 3 x the forward's matmul FLOPs, i.e. 6 x (weights a token multiplies by)
x tokens for forward + backward (Kaplan et al. 2020, eq. 2.2) plus causal attention, 12 x layers
x q_dim x (k + 1) for the token at position k (PaLM, Chowdhery et al. 2022, appendix B, which
counts the full T instead of k + 1); the head only at response positions; each group's shared
prompt once (`mfu`), or every row's (`mfu_rowwise`, the usual convention).

Guard: after `--deadline-s` (default 480) the items left are recorded as skipped, and so is any
item that, scaled from its time at the previous size, would end past it; an out-of-memory item
is recorded as "oom" and the run goes on. The JSON is rewritten after every item, so a run
killed by its timeout keeps what it finished.

Needs only torch, transformers, tokenizers, safetensors, numpy and pyyaml (drgrpo.config imports
yaml; drgrpo's rich is not imported on these paths, tqdm only by transformers itself), all on
the lent H200's image: nothing has to be carried.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; never wait on a network
ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT):  # drgrpo from this checkout, and the benchmarks package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

NEEDED = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "yaml")
VERSIONS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pyyaml", "peft",
            "vllm")  # fmt: skip
ITEMS = ("generation_fast", "generation_hf", "mismatch", "fsdp_step", "weight_sync",
         "checkpoint", "vllm")  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", help="comma-separated sizes: qwen2.5-0.5b, qwen2.5-1.5b, tiny "
                   "(default: both Qwen sizes on CUDA, tiny on CPU)")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--deadline-s", type=float, default=480.0, help="skip items after this")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="engine and compute dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--workload",
        choices=("auto", "gpu", "tiny"),
        default="auto",
        help="rows and lengths (auto: tiny for --size tiny, else gpu)",
    )
    p.add_argument("--checkpoint-dir", help="where DCP checkpoints are written (default: temp)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check_imports() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"gpu_check needs {missing}: install them, or on a machine without a registry "
                 "carry them as wheels (/work/.library/device/README.md, Notes)")  # fmt: skip


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(torch, device) -> dict:
    if device.type != "cuda":
        return {"type": "cpu", "name": platform.processor() or platform.machine(), "slug": "cpu",
                "threads": torch.get_num_threads(), "cpus": os.cpu_count()}  # fmt: skip
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "slug": re.sub(r"[^a-z0-9]+", "-",
            props.name.lower()).strip("-"), "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30, "cuda": torch.version.cuda,
            "nccl": str(torch.cuda.nccl.version())}  # fmt: skip


def init_group(torch, device) -> str:
    """A world-size-1 process group (FSDP2 and DCP need one): NCCL on CUDA, gloo on CPU, over
    an in-memory store, so neither torchrun nor a free port is needed."""
    import torch.distributed as dist

    os.environ.setdefault("LOCAL_RANK", "0")  # drgrpo's world() reads it for the CUDA device
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    return backend


class Runner:
    """Runs items under the deadline, records each one's status and seconds, saves the JSON."""

    def __init__(self, results: dict, path: Path, deadline_s: float, torch, device):
        self.results, self.path, self.deadline_s = results, path, deadline_s
        self.torch, self.device = torch, device
        self.start = time.monotonic()
        self.last: dict[str, tuple[float, int]] = {}  # item -> (seconds, parameters) last size

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self, where: dict, name: str, fn, parameters: int = 0):
        """`where[name]` = fn()'s dict plus status ("ok" | "skipped" | "oom" | "error") and
        seconds. Returns fn()'s dict, or None when it did not run to the end."""
        if name in self.last and parameters:
            seconds, before = self.last[name]
            expected = seconds * parameters / before
        else:
            expected = 0.0
        if self.elapsed() + expected > self.deadline_s:
            where[name] = {"status": "skipped", "reason": f"deadline {self.deadline_s:.0f} s: "
                           f"{self.elapsed():.0f} s elapsed, ~{expected:.0f} s expected"}  # fmt: skip
            self.save()
            return None
        began = time.monotonic()
        value = None
        try:
            value = fn()
            record = {"status": "ok"} | value
        except getattr(self.torch, "OutOfMemoryError", self.torch.cuda.OutOfMemoryError) as error:
            record = {"status": "oom", "error": str(error).splitlines()[0]}
        except Exception as error:  # one broken item must not lose the others' numbers
            record = {"status": "error", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        record["item_s"] = time.monotonic() - began
        if record["status"] == "ok" and parameters:
            self.last[name] = (record["item_s"], parameters)
        where[name] = record
        if record["status"] != "ok":
            self.free()
        print(f"[{self.elapsed():6.1f} s] {name}: {record['status']} ({record['item_s']:.1f} s)",
              flush=True)  # fmt: skip
        self.save()
        return value if record["status"] == "ok" else None

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def run_size(runner: Runner, entry: dict, size: str, args, torch, device, dtype, work) -> None:
    from benchmarks import gpu_check_items as I
    from benchmarks.gpu_check_vllm import vllm_engine  # vLLM itself is imported only inside

    holder = {}

    def build():
        holder["s"] = I.Session(size, device, dtype, work, args.seed)
        return holder["s"].describe()

    entry["items"] = items = {}
    if runner.run(entry, "build", build) is None:
        for name in ITEMS:
            items[name] = {"status": "skipped", "reason": "the models were not built"}
        return
    s = holder["s"]
    built = entry.pop("build")
    entry["build_s"] = built.pop("item_s")
    entry.update({k: v for k, v in built.items() if k != "status"})
    matmul = runner.results.get("matmul", {})
    tflops = matmul.get("tflops") if matmul.get("status") == "ok" else None
    steps = {
        "generation_fast": lambda: I.generation(s, fast=True),
        "generation_hf": lambda: I.generation(s, fast=False),
        "mismatch": lambda: I.mismatch(s),
        "fsdp_step": lambda: I.fsdp_step(s, tflops),
        "weight_sync": lambda: I.weight_sync(s),
        "checkpoint": lambda: I.checkpoint(s, args.checkpoint_dir),
        "vllm": lambda: vllm_engine(s, args.checkpoint_dir),
    }
    for name, fn in steps.items():
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            items[name] = {"status": "skipped", "reason": "vLLM is not importable here"}
            continue
        runner.run(items, name, fn, parameters=s.parameters)
    holder.clear()  # the models go when this frame does (the caller frees the cache)


def main(argv=None) -> int:
    args = parse(argv)
    check_imports()
    import torch

    from benchmarks import gpu_check_items as I
    from benchmarks import gpu_check_models as M

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.dtype]  # fmt: skip
    sizes = (args.size or ("qwen2.5-0.5b,qwen2.5-1.5b" if cuda else "tiny")).split(",")
    for size in sizes:
        M.build_config(size)  # an unknown size fails here, before anything runs
    info = device_info(torch, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{info['slug']}.json"
    results = {"schema": 1, "started_utc": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "argv": sys.argv[1:], "device": info,
               "versions": versions(), "dtype": str(dtype).removeprefix("torch."),
               "deadline_s": args.deadline_s, "sizes": {}, "complete": False}  # fmt: skip
    runner = Runner(results, path, args.deadline_s, torch, device)
    try:
        results["backend"] = init_group(torch, device)
    except Exception as error:  # no process group: no FSDP2 or DCP item could run
        results["backend_error"] = f"{type(error).__name__}: {error}"
        runner.save()
        print(f"could not start the process group: {error}; wrote {path}", flush=True)
        return 1
    runner.run(results, "matmul", lambda: I.matmul_rate(device, dtype))
    for size in sizes:
        workload = args.workload if args.workload != "auto" else "tiny" if size == "tiny" else "gpu"
        results["sizes"][size] = entry = {"workload_name": workload}
        run_size(runner, entry, size, args, torch, device, dtype, M.WORKLOADS[workload])
        runner.free()
    results["complete"] = True
    runner.save()
    if "vllm" not in sys.modules:  # vLLM tears its groups down at exit, the default one last
        torch.distributed.destroy_process_group()
    print_table(results)
    print(f"wrote {path}")
    return 0


def print_table(results: dict) -> None:
    def get(items, name, key, fmt="{:.3g}"):
        item = items.get(name, {})
        if item.get("status") != "ok":
            return item.get("status", "-")
        value = item
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None else fmt.format(value)

    m = results.get("matmul", {})
    print(f"\n{results['device']['name']}, {results['dtype']}, torch {results['versions']['torch']}"
          f", transformers {results['versions']['transformers']}, matmul "
          f"{m.get('tflops', float('nan')):.1f} TFLOP/s ({m.get('status')})")  # fmt: skip
    head = ("size", "params", "gen fast tok/s", "gen hf tok/s", "step s", "MFU",
            "mean|d|", "max|d|", "k3", "sync host s", "sync dev s", "ckpt save/load s", "GiB")  # fmt: skip
    print(" | ".join(head))
    for size, entry in results["sizes"].items():
        it = entry.get("items", {})
        mis = "mismatch", "vs_fsdp2_trainer."
        row = (size, f"{entry.get('parameters', 0) / 1e6:.0f}M",
               get(it, "generation_fast", "tokens_per_s", "{:.0f}"),
               get(it, "generation_hf", "tokens_per_s", "{:.0f}"),
               get(it, "fsdp_step", "seconds"), get(it, "fsdp_step", "mfu", "{:.1%}"),
               get(it, mis[0], mis[1] + "mean_abs"), get(it, mis[0], mis[1] + "max_abs"),
               get(it, mis[0], mis[1] + "k3_mean"),
               get(it, "weight_sync", "via_host.total_s"), get(it, "weight_sync", "on_device.total_s"),
               get(it, "checkpoint", "save_s") + " / " + get(it, "checkpoint", "load_s"),
               get(it, "checkpoint", "gib"))  # fmt: skip
        print(" | ".join(row))


if __name__ == "__main__":
    sys.exit(main())
