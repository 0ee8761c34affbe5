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


def print_advantages(out: dict) -> None:
    table = Table(title=f"Advantages for one group with rewards {out['rewards']}")
    table.add_column("preset")
    for i in range(len(out["rewards"])):
        table.add_column(f"A_{i + 1}", justify="right")
    for name, values in out["advantages"].items():
        table.add_row(name, *[f"{a:+.2f}" for a in values])
    console.print(table)
