"""`drgrpo experiment lineage`: argument parsing for the experiments (kept out of cli.py)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="multi-run experiments with a report")
    which = p.add_subparsers(dest="which", required=True)
    lin = which.add_parser(
        "lineage",
        help="train every preset from the same base, prompts and seeds; plots, table, summary",
    )
    lin.add_argument("--quick", action="store_true", help="the ~5-minute size")
    lin.add_argument("--output", default="runs/lineage", help="report folder")
    lin.add_argument("--presets", help="comma-separated, e.g. grpo,dr_grpo")
    lin.add_argument("--seeds", type=int, help="seeds per preset")
    lin.add_argument("--steps", type=int, help="RL steps per run")
    lin.add_argument("--no-control", action="store_true", help="skip the continued-SFT control")
    lin.add_argument("overrides", nargs="*", help="section.field=value for every run")


def run(args: argparse.Namespace) -> int:
    from drgrpo.app.experiments.lineage import run_lineage

    presets = [p.strip() for p in args.presets.split(",")] if args.presets else None
    result = run_lineage(args.output, quick=args.quick, presets=presets, seeds=args.seeds,
                         steps=args.steps, overrides=args.overrides,
                         control=not args.no_control)  # fmt: skip
    print(f"report: {args.output}/report/summary.md ({len(result['runs'])} runs)")
    return 0
