"""Terminal tables for people (rich). Scripts use --json instead."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def print_length_gradients(out: dict) -> None:
    presets = list(out["per_token_grad"])
    table = Table(
        title=f"One group, K={out['group_size']}, every rollout with A = {out['advantage']:+g}: "
        "|dL/d log pi| (autograd through drgrpo.objective)"
    )
    table.add_column("rollout")
    table.add_column("|y|", justify="right")
    for name in presets:
        table.add_column(f"{name}\nper token", justify="right")
    for name in presets:
        table.add_column(f"{name}\nper rollout", justify="right")
    for i, n in enumerate(out["lengths"]):
        row = [f"y{i + 1}", str(n)]
        row += [f"{out['per_token_grad'][p][i]:.4g}" for p in presets]
        row += [f"{out['per_rollout_grad'][p][i]:.4g}" for p in presets]
        table.add_row(*row)
    console.print(table)
    ratios = out.get("long_to_short_per_token_ratio", {})
    if ratios:
        what = "penalty" if out["advantage"] < 0 else "reinforcement"
        console.print(f"per-token {what}, longest / shortest rollout: "
                      + ", ".join(f"{p} {r:.3g}x" for p, r in ratios.items()))  # fmt: skip


def print_advantages(out: dict) -> None:
    table = Table(title=f"Advantages for one group with rewards {out['rewards']}")
    table.add_column("preset")
    for i in range(len(out["rewards"])):
        table.add_column(f"A_{i + 1}", justify="right")
    for name, values in out["advantages"].items():
        table.add_row(name, *[f"{a:+.2f}" for a in values])
    console.print(table)


def print_summary(summary: dict, out: Console | None = None) -> None:
    """Base vs trained policy on the held-out split, side by side."""
    out = out or console
    base, final = summary["base"], summary["final"]
    table = Table(
        title=f"{summary['preset']}: {summary['steps']} steps in {summary['wall_s']:.0f} s, "
        f"{final.get('num_prompts')} held-out prompts x {final.get('num_samples')} samples"
    )
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("trained", justify="right")
    table.add_column("change", justify="right")
    rows = [("sampled accuracy", "accuracy"), ("greedy accuracy", "greedy_accuracy"),
            ("mean length", "len_mean"), ("length (correct)", "len_correct"),
            ("length (incorrect)", "len_incorrect"), ("truncated", "truncated_frac")]  # fmt: skip
    rows += [(f"pass@{k}", ("pass_at_k", k)) for k in final.get("pass_at_k", {})]
    for label, key in rows:
        b, f = _get(base, key), _get(final, key)
        change = f"{f - b:+.3f}" if b is not None and f is not None else "-"
        table.add_row(label, _num(b), _num(f), change)
    out.print(table)


def _get(result: dict, key):
    if isinstance(key, tuple):
        return result.get(key[0], {}).get(key[1])
    return result.get(key)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_eval_table(result: dict) -> Table:
    """An `evaluate` result as a two-column table for the terminal."""
    table = Table(title=f"eval: {result['num_prompts']} prompts x {result['num_samples']} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("accuracy", result["accuracy"]),
        ("greedy_accuracy", result["greedy_accuracy"]),
        *((f"pass@{k}", v) for k, v in result["pass_at_k"].items()),
        ("len_mean", result["len_mean"]),
        ("len_correct", result["len_correct"]),
        ("len_incorrect", result["len_incorrect"]),
        ("truncated_frac", result["truncated_frac"]),
        ("reward_errors", result.get("reward_errors")),
        ("reward_timeouts", result.get("reward_timeouts")),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else f"{value:.4g}")
    return table
