"""The evaluation protocol's tables (``analysis.protocol_frames``) from a study's runs, one row per
configuration (named as in the results tables, in the ablation's order), exported by
``analysis.table_format``: ``cross_dataset_table`` (own test split and extra test sets),
``per_source_table`` (each generator and real source), ``robustness_table`` (test split under
test-time perturbations) and ``calibration_table`` (ECE, Brier, operating points).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import protocol_frames
from analysis.labels import backbone_state, dataset_name
from analysis.provenance import Provenance
from analysis.replicates import require_metrics
from analysis.table_format import DASH, Column, Table, latex_escape
from bnn.data.perturb import kind_note
from bnn.feature_sets import display_label, feature_set_sort_key
from bnn.metric_table import METRICS
from bnn.protocol import ROBUST_PREFIX


def _ordered(grouped: pd.DataFrame) -> pd.DataFrame:
    """Configurations in the ablation's order: settings as they first appear, feature sets in the
    paper's order within each."""
    keys = [k for k in grouped.attrs.get("grouped_by", []) if k != "features" and k in grouped]
    setting = (
        grouped.groupby(keys, dropna=False, sort=False).ngroup()
        if keys
        else pd.Series(0, grouped.index)
    )
    features = (
        grouped["features"].map(feature_set_sort_key)
        if "features" in grouped
        else pd.Series([()] * len(grouped), grouped.index)
    )
    order = sorted(grouped.index, key=lambda i: (setting[i], features[i]))
    out = grouped.loc[order]
    out.attrs.update(grouped.attrs)
    return out


def _cells(grouped: pd.DataFrame) -> tuple[pd.DataFrame, list[Column]]:
    """The columns that name a configuration, as the results tables do: Model, Backbone (frozen or
    trainable), Features; "Trained on" when the dataset varies and "Other" for the other axes
    that vary; with ``n``, ``seeds`` and ``run_ids`` for the CSV."""
    varying = grouped.attrs.get("varying", [])
    out = pd.DataFrame(index=grouped.index)
    out["block"] = "ours"
    out["model"] = grouped["model"] if "model" in grouped else grouped.get("backbone", DASH)
    out["backbone"] = [
        backbone_state(v) for v in grouped.get("freeze_backbone", pd.Series(None, grouped.index))
    ]
    out["features"] = [
        display_label(f) for f in grouped.get("features", pd.Series("rgb", grouped.index))
    ]
    columns = [
        Column("model", "Model", "Model"),
        Column("backbone", "Backbone", "Backbone"),
        Column("features", "Features", "Features"),
    ]
    if "dataset" in varying:
        out["trained_on"] = [
            dataset_name(d, article=False) for d in grouped["dataset"]
        ]
        columns.append(Column("trained_on", "Trained on", "Trained on"))
    others = [k for k in varying if k not in ("backbone", "features", "freeze_backbone", "dataset")]
    if others:
        out["other"] = [", ".join(f"{k}={row[k]}" for k in others) for _, row in grouped.iterrows()]
        columns.append(Column("other", "Other", "Other"))
    for column in ("n", "seeds", "run_ids"):
        out[column] = grouped[column] if column in grouped else np.nan
    return out, columns


def _scaled(out: pd.DataFrame, grouped: pd.DataFrame, source: str, key: str, scale: float) -> None:
    out[key] = grouped[source] * scale if source in grouped else np.nan
    std = f"{source}_std"
    out[f"{key}_std"] = grouped[std] * scale if std in grouped else np.nan


def _protocol_table(
    frame: pd.DataFrame,
    grouped: pd.DataFrame,
    values: list[tuple[str, float, Column]],
    caption: str,
    label: str,
    notes: list[str],
) -> Table:
    """A table of configurations: the naming columns, then ``values`` as ``(source column,
    scale, column)`` (a column's std is ``<key>_std``, shown when seeds replicate)."""
    grouped = _ordered(grouped)
    out, columns = _cells(grouped)
    replicated = bool((out["n"] > 1).any())
    for source, scale, column in values:
        _scaled(out, grouped, source, column.key, float(scale))
        columns.append(
            Column(
                column.key,
                column.markdown,
                column.latex,
                column.decimals,
                column.better,
                std=f"{column.key}_std" if replicated else None,
            )
        )
    if replicated:
        columns.append(Column("n", "n", "$n$", 0))
        caption = caption.rstrip(".") + " (mean ± std over seeds)."
    provenance = Provenance.from_runs(frame)
    if provenance.synthetic:
        notes = [*notes, "Synthetic data: these numbers are not comparable with published results."]
    return Table(out.reset_index(drop=True), columns, caption, label, notes, provenance)


