"""Confidence intervals for evaluation metrics."""

from __future__ import annotations

import numpy as np


def bootstrap_interval(
    values: list[float], resamples: int, seed: int = 0, level: float = 0.95
) -> list[float]:
    """[lo, hi]: the percentile bootstrap interval of the mean of `values` (Efron 1979): resample
    the values with replacement `resamples` times, take the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled means."""
    if not values:
        raise ValueError("no values to bootstrap")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]
