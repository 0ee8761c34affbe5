"""The default SFT warm start against its budget: time, and held-out accuracy in the RL band.

    python -m benchmarks.sft_budget [--output DIR] [--max-seconds 180] [--band 0.2 0.6]
                                    [--threads N] [field=value ...]

Runs `drgrpo sft --task arithmetic` with every default, prints the timeline of the periodic
checks (step, seconds, training loss, sampled accuracy) and the final evaluation, and exits 1
unless the whole run (training, saving, final evaluation) took at most --max-seconds and the
final held-out sampled accuracy lies in the band: a base policy with partial success, which RL
needs (all-correct or all-wrong groups have zero advantage). Wall time depends on the machine:
the budget is set for 2 CPU cores with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from drgrpo.config import build_sft_config
from drgrpo.sft import run_sft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="model folder (default: a temporary folder)")
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--band", type=float, nargs=2, default=(0.2, 0.6), metavar=("LO", "HI"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="SFT field=value, e.g. stop_accuracy=0.3")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={json.dumps(args.output or tmp)}", f"seed={args.seed}"]
        cfg = build_sft_config(overrides=[*overrides, *args.overrides])
        start = time.perf_counter()
        summary = run_sft(cfg, console=console, progress=False)
        seconds = time.perf_counter() - start
    console.print(_timeline(summary))
    accuracy = summary["eval"]["accuracy"]
    lo, hi = args.band
    verdict = {
        "seconds": round(seconds, 1),
        "loop_seconds": summary["seconds"],
        "train_seconds": summary["train_seconds"],
        "eval_seconds": summary["eval_seconds"],
        "steps": summary["steps"],
        "tokens_per_s": summary["tokens_per_s"],
        "stop_reason": summary["stop_reason"],
        "threads": torch.get_num_threads(),
        "accuracy": accuracy,
        "greedy_accuracy": summary["eval"]["greedy_accuracy"],
        "within_time": seconds <= args.max_seconds,
        "within_band": lo <= accuracy <= hi,
    }
    print(json.dumps(verdict))
    if not verdict["within_time"]:
        print(f"FAIL: {seconds:.0f} s > {args.max_seconds:.0f} s", file=sys.stderr)
    if not verdict["within_band"]:
        print(
            f"FAIL: held-out sampled accuracy {accuracy:.3f} not in [{lo}, {hi}]", file=sys.stderr
        )
    return 0 if verdict["within_time"] and verdict["within_band"] else 1


def _timeline(summary: dict) -> Table:
    table = Table(title="SFT checks (held-out sampled accuracy)")
    for name in ("step", "seconds", "loss", "accuracy"):
        table.add_column(name, justify="right")
    for check in summary["checks"]:
        table.add_row(
            str(check["step"]), f"{check['seconds']:.0f}", f"{check['loss']:.3f}",
            f"{check['accuracy']:.3f}",
        )  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
