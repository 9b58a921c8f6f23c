"""Configurations and their replicates in a frame of runs (``analysis.runs.load_runs``).

Which columns of the frame are config params and which are metrics; which params define a
configuration (all but those replicates differ in: the seed, the record's axes label and
``bnn.config.NOT_HASHED``, where outputs go and how a run is executed); and the replicates of one
configuration folded into one row with mean, std and a seeded bootstrap interval per quality
metric (``group_replicates``). A missing metric is one ``KeyError`` listing the quality metrics
the runs do have (``require_metrics``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci
from bnn.config import NOT_HASHED
from studies import record
from studies.record import COST_METRICS, RUN_COLUMNS

# Params that do not define a configuration: replicates differ only in these.
REPLICATE_EXCLUDE = (record.PARAM_SEED, record.PARAM_AXES, *sorted(NOT_HASHED))
_SPREADS = ("_std", "_ci_low", "_ci_high", "_count")  # columns beside a quality metric


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The config params of a frame from ``load_runs`` (``attrs["params"]``, else inferred)."""
    names = frame.attrs.get("params")
    if names is None:
        metrics = set(metric_columns(frame))
        names = [c for c in frame.columns if c not in RUN_COLUMNS and c not in metrics]
    return [c for c in names if c in frame.columns]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The final metrics of a frame from ``load_runs`` (``attrs["metrics"]``, else inferred)."""
    names = frame.attrs.get("metrics")
    if names is None:
        names = [
            c
            for c in frame.columns
            if c.startswith(("val_", "test_"))
            or c in COST_METRICS
            or c in ("best_epoch", "skipped_images")
        ]
    return [c for c in names if c in frame.columns]


def quality_metrics(frame: pd.DataFrame) -> list[str]:
    """The ``val_*``/``test_*`` metric columns of a frame, without their spreads, CIs and counts
    (what an error about a missing metric lists as the choices)."""
    return [
        c for c in frame.columns if c.startswith(("val_", "test_")) and not c.endswith(_SPREADS)
    ]


def require_metrics(frame: pd.DataFrame, columns, what: str = "") -> None:
    """Raises ``KeyError`` naming the ``columns`` the frame lacks and the quality metrics it has.

    Args:
        frame: Runs or configuration rows.
        columns: Columns the caller needs.
        what: The caller's name (``"results_table"``) to start the message with.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        there = f"metrics there: {quality_metrics(frame) or 'none'}"
        if what:
            raise KeyError(f"{what} needs metric(s) {missing}, which the runs do not have; {there}")
        raise KeyError(f"the runs have no {missing}; {there}")


def replicate_keys(frame: pd.DataFrame) -> list[str]:
    """Params that define a configuration: all but seed, axes label and ``NOT_HASHED`` (output
    dir, device, workers, ...)."""
    return [c for c in param_columns(frame) if c not in REPLICATE_EXCLUDE]


def _join(values) -> str:
    return ",".join(
        str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))
    )


def _shadowed_interval(metric: str, metrics: list[str]) -> bool:
    """Whether ``metric`` is a run's interval (``<m>_ci_low``/``_ci_high``) of an aggregated
    quality metric ``<m>``, whose seed-bootstrap interval columns have the same names."""
    for end in ("_ci_low", "_ci_high"):
        base = metric.removesuffix(end)
        if base != metric and base in metrics and base.startswith(("val_", "test_")):
            return True
    return False


def group_replicates(
    frame: pd.DataFrame,
    by: list[str] | None = None,
    metrics: list[str] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Replicates (seeds) of the same configuration folded into one row.

    Args:
        frame: From ``load_runs``.
        by: Columns that identify a configuration; default ``replicate_keys`` (every param but
            the seed, the axes label and ``bnn.config.NOT_HASHED``).
        metrics: Metrics to aggregate; default every final metric.
        level: Coverage of the bootstrap interval.
        resamples: Bootstrap resamples.
        seed: Seed of the bootstrap (the same frame always gives the same intervals).

    Returns:
        One row per configuration, in order of first appearance: the ``by`` columns, the
        descriptive columns (``model``, ``family``, ``binary``, ``data``, ``synthetic``,
        ``study``), ``n`` (replicates), ``seeds``, ``run_ids`` and ``cell_ids`` (comma-joined),
        and per metric ``<metric>`` (mean over replicates, NaNs skipped); quality metrics
        (``val_*``, ``test_*``) also get ``<metric>_std`` (sample std, NaN for n = 1),
        ``<metric>_ci_low`` and ``<metric>_ci_high`` (percentile bootstrap of the mean over
        seeds, NaN for n < 2). A run's own interval over images (``test_accuracy_ci_low`` as the
        runner logs it) has the name of that column: it is left out when its metric is
        aggregated (read it from the runs). ``attrs`` carries over, plus ``grouped_by``.
    """
    keys = list(by) if by is not None else replicate_keys(frame)
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise KeyError(f"group_replicates: no column(s) {missing}; columns: {list(frame.columns)}")
    metrics = list(metrics) if metrics is not None else metric_columns(frame)
    metrics = [m for m in metrics if not _shadowed_interval(m, metrics)]
    descriptive = [
        c
        for c in ("model", "family", "binary", "data", "synthetic", "study", "stale")
        if c in frame.columns and c not in keys
    ]

    rows = []
    grouped = frame.groupby(keys, dropna=False, sort=False) if keys else [((), frame)]
    for key, group in grouped:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        for column in descriptive:
            row[column] = group[column].iloc[0]
        row["n"] = len(group)
        row["seeds"] = _join(group["seed"]) if "seed" in group else ""
        row["run_ids"] = _join(group["run_id"]) if "run_id" in group else ""
        row["cell_ids"] = _join(group["cell_id"]) if "cell_id" in group else ""
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            finite = values[~np.isnan(values)]
            row[metric] = finite.mean() if finite.size else np.nan
            if metric.startswith(("val_", "test_")):
                row[f"{metric}_std"] = finite.std(ddof=1) if finite.size > 1 else np.nan
                low, high = bootstrap_ci(finite, level=level, resamples=resamples, seed=seed)
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows.append(row)
    out = pd.DataFrame(rows)
    for key in keys:  # keep the dtypes of the key columns (bool stays bool, ints stay ints)
        if key in out and len(out):
            out[key] = out[key].astype(frame[key].dtype)
    out.attrs.update(frame.attrs)
    out.attrs["grouped_by"] = keys
    return out


def is_grouped(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` comes from ``group_replicates``."""
    return "grouped_by" in frame.attrs


def as_grouped(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` if it is grouped already, else ``group_replicates(frame)`` with its defaults."""
    return frame if is_grouped(frame) else group_replicates(frame)
