"""The `drgrpo` command: parse, build a config, call the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from drgrpo import __version__
from drgrpo.app import eval_command
from drgrpo.app.experiments import command as experiment_command


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty: give e.g. 1,1,1,0")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
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
    from drgrpo.app import explain, tables

    if args.what == "lengths":
        grads = explain.length_gradients(args.lengths, args.advantage)
        out = {"group_size": len(args.lengths), "lengths": args.lengths,
               "advantage": args.advantage, **grads}  # fmt: skip
        if args.json:
            print(json.dumps(out))
        else:
            tables.print_length_gradients(out)
        if args.plot:
            explain.plot_length_sweep(min(args.lengths), args.advantage, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    elif args.what == "advantages":
        out = {"rewards": args.rewards, "advantages": explain.group_advantages(args.rewards)}
        if args.json:
            print(json.dumps(out))
        else:
            tables.print_advantages(out)
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
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in output_dir and start again")  # fmt: skip
    p.add_argument("--help-config", action="store_true", help="print every config field")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the formula, the first prompt as text and "
                   "token ids, and the memory estimate; then exit")  # fmt: skip
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
    from rich.console import Console

    if args.dry_run:
        from drgrpo.app.dry_run import dry_run

        dry_run(cfg)
        return 0
    from drgrpo.train.rl_step import TrainingError
    from drgrpo.train.trainer import train

    console = Console()
    try:
        summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite,
                        progress=not args.no_progress, console=console)  # fmt: skip
    except TrainingError as e:
        print(f"drgrpo train: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    _report_run(summary, console)
    return 0


def _report_run(summary: dict, console) -> None:
    """The summary table and the plots of a finished run."""
    from drgrpo.app.tables import print_summary

    print_summary(summary, console)
    try:
        from drgrpo.app.plot import plot_run

        console.print(f"plots: {plot_run(summary['run_dir'])}")
    except ImportError:
        console.print("plots skipped: pip install 'drgrpo[plot]' for matplotlib")


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot a run's metrics (RUN_DIR/plots/training.png)")
    p.add_argument("run_dir")
    p.add_argument("--output", help="image path (default RUN_DIR/plots/training.png)")


def _run_plot(args: argparse.Namespace) -> int:
    from drgrpo.app.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


def _add_sft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft",
        help="supervised warm start of the built-in model on a task's solution traces",
        description="Fields can be overridden as field=value, e.g. lr=1e-3 batch_size=32 "
        "'task.options={k_max: 4}'. The defaults stop at a base policy with partial success.",
    )
    p.add_argument("overrides", nargs="*", help="field=value")
    p.add_argument("--config", help="YAML file of SFT fields")
    p.add_argument("--task", help="arithmetic | countdown | math")
    p.add_argument("--output", help="folder of the trained model (output_dir)")
    p.add_argument("--size", choices=("tiny", "small"), help="built-in model size")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--help-config", action="store_true", help="print every SFT config field")


def _run_sft(args: argparse.Namespace) -> int:
    from drgrpo.config import SFTConfig, build_sft_config, field_docs

    if args.help_config:
        defaults = SFTConfig().to_dict()
        for name, doc in field_docs(SFTConfig).items():
            print(f"  {name} = {defaults[name]!r}\n      {doc}")
        return 0
    flags = {
        "task.name": args.task,
        "output_dir": args.output,
        "size": args.size,
        "seed": args.seed,
    }
    # JSON is YAML: a quoted value stays a string (an --output of "123" is not an int).
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = build_sft_config(args.config, [*overrides, *args.overrides])
    from rich.console import Console

    from drgrpo.app.tables import format_eval_table
    from drgrpo.sft import run_sft

    console = Console()
    try:
        summary = run_sft(cfg, console=console, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    console.print(format_eval_table(summary["eval"]))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a run's checkpoint as a standard Hugging Face folder")
    p.add_argument("checkpoint", help="checkpoints/step-NNNNNN, or a run folder (its newest)")
    p.add_argument("output", help="folder to write (config, safetensors, generation_config, "
                   "tokenizer)")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="cast the weights (default: as trained, float32)")  # fmt: skip


def _run_export(args: argparse.Namespace) -> int:
    from drgrpo.train.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.output, dtype=args.dtype))
    return 0


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "train": (_add_train, _run_train),
    "plot": (_add_plot, _run_plot),
    "sft": (_add_sft, _run_sft),
    "eval": (eval_command.add_parser, eval_command.run),
    "export": (_add_export, _run_export),
    "experiment": (experiment_command.add_parser, experiment_command.run),
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
