"""Pareto fronts of any (cost, quality) pair: which configurations no other one beats on both."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _nondominated(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Mask of points no other point dominates, both axes to be minimised; NaN points excluded.

    ``j`` dominates ``i`` when it is no worse on both axes and strictly better on one, so identical
    points are all kept and a point of equal cost but worse quality is dropped.
    """
    valid = ~(np.isnan(cost) | np.isnan(quality))
    c, q = cost[valid], quality[valid]
    no_worse = (c[None, :] <= c[:, None]) & (q[None, :] <= q[:, None])  # [i, j]: j no worse than i
    better = (c[None, :] < c[:, None]) | (q[None, :] < q[:, None])
    dominated = (no_worse & better).any(axis=1)
    mask = np.zeros(len(cost), dtype=bool)
    mask[np.flatnonzero(valid)[~dominated]] = True
    return mask


def pareto_front(
    frame: pd.DataFrame,
    cost: str = "ops",
    quality: str = "test_accuracy",
    minimize_cost: bool = True,
    maximize_quality: bool = True,
    by: list[str] | None = None,
) -> pd.Series:
    """Which rows lie on the Pareto front of ``cost`` against ``quality``.

    Args:
        frame: One row per run (``load_runs``) or per configuration (``group_replicates``).
        cost: Column to keep low (``ops``, ``params``, ``bops``, ``storage_bytes``, ...).
        quality: Column to keep high (``test_accuracy``, ``test_auc``, ...).
        minimize_cost: False when higher ``cost`` is better.
        maximize_quality: False when lower ``quality`` is better (e.g. ``test_eer``).
        by: Replicate handling: when given, the front is computed on the group means of
            ``cost`` and ``quality`` over rows sharing these columns, and every row of a group on
            the front is marked (e.g. ``by=analysis.runs.replicate_keys(frame)``).

    Returns:
        Boolean Series aligned with ``frame.index`` (``frame[mask]`` is the front). Rows with a
        NaN cost or quality are never on the front; identical points are all on it.

    Raises:
        KeyError: A column is missing (the message lists the columns there are).
    """
    for column in (cost, quality, *(by or [])):
        if column not in frame.columns:
            raise KeyError(f"pareto_front: no column {column!r}; columns: {list(frame.columns)}")
    if by:
        group = frame.groupby(by, dropna=False, sort=False).ngroup()
        means = frame[[cost, quality]].groupby(group).mean()
        on_front = pareto_front(means, cost, quality, minimize_cost, maximize_quality)
        return group.map(on_front).astype(bool).rename("pareto")
    c = frame[cost].to_numpy(dtype=float)
    q = frame[quality].to_numpy(dtype=float)
    c = c if minimize_cost else -c
    q = -q if maximize_quality else q
    return pd.Series(_nondominated(c, q), index=frame.index, name="pareto")


def front_steps(
    frame: pd.DataFrame,
    cost: str = "ops",
    quality: str = "test_accuracy",
    mask: pd.Series | None = None,
) -> pd.DataFrame:
    """The front's points sorted by cost (for drawing it as a staircase), duplicates dropped."""
    mask = pareto_front(frame, cost, quality) if mask is None else mask
    points = frame.loc[mask, [cost, quality]].drop_duplicates()
    return points.sort_values([cost, quality], ascending=[True, False]).reset_index(drop=True)