def _set_header(test_set: str) -> str:
    return "Own test" if test_set == protocol_frames.OWN_TEST else test_set


def _count_text(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "?"
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}-{high}"


def has_cross_dataset(frame: pd.DataFrame) -> bool:
    """Whether the runs were evaluated on extra test sets (a study's ``evaluate:``)."""
    return bool(protocol_frames.extra_test_sets(frame))


def cross_dataset_table(frame: pd.DataFrame) -> Table:
    """Cross-dataset evaluation: each cell on its own test split and on every extra test set.

    Args:
        frame: Runs of ``load_runs`` (seeds are folded: mean ± std).

    Returns:
        Rows: configurations (Model, Backbone, Features, ...); columns: accuracy (threshold 0.5)
        and AUC in percent on the own test split, then on each extra test set (``eval_<set>_*``);
        the CSV adds the sets' image counts (``count_<set>``).

    Raises:
        ValueError: The runs have no extra test set.
    """
    sets = protocol_frames.evaluated_sets(frame)
    if not protocol_frames.extra_test_sets(frame):
        raise ValueError("cross_dataset_table: the runs have no extra test set (eval_<set>_*)")
    grouped, _ = protocol_frames.cross_dataset(frame)
    values = []
    for test_set in sets:
        header = _set_header(test_set)
        for metric, name in (("accuracy", "Acc."), ("auc", "AUC")):
            values.append(
                (
                    protocol_frames.metric_column(test_set, metric),
                    100,
                    Column(
                        f"{metric}_{test_set}",
                        f"{header} {name} (%)",
                        latex_escape(f"{header} {name} (%)"),
                        2,
                        "higher",
                    ),
                )
            )
    counts = {
        s: grouped[protocol_frames.metric_column(s, "count")]
        for s in sets
        if protocol_frames.metric_column(s, "count") in grouped
    }
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else []
    trained = ", ".join(dataset_name(d) for d in datasets) or "the study's data"
    notes = [
        f"Own test: the test split of the data each cell was trained on ({trained}); "
        f"{_count_text(counts[protocol_frames.OWN_TEST])} images."
        if protocol_frames.OWN_TEST in counts
        else f"Own test: the test split of the data each cell was trained on ({trained}).",
        "Extra test sets (the study file's evaluate: list), never seen in training or checkpoint "
        "selection: "
        + "; ".join(
            f"{s} ({_count_text(counts[s])} images)" if s in counts else s
            for s in sets
            if s != protocol_frames.OWN_TEST
        )
        + ".",
        "Accuracy at threshold 0.5 on the fake probability; AUC ranks fakes against reals.",
    ]
    table = _protocol_table(
        frame,
        grouped,
        values,
        "Cross-dataset evaluation: accuracy and AUC (%) of each cell on its own test split and on "
        "each extra test set (checkpoint selected on validation).",
        "tab:cross-dataset",
        notes,
    )
    for test_set, count in counts.items():
        table.frame[f"count_{test_set}"] = count.loc[_ordered(grouped).index].to_numpy()
    return table


def per_source_table(frame: pd.DataFrame, test_set: str = protocol_frames.OWN_TEST) -> Table:
    """Per-source results on one test split: accuracy of every source and AUC of every generator.

    Args:
        frame: Runs of ``load_runs``.
        test_set: ``analysis.protocol_frames.OWN_TEST`` (the cell's own test split, ``source_*``) or an
            extra test set (``eval_<set>_source_*``).

    Returns:
        Rows: configurations; columns: per real source its accuracy (share called real), per
        fake source its accuracy (share detected) and AUC against all real images of the split,
        in percent; the CSV adds ``count_<source>``.

    Raises:
        ValueError: The runs have no per-source metrics for that split.
    """
    found = protocol_frames.sources(frame, test_set)
    if not found:
        raise ValueError(f"per_source_table: no per-source metrics for test set {test_set!r}")
    grouped, _ = protocol_frames.per_source(frame, test_set)
    values = []
    for source, fake in found:
        metrics = (("accuracy", "Acc."), ("auc", "AUC")) if fake else (("accuracy", "Acc."),)
        for metric, name in metrics:
            text = f"{source} {name} (%)"
            values.append(
                (
                    protocol_frames.source_column(test_set, source, metric),
                    100,
                    Column(f"{metric}_{source}", text, latex_escape(text), 2, "higher"),
                )
            )
    where = (
        "the own test split"
        if test_set == protocol_frames.OWN_TEST
        else f"the extra test set {test_set}"
    )
    counts = {s: grouped.get(protocol_frames.source_column(test_set, s, "count")) for s, _ in found}
    reals = [s for s, fake in found if not fake]
    notes = [
        "Images per source: "
        + ", ".join(
            f"{s} {_count_text(c) if c is not None else '?'}{' (real)' if s in reals else ''}"
            for s, c in counts.items()
        )
        + ".",
        "Accuracy at threshold 0.5: for a real source the share called real, for a generator the "
        "share detected. A generator's AUC ranks its fakes against all real images of the split.",
    ]
    table = _protocol_table(
        frame,
        grouped,
        values,
        f"Per-source results on {where}: accuracy (%) of every source and AUC (%) of every "
        "generator.",
        f"tab:per-source-{test_set}",
        notes,
    )
    order = _ordered(grouped).index
    for source, count in counts.items():
        if count is not None:
            table.frame[f"count_{source}"] = count.loc[order].to_numpy()
    return table


