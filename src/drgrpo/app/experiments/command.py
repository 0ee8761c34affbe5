"""`drgrpo experiment lineage | length`: argument parsing for the experiments (kept out of cli.py)."""

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
    ln = which.add_parser(
        "length",
        help="the length effect: long runs, seeds, two task settings, intervals and tests",
    )
    ln.add_argument("--quick", action="store_true", help="a ~2-minute size (checks the wiring)")
    ln.add_argument("--output", default="runs/length", help="report folder")
    ln.add_argument("--settings", help="comma-separated: main,slip (default both)")
    ln.add_argument("--presets", help="comma-separated, default grpo,dr_grpo,dapo")
    ln.add_argument("--seeds", type=int, help="seeds per preset (default 3)")
    ln.add_argument("--steps", type=int, help="RL steps per run (default 300)")
    ln.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    ln.add_argument("--no-control", action="store_true", help="skip the continued-SFT control")
    ln.add_argument("overrides", nargs="*", help="section.field=value for every run")


def run(args: argparse.Namespace) -> int:
    if args.which == "length":
        return _length(args)
    from drgrpo.app.experiments.lineage import run_lineage

    presets = [p.strip() for p in args.presets.split(",")] if args.presets else None
    result = run_lineage(args.output, quick=args.quick, presets=presets, seeds=args.seeds,
                         steps=args.steps, overrides=args.overrides,
                         control=not args.no_control)  # fmt: skip
    print(f"report: {args.output}/report/summary.md ({len(result['runs'])} runs)")
    return 0


def _length(args: argparse.Namespace) -> int:
    from drgrpo.app.experiments.length import run_length

    def listed(text: str | None) -> list[str] | None:
        return [p.strip() for p in text.split(",")] if text else None

    report = run_length(args.output, quick=args.quick, settings=listed(args.settings),
                        presets=listed(args.presets), seeds=args.seeds, steps=args.steps,
                        jobs=args.jobs, overrides=args.overrides,
                        control=not args.no_control)  # fmt: skip
    print(f"report: {args.output}/report/summary.md ({report['wall_s'] / 60:.1f} min)")
    return 0
