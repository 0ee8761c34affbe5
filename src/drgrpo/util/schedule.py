"""Learning-rate schedules shared by RL training and SFT (multipliers of the peak lr)."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(
    total_steps: int, warmup: int, schedule: str, *, min_fraction: float = 0.0
) -> Callable[[int], float]:
    """Step i (0-based) -> multiplier: linear warm-up over `warmup` steps, then constant, or
    linear / cosine decay from 1 to `min_fraction` at `total_steps` (and held there after)."""

    def factor(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (i - warmup) / max(1, total_steps - warmup))
        if schedule == "linear":
            return min_fraction + (1.0 - min_fraction) * (1.0 - progress)
        # Written out so that min_fraction=0 is exactly 0.5 * (1 + cos) in floating point.
        return min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