def has_robustness(frame: pd.DataFrame) -> bool:
    """Whether the runs were evaluated under test-time perturbations (a study's ``robustness:``)."""
    return bool(protocol_frames.robustness_keys(frame))


def robustness_table(frame: pd.DataFrame, metric: str = "auc") -> Table:
    """The test split clean and under every test-time perturbation (``bnn.data.perturb``).

    Args:
        frame: Runs of ``load_runs``.
        metric: ``auc`` (default), ``accuracy`` or another ``bnn.protocol.ROBUST_METRICS`` in [0, 1].

    Returns:
        Rows: configurations; columns: Clean (``test_<metric>``) and one per perturbation
        (``robust_<key>_<metric>``, JPEG, blur, resize by growing severity, then chains), in %.

    Raises:
        ValueError: The runs have no robustness metrics.
    """
    keys = protocol_frames.robustness_keys(frame)
    if not keys:
        raise ValueError("robustness_table: the runs have no robust_<perturbation>_* metrics")
    grouped, _ = protocol_frames.robustness(frame, metrics=(metric,))
    spec = METRICS[metric]
    pretty = spec.label
    values = [(f"test_{metric}", 100, Column(f"{metric}_clean", "Clean", "Clean", spec.decimals, spec.better))]
    values += [
        (
            f"{ROBUST_PREFIX}{k.key}_{metric}",
            100,
            Column(f"{metric}_{k.key}", k.label(), latex_escape(k.label()), spec.decimals, spec.better),
        )
        for k in keys
    ]
    kinds = list(dict.fromkeys(k.kind for k in keys))
    notes = [
        "Clean: the unperturbed test split. "
        + "; ".join(note for note in map(kind_note, kinds) if note)
        + ". Each perturbation is applied to the decoded image before the preprocessing.",
    ]
    return _protocol_table(
        frame,
        grouped,
        values,
        f"Robustness: test {pretty} (%) of each cell on its test split, clean and under each "
        "test-time perturbation.",
        "tab:robustness",
        notes,
    )


def calibration_table(frame: pd.DataFrame, split: str = "test") -> Table:
    """Calibration and operating points of each cell on its test split.

    Args:
        frame: Runs of ``load_runs``.
        split: ``test`` (default) or ``val``.

    Returns:
        Rows: configurations; columns ECE (%), Brier score, accuracy at 0.5 (%), accuracy at the
        threshold chosen on validation (%), TPR at FPR = 1% and 0.1% (%); the CSV adds the
        validation threshold (``val_eer_threshold``).

    Raises:
        KeyError: The runs lack ``<split>_ece``.
    """
    require_metrics(frame, [f"{split}_ece"], "calibration_table")
    grouped = protocol_frames.calibration(frame, split)
    values = [
        (f"{split}_{m}", 100 if METRICS[m].percent else 1,
         Column(m, METRICS[m].column_header(), METRICS[m].column_latex(), METRICS[m].decimals,
                METRICS[m].better))
        for m in protocol_frames.CALIBRATION_METRICS
        if f"{split}_{m}" in grouped
    ]
    notes = [
        "ECE: expected calibration error, top-label definition with 15 equal-width confidence "
        "bins (Guo et al., ICML 2017). Brier: mean squared error of the fake probability.",
        "Acc. @val. thr.: accuracy at the equal-error-rate threshold chosen on the validation "
        "split (CSV: val_eer_threshold), the threshold a deployed detector would use.",
        "TPR @FPR x: the largest share of fakes detected at a threshold that calls at most x of "
        "the real images fake (no interpolation); with fewer than 1/x real images that means "
        "no false positive at all.",
    ]
    table = _protocol_table(
        frame,
        grouped,
        values,
        f"Calibration and operating points on the {'test' if split == 'test' else 'validation'} "
        "split.",
        f"tab:calibration-{split}",
        notes,
    )
    if "val_eer_threshold" in grouped:
        table.frame["val_eer_threshold"] = _ordered(grouped)["val_eer_threshold"].to_numpy()
    return table
