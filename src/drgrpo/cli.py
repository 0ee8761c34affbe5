"""The `drgrpo` command: parse, build a config, call the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from drgrpo import __version__


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not values:
        raise argparse.ArgumentTypeError("the list is empty: give e.g. 1,1,1,0")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if not values:
        raise argparse.ArgumentTypeError("the list is empty: give e.g. 10,100")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return values


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="the lesson's numbers, computed through the real objective")
    which = p.add_subparsers(dest="what", required=True)
    lengths = which.add_parser("lengths", help="per-token gradient for rollouts of given lengths")
    lengths.add_argument("--lengths", type=_ints, default=[10, 100], help="e.g. 10,100")
    lengths.add_argument("--advantage", type=float, default=0.5)
    lengths.add_argument("--json", action="store_true", help="print one JSON object")
    lengths.add_argument("--plot", metavar="FILE.png", help="draw the per-token gradient sweep")
    adv = which.add_parser("advantages", help="the advantages each preset gives one group")
    adv.add_argument("--rewards", type=_floats, default=[1, 1, 1, 0], help="e.g. 1,1,1,0")
    adv.add_argument("--json", action="store_true")
    formula = which.add_parser("formula", help="print a preset's resolved objective")
    formula.add_argument("preset", nargs="?", default="dr_grpo")
    formula.add_argument("overrides", nargs="*", help="knob=value, e.g. clip_eps_high=0.28")


def _run_explain(args: argparse.Namespace) -> int:
    from drgrpo import explain, report

    if args.what == "lengths":
        grads = explain.length_gradients(args.lengths, args.advantage)
        out = {"group_size": len(args.lengths), "lengths": args.lengths,
               "advantage": args.advantage, **grads}  # fmt: skip
        if args.json:
            print(json.dumps(out))
        else:
            report.print_length_gradients(out)
        if args.plot:
            explain.plot_length_sweep(min(args.lengths), args.advantage, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    elif args.what == "advantages":
        out = {"rewards": args.rewards, "advantages": explain.group_advantages(args.rewards)}
        if args.json:
            print(json.dumps(out))
        else:
            report.print_advantages(out)
    else:
        from drgrpo.config import build_config

        overrides = [f"objective.{o}" for o in args.overrides]
        print(_formula(build_config(preset=args.preset, overrides=overrides).objective))
    return 0


def _formula(spec) -> str:
    from drgrpo.objective import render_formula

    return render_formula(spec)


COMMANDS = {"explain": (_add_explain, _run_explain)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drgrpo", description="Dr.GRPO and its lineage: RL on verifiable rewards."
    )
    parser.add_argument("--version", action="version", version=f"drgrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"drgrpo {args.command}: error: {e}", file=sys.stderr)
        return 2
