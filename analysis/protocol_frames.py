"""The evaluation protocol's metrics of a study as tidy frames, for its tables and figures.

Besides ``val_*``/``test_*``, a cell's run carries the scalars of ``bnn.protocol`` and
``bnn.train.test_extra_scalars``:

    source_<source>_{accuracy,auc,count}             per source of the own test split
    eval_<set>_<metric>                              per extra test set (``evaluate:``)
    eval_<set>_source_<source>_{accuracy,auc,count}  per source of an extra set
    robust_<key>_<metric>                            the test split under a perturbation
                                                     (``robustness:``, key as ``jpeg_75``)

and the artifact of its per-image test predictions (``analysis.runs.load_predictions``). This module
finds which of them a study has and shapes them per configuration (seeds folded: mean and sample
std). The prefixes are ``bnn.protocol``'s, perturbation severities ``bnn.data.perturb``'s and the
reliability curve ``bnn.metrics``'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.replicates import group_replicates, is_grouped
from bnn.data.perturb import CHAIN, Perturbation, from_key, kind_order
from bnn.metrics import expected_calibration_error, reliability_curve
from bnn.protocol import EVAL_PREFIX, ROBUST_PREFIX, SOURCE_PREFIX

OWN_TEST = "test"  # the cell's own test split, as a test-set name in the frames here
# Calibration and operating points of a split (``bnn.metrics.Metrics``), in table order.
CALIBRATION_METRICS = (
    "ece",
    "brier",
    "accuracy",
    "accuracy_valthr",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_0p1pct",
)
RELIABILITY_BINS = 15


def _present(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def _metric_names(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(c, str)]


# --- what the study has -----------------------------------------------------------------------


def extra_test_sets(frame: pd.DataFrame) -> list[str]:
    """Names of the extra test sets the runs were evaluated on (``eval_<set>_*``), sorted.

    A set is a name with both ``eval_<set>_accuracy`` and ``eval_<set>_ece`` (per-source metrics
    have no ECE, so ``eval_<set>_source_<x>_accuracy`` is never taken for a set).
    """
    names = set()
    for column in _metric_names(frame):
        if column.startswith(EVAL_PREFIX) and column.endswith("_ece"):
            name = column[len(EVAL_PREFIX) : -len("_ece")]
            if _present(frame, f"{EVAL_PREFIX}{name}_accuracy"):
                names.add(name)
    return sorted(names)


def evaluated_sets(frame: pd.DataFrame) -> list[str]:
    """``OWN_TEST`` (when the runs have ``test_accuracy``) and then the extra test sets."""
    own = [OWN_TEST] if _present(frame, "test_accuracy") else []
    return own + extra_test_sets(frame)


def metric_column(test_set: str, metric: str) -> str:
    """``test_auc`` for the own split, ``eval_<set>_auc`` for an extra set."""
    return f"test_{metric}" if test_set == OWN_TEST else f"{EVAL_PREFIX}{test_set}_{metric}"


def _source_prefix(test_set: str) -> str:
    return SOURCE_PREFIX if test_set == OWN_TEST else f"{EVAL_PREFIX}{test_set}_{SOURCE_PREFIX}"


def source_column(test_set: str, source: str, metric: str) -> str:
    """``source_<source>_<metric>`` or ``eval_<set>_source_<source>_<metric>``."""
    return f"{_source_prefix(test_set)}{source}_{metric}"


def sources(frame: pd.DataFrame, test_set: str = OWN_TEST) -> list[tuple[str, bool]]:
    """The sources of a test set as ``(source, is_fake)``: real sources first, then generators,
    each sorted. A source is fake when it has an AUC (fakes ranked against the set's reals)."""
    prefix = _source_prefix(test_set)
    found = []
    for column in _metric_names(frame):
        if column.startswith(prefix) and column.endswith("_count") and _present(frame, column):
            source = column[len(prefix) : -len("_count")]
            if _present(frame, f"{prefix}{source}_accuracy"):
                found.append((source, f"{prefix}{source}_auc" in frame.columns))
    return sorted(found, key=lambda item: (item[1], item[0]))


@dataclass(frozen=True)
class RobustKey:
    """One perturbation of the record (``robust_<key>_*``), read back from its key by
    ``bnn.data.perturb.from_key`` (the kind that wrote the key parses it).

    Attributes:
        key: As in the metric names (``jpeg_75``, ``resize_0p5``, ``chain_social``).
        kind: A ``bnn.data.perturb`` kind (or the key's first word if unknown).
        level: The kind's level (JPEG quality, blur sigma, resize scale); NaN for a chain.
        severity: ``bnn.data.perturb.Perturbation.severity`` (JPEG 100 - quality, blur sigma,
            resize 1 / scale); NaN for a chain or an unknown kind.
    """

    key: str
    kind: str
    level: float
    severity: float

    @property
    def name(self) -> str:
        """A chain's name (``social``); else empty."""
        return self.key.removeprefix(f"{CHAIN}_") if self.kind == CHAIN else ""

    def _perturbation(self) -> Perturbation | None:
        return from_key(self.key)

    def tick(self) -> str:
        """Short level: ``q75``, ``σ1``, ``×0.5``, the chain's name (the kind's ``tick``)."""
        perturbation = self._perturbation()
        return perturbation.tick() if perturbation is not None else (self.name or self.key)

    def label(self) -> str:
        """``JPEG q75``, ``blur σ1``, ``resize ×0.5``, ``chain social`` (the kind's ``label``)."""
        perturbation = self._perturbation()
        if perturbation is not None:
            return perturbation.label()
        return f"{CHAIN} {self.name}" if self.kind == CHAIN else self.key


def _robust_key(key: str) -> RobustKey:
    perturbation = from_key(key)
    if perturbation is None:
        return RobustKey(key, key.partition("_")[0], math.nan, math.nan)
    return RobustKey(key, perturbation.kind, float(perturbation.level), perturbation.severity)


def robustness_keys(frame: pd.DataFrame) -> list[RobustKey]:
    """The perturbations of the runs (a ``robust_<key>_auc`` or ``_accuracy`` present), ordered by
    kind (``bnn.data.perturb.kind_order``: JPEG, WebP, blur, resize, chains; unknown kinds last),
    each by growing severity, then by key."""
    keys = set()
    for column in _metric_names(frame):
        if column.startswith(ROBUST_PREFIX) and _present(frame, column):
            for metric in ("_auc", "_accuracy"):
                if column.endswith(metric):
                    keys.add(column[len(ROBUST_PREFIX) : -len(metric)])
    parsed = [_robust_key(k) for k in keys]
    rank = {kind: i for i, kind in enumerate(kind_order())}

    def order(item: RobustKey) -> tuple:
        severity = item.severity if not math.isnan(item.severity) else math.inf
        return (rank.get(item.kind, len(rank)), item.kind, severity, item.key)

    return sorted(parsed, key=order)


def has_calibration(frame: pd.DataFrame) -> bool:
    """Whether the runs carry the test split's calibration metrics (``test_ece``)."""
    return _present(frame, "test_ece")


# --- per configuration ------------------------------------------------------------------------


def configurations(frame: pd.DataFrame, metrics) -> pd.DataFrame:
    """Replicates (seeds) folded: ``group_replicates`` of ``metrics`` (those the runs have), with
    ``<metric>_std`` (sample std over seeds, NaN for one) for every one of them.

    Args:
        frame: Runs of ``load_runs`` (or already ``group_replicates``: no new std then).
        metrics: Metric columns.

    Returns:
        One row per configuration; ``attrs["varying"]`` = the configuration keys whose value
        differs between rows (``features``, ``backbone``, ...).
    """
    metrics = [m for m in dict.fromkeys(metrics) if m in frame.columns]
    if is_grouped(frame):
        grouped = frame.copy()
    else:
        grouped = group_replicates(frame, metrics=metrics)
        per_run = frame.set_index("run_id") if "run_id" in frame else None
        for metric in metrics:
            if f"{metric}_std" in grouped or per_run is None:
                continue
            grouped[f"{metric}_std"] = [
                per_run.loc[str(ids).split(","), metric].astype(float).std(ddof=1)
                for ids in grouped["run_ids"]
            ]
    keys = grouped.attrs.get("grouped_by", [])
    grouped.attrs["varying"] = [k for k in keys if grouped[k].astype(str).nunique() > 1]
    return grouped


def _long(grouped: pd.DataFrame, items: list[dict]) -> pd.DataFrame:
    """One row per (configuration, item): the item's fields, ``value`` and ``std`` of its column."""
    rows = []
    for index, row in grouped.iterrows():
        for item in items:
            column = item["column"]
            if column not in grouped:
                continue
            rows.append(
                {
                    "config": index,
                    **{k: v for k, v in item.items() if k != "column"},
                    "value": row[column],
                    "std": row.get(f"{column}_std", np.nan),
                    "n": row["n"],
                }
            )
    return pd.DataFrame(rows)


def cross_dataset(
    frame: pd.DataFrame, metrics=("accuracy", "auc")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each configuration on its own test split and on every extra test set.

    Returns:
        ``(configurations, long)``: the configurations (``configurations``) and one row per
        configuration (``config`` = its index), ``test_set`` (``OWN_TEST`` first) and ``metric``
        with ``value`` and ``std`` (fractions, as logged), ``count`` (images of the set) and ``n``.
    """
    sets = evaluated_sets(frame)
    columns = [metric_column(s, m) for s in sets for m in (*metrics, "count")]
    grouped = configurations(frame, columns)
    long = _long(
        grouped,
        [
            {"test_set": s, "metric": m, "column": metric_column(s, m)}
            for s in sets
            for m in metrics
        ],
    )
    if len(long):
        counts = {
            (i, s): grouped.at[i, metric_column(s, "count")]
            if metric_column(s, "count") in grouped
            else np.nan
            for i in grouped.index
            for s in sets
        }
        long["count"] = [
            counts[(c, s)] for c, s in zip(long["config"], long["test_set"], strict=True)
        ]
    return grouped, long


def per_source(frame: pd.DataFrame, test_set: str = OWN_TEST) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy of every source and AUC of every fake source of a test set, per configuration.

    Returns:
        ``(configurations, long)``; ``long`` has ``config``, ``source``, ``fake`` (bool),
        ``metric`` (``accuracy``, ``auc``, ``count``), ``value``, ``std``, ``n``.
    """
    found = sources(frame, test_set)
    items = [
        {"source": s, "fake": fake, "metric": m, "column": source_column(test_set, s, m)}
        for s, fake in found
        for m in (("accuracy", "auc", "count") if fake else ("accuracy", "count"))
    ]
    grouped = configurations(frame, [item["column"] for item in items])
    return grouped, _long(grouped, items)


def robustness(
    frame: pd.DataFrame, metrics=("auc", "accuracy")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split clean and under every perturbation, per configuration.

    Returns:
        ``(configurations, long)``; ``long`` has ``config``, ``key`` (``clean`` for the
        unperturbed split, from ``test_<metric>``), ``kind`` (``clean`` there), ``level``,
        ``severity`` (0 for clean), ``label``, ``metric``, ``value``, ``std``, ``n``.
    """
    keys = robustness_keys(frame)
    items = [
        {
            "key": "clean",
            "kind": "clean",
            "level": np.nan,
            "severity": 0.0,
            "label": "clean",
            "metric": m,
            "column": f"test_{m}",
        }
        for m in metrics
    ]
    items += [
        {
            "key": k.key,
            "kind": k.kind,
            "level": k.level,
            "severity": k.severity,
            "label": k.label(),
            "metric": m,
            "column": f"{ROBUST_PREFIX}{k.key}_{m}",
        }
        for k in keys
        for m in metrics
    ]
    grouped = configurations(frame, [item["column"] for item in items])
    return grouped, _long(grouped, items)


def calibration(frame: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Configurations with ``<split>_<m>`` for the ``CALIBRATION_METRICS`` (and their std), plus
    ``val_eer_threshold`` (the decision threshold of ``accuracy_valthr``)."""
    columns = [f"{split}_{m}" for m in CALIBRATION_METRICS] + ["val_eer_threshold"]
    return configurations(frame, columns)


def reliability(
    frame: pd.DataFrame, predictions: dict[str, pd.DataFrame], n_bins: int = RELIABILITY_BINS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability-diagram points of every configuration with test predictions.

    The predictions of a configuration's seeds are pooled; points are
    ``bnn.metrics.reliability_curve(labels, prob_fake, n_bins)`` and the ECE
    ``bnn.metrics.expected_calibration_error`` of the pooled predictions.

    Args:
        frame: Runs of ``load_runs``.
        predictions: ``{run_id: predictions}`` (``analysis.runs.load_all_predictions``).
        n_bins: Equal-width bins of the fake probability.

    Returns:
        ``(configurations, points)``: configurations with ``ece``, ``images`` and ``runs_used``
        (those with predictions only); ``points`` has ``config``, ``mean_predicted``,
        ``fraction_positive``, ``count`` per non-empty bin.
    """
    grouped = configurations(frame, [])
    grouped["ece"], grouped["images"], grouped["runs_used"] = np.nan, 0, 0
    keep, rows = [], []
    for index, row in grouped.iterrows():
        used = [r for r in str(row["run_ids"]).split(",") if r in predictions]
        if not used:
            continue
        pooled = pd.concat([predictions[r] for r in used], ignore_index=True)
        pooled = pooled.dropna(subset=["prob_fake"])
        labels, scores = pooled["label"].to_numpy(), pooled["prob_fake"].to_numpy()
        if not len(pooled) or not np.all((scores >= 0) & (scores <= 1)):
            continue
        mean_predicted, fraction, counts = reliability_curve(labels, scores, n_bins)
        rows += [
            {"config": index, "mean_predicted": x, "fraction_positive": y, "count": int(n)}
            for x, y, n in zip(mean_predicted, fraction, counts, strict=True)
        ]
        grouped.at[index, "ece"] = expected_calibration_error(labels, scores, n_bins)
        grouped.at[index, "images"] = len(pooled)
        grouped.at[index, "runs_used"] = len(used)
        keep.append(index)
    points = pd.DataFrame(rows, columns=["config", "mean_predicted", "fraction_positive", "count"])
    out = grouped.loc[keep]
    out.attrs.update(grouped.attrs)
    return out, points
