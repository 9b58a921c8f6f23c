"""The data audit of a study's runs (``bnn.data.audit``, logged by every cell as ``audit_*``
metrics and ``bnn.audit.*`` tags): a table per audited data set, the two floors that Figure 1 and
the results tables draw as reference lines, and the label of runs whose checkpoint was selected on
the test split (``selection_split: test``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.labels import SELECTED_ON_TEST, dataset_name
from analysis.provenance import Provenance
from analysis.table_format import Column, Table

# Floor -> (metric prefix, what it is, shown in legends and table rows).
FLOORS = {
    "spectral": ("audit_spectral", "spectral floor: logistic regression on the 16-bin radial log-FFT profile"),
    "shortcut": ("audit_shortcut", "no-pixel shortcut: decision tree on format, size, JPEG quality, file bytes"),
}
SELECTION_NOTE = (
    f"Rows marked '{SELECTED_ON_TEST}' chose their checkpoint on the test split (selection_split: test, "
    "as Lanzino et al.'s code does for COCOFake and CIFAKE): their test metrics are optimistic, not a "
    "held-out estimate."
)


def has_audit(frame: pd.DataFrame) -> bool:
    """Whether any run carries the audit's metrics."""
    return "audit_spectral_accuracy" in frame and frame["audit_spectral_accuracy"].notna().any()


def selected_on_test(frame: pd.DataFrame) -> pd.Series:
    """Per row, whether its checkpoint was selected on the test split (missing: on validation)."""
    if "selection_split" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["selection_split"].astype(object).eq("test")


def floors(frame: pd.DataFrame, quality: str) -> dict[str, float]:
    """``{label: value}`` of the floors for a ``test_accuracy`` or ``test_auc`` axis, when the runs
    share one audited data set (the floors of several would be different lines); else ``{}``."""
    metric = quality.removeprefix("test_")
    if not quality.startswith("test_") or metric not in ("accuracy", "auc") or not has_audit(frame):
        return {}
    out = {}
    for _, (prefix, label) in FLOORS.items():
        column = f"{prefix}_{metric}"
        values = frame[column].dropna().round(6).unique() if column in frame else []
        if len(values) == 1 and not math.isnan(values[0]):
            out[label] = float(values[0])
    return out


def audit_table(frame: pd.DataFrame) -> Table:
    """One row per audited data set (runs with the same split digests share one audit).

    Columns: data set, the training data's description, runs, duplicate pairs within splits,
    across splits and between test and train/val (before ``dedupe``), images ``dedupe`` dropped
    from train and val, the shortcut and spectral floors' accuracy and AUC (%), and the warnings.

    Raises:
        ValueError: No run has the audit's metrics.
    """
    if not has_audit(frame):
        raise ValueError("no run has the data audit's metrics (audit_*): recorded before the audit existed")
    runs = frame[frame["audit_spectral_accuracy"].notna()]
    key = runs["data_digest"].fillna("") if "data_digest" in runs else pd.Series("", index=runs.index)
    rows = []
    for _, group in runs.groupby(key, sort=False):
        first = group.iloc[0]
        rows.append({
            "dataset": dataset_name(first.get("dataset")) if first.get("dataset") else "",
            "data": str(first.get("data") or ""),
            "runs": len(group),
            "within": first.get("audit_duplicate_pairs_within", np.nan),
            "cross": first.get("audit_duplicate_pairs_cross", np.nan),
            "test": first.get("audit_duplicate_pairs_test", np.nan),
            "dropped": f"{int(first.get('audit_dropped_train', 0))} / {int(first.get('audit_dropped_val', 0))}",
            "shortcut_accuracy": 100 * first.get("audit_shortcut_accuracy", np.nan),
            "shortcut_auc": 100 * first.get("audit_shortcut_auc", np.nan),
            "spectral_accuracy": 100 * first.get("audit_spectral_accuracy", np.nan),
            "spectral_auc": 100 * first.get("audit_spectral_auc", np.nan),
            "warnings": str(first.get("audit_warnings") or "none"),
        })
    columns = [
        Column("dataset", "Data set", "Data set"),
        Column("runs", "Runs", "Runs", 0),
        Column("within", "Dup. pairs within splits", "Dup.\\ within", 0),
        Column("cross", "across splits", "across", 0),
        Column("test", "test vs train/val", "test vs train/val", 0),
        Column("dropped", "Dropped train / val", "Dropped train / val"),
        Column("shortcut_accuracy", "Shortcut acc. (%)", r"Shortcut acc.\ (\%)", 2),
        Column("shortcut_auc", "Shortcut AUC (%)", r"Shortcut AUC (\%)", 2),
        Column("spectral_accuracy", "Spectral acc. (%)", r"Spectral acc.\ (\%)", 2),
        Column("spectral_auc", "Spectral AUC (%)", r"Spectral AUC (\%)", 2),
        Column("warnings", "Warnings", "Warnings"),
    ]
    notes = [
        "Duplicates: files with identical bytes (BLAKE2b), counted as pairs before dedupe; dedupe (on by "
        "default) drops train copies of val/test images and val copies of test images.",
        f"Shortcut: {FLOORS['shortcut'][1]}; spectral: {FLOORS['spectral'][1]} (Durall et al., CVPR 2020). "
        "Both fitted on train, scored on test: what a result could owe to the files rather than the generator.",
        *[f"Data of row {i + 1}: {row['data']}" for i, row in enumerate(rows)],
    ]
    return Table(pd.DataFrame(rows), columns, "Data audit of the study's data sets (bnn.data.audit).",
                 "tab:data-audit", notes, Provenance.from_runs(frame))
