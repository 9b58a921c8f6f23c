"""Pareto fronts: which configurations no other one beats on every objective.

``nondominated`` is the one non-domination test, for any number of objectives each minimised or
maximised; ``pareto_front`` (a (cost, quality) pair) and ``pareto_set`` (a study's objectives,
``frame.attrs["objectives"]``) are built on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DIRECTIONS = ("maximize", "minimize")


def nondominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the rows no other row dominates; rows with a NaN objective are excluded.

    Row ``j`` dominates row ``i`` when it is no worse on every objective and strictly better on
    at least one, so identical rows are all kept and a row that only ties another on some
    objectives and loses on the rest is dropped.

    Args:
        values: Objective values, shape (n points, k objectives).
        maximize: Per objective, True when higher is better; length k.

    Returns:
        Boolean mask, shape (n,).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"values of shape {values.shape} for {len(maximize)} objective(s)")
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    v = values * signs  # every objective now minimised
    valid = ~np.isnan(v).any(axis=1)
    v = v[valid]
    no_worse = (v[None, :, :] <= v[:, None, :]).all(axis=2)  # [i, j]: j no worse than i anywhere
    better = (v[None, :, :] < v[:, None, :]).any(axis=2)  # [i, j]: j better than i somewhere
    dominated = (no_worse & better).any(axis=1)
    mask = np.zeros(len(values), dtype=bool)
    mask[np.flatnonzero(valid)[~dominated]] = True
    return mask


def _check(frame: pd.DataFrame, columns, what: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise KeyError(f"{what}: no column {column!r}; columns: {list(frame.columns)}")


def pareto_set(frame: pd.DataFrame, objectives: Sequence, by: list[str] | None = None) -> pd.Series:
    """Which rows no other row beats on all ``objectives`` at once (any number, any directions).

    Args:
        frame: One row per run (``load_runs``) or per configuration (``group_replicates``).
        objectives: ``frame.attrs["objectives"]`` entries (``{"metric": ..., "direction":
            "maximize" | "minimize"}``) or ``(metric, direction)`` pairs.
        by: Replicate handling as in ``pareto_front``: the set is computed on group means.

    Returns:
        Boolean Series aligned with ``frame.index``, named ``pareto``. Rows with a NaN objective
        are never in the set; identical rows are all in it.

    Raises:
        KeyError: An objective or ``by`` column is missing.
        ValueError: No objective, or a direction other than maximize/minimize.
    """
    pairs = [(o["metric"], o["direction"]) if isinstance(o, dict) else tuple(o) for o in objectives]
    if not pairs:
        raise ValueError("pareto_set: no objective")
    bad = [d for _, d in pairs if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"pareto_set: direction {bad[0]!r}; valid: {', '.join(DIRECTIONS)}")
    metrics = [m for m, _ in pairs]
    _check(frame, [*metrics, *(by or [])], "pareto_set")
    if by:
        group = frame.groupby(by, dropna=False, sort=False).ngroup()
        means = frame[metrics].groupby(group).mean()
        in_set = pareto_set(means, pairs)
        return group.map(in_set).astype(bool).rename("pareto")
    mask = nondominated(frame[metrics].to_numpy(dtype=float), [d == "maximize" for _, d in pairs])
    return pd.Series(mask, index=frame.index, name="pareto")


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
            the front is marked (e.g. ``by=analysis.replicates.replicate_keys(frame)``).

    Returns:
        Boolean Series aligned with ``frame.index`` (``frame[mask]`` is the front). Rows with a
        NaN cost or quality are never on the front; identical points are all on it.

    Raises:
        KeyError: A column is missing (the message lists the columns there are).
    """
    _check(frame, (cost, quality, *(by or [])), "pareto_front")
    directions = [
        (cost, "minimize" if minimize_cost else "maximize"),
        (quality, "maximize" if maximize_quality else "minimize"),
    ]
    return pareto_set(frame, directions, by)


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


def staircase(
    frame: pd.DataFrame, x: str, y: str, mask: pd.Series, maximize_x: bool = False
) -> tuple[pd.DataFrame, str]:
    """A 2-D front as a staircase: its points sorted by ``x`` and matplotlib's ``step(where=)``.

    The line bounds the region the front dominates, whatever the directions: with ``x``
    minimised a front point's ``y`` holds until the next point (``"post"``), with ``x``
    maximised from the previous one (``"pre"``).
    """
    points = frame.loc[mask, [x, y]].drop_duplicates()
    points = points.sort_values([x, y]).reset_index(drop=True)
    return points, "pre" if maximize_x else "post"
