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


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="RL-train a policy on a verifiable task (default: the built-in demo run)",
        description="Fields can be overridden as section.field=value, e.g. "
        "objective.clip_eps_high=0.28 rollout.group_size=4 optim.lr=1e-4. "
        "See --help-config for every field.",
    )
    p.add_argument("overrides", nargs="*", help="section.field=value")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--preset", help="reinforce | ppo | grpo | rloo | dapo | dr_grpo")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("--help-config", action="store_true", help="print every config field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_train(args: argparse.Namespace) -> int:
    from drgrpo.config import build_config, describe_fields

    if args.help_config:
        print(describe_fields())
        return 0
    if args.resume:
        from pathlib import Path

        saved = Path(args.resume) / "config.json"
        if not saved.is_file():
            raise ValueError(f"--resume {args.resume}: no config.json there; is it a run folder?")
        cfg = build_config(saved, preset=args.preset, overrides=args.overrides)
        if Path(cfg.output_dir).resolve() != Path(args.resume).resolve():
            cfg = build_config(saved, preset=args.preset,
                               overrides=[*args.overrides, f"output_dir={args.resume}"])  # fmt: skip
    else:
        cfg = build_config(args.config, preset=args.preset, overrides=args.overrides)
    from drgrpo.train.loop import TrainingError
    from drgrpo.train.trainer import train

    try:
        train(cfg, resume=bool(args.resume), progress=not args.no_progress)
    except TrainingError as e:
        print(f"drgrpo train: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot a run's metrics (RUN_DIR/plots/training.png)")
    p.add_argument("run_dir")
    p.add_argument("--output", help="image path (default RUN_DIR/plots/training.png)")


def _run_plot(args: argparse.Namespace) -> int:
    from drgrpo.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "train": (_add_train, _run_train),
    "plot": (_add_plot, _run_plot),
}


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
