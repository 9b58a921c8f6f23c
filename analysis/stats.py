"""Seeded percentile-bootstrap confidence intervals for means over replicates (seeds)."""

from __future__ import annotations

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


def bootstrap_ci(
    values,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Args:
        values: Replicate values; NaNs are dropped.
        level: Coverage of the interval (0.95 gives the 2.5 and 97.5 percentiles).
        resamples: Number of bootstrap resamples.
        seed: Seed of the resampling, so the same values always give the same interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than two values (no spread to resample).
        With very few replicates (2-3 seeds) the interval is coarse: report ``n`` beside it.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_diff_ci(
    values,
    reference,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(values) - mean(reference)`` (independent groups).

    Args:
        values: Replicates of the treatment (e.g. RGB+FFT); NaNs are dropped.
        reference: Replicates of the baseline (e.g. RGB); NaNs are dropped.
        level: Coverage of the interval.
        resamples: Number of bootstrap resamples (each group resampled on its own).
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` unless both groups have at least two values.
    """
    a = np.asarray(values, dtype=float)
    b = np.asarray(reference, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    mean_a = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    mean_b = b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(mean_a - mean_b, [tail, 100.0 - tail])
    return float(low), float(high)
