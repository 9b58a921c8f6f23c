"""The paper's results tables (Tables 1-3, one per dataset) from a study's runs, exported as
Markdown, LaTeX (booktabs) and CSV (``analysis.table_format``).

``results_table`` is shaped like the paper's: model, frozen or trainable backbone, feature set,
accuracy and AUC in percent, parameters (M) and OPs, measured latency and throughput
(``analysis.latency_frames``), with the published rows as a separate, cited block. Values are test
metrics of the checkpoint selected on validation (what the runner logs); where seeds replicate a
configuration, mean ± std and a seeded bootstrap confidence interval. Best and second best are
marked as in the paper: bold and underline (``**x**`` and ``_x_`` in Markdown).

The feature ablation (Table 4) is ``analysis.ablation``; the evaluation protocol's tables are
``analysis.protocol_tables``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import data_audit, latency_frames
from analysis.labels import SELECTED_ON_TEST, backbone_state, dataset_name, is_selected_on_test
from analysis.literature import SHORT_CITATION, load_literature
from analysis.provenance import Provenance
from analysis.replicates import as_grouped, is_grouped, param_columns, require_metrics
from analysis.stats import DEFAULT_LEVEL
from analysis.table_format import DASH, Column, Table
from bnn.feature_sets import display_label, feature_set_sort_key

OPS_FOOTNOTE = (
    "The paper's \"FLOPs (G)\" column is, for its BNext rows, OPs = FLOPs + BOPs/64 in units "
    "of 1e8 (BNext-T: 0.89 for 88.6 M OPs). Our rows give OPs in G and, in that column, OPs/1e8. "
    "Published rows are verbatim; OPs (G) of the published BNext rows is their value /10; the "
    'unit of the quoted reference rows is not stated beyond "FLOPs (G)".'
)


def _percent(grouped: pd.DataFrame, metric: str, name: str) -> pd.DataFrame:
    out = pd.DataFrame(index=grouped.index)
    for suffix in ("", "_std", "_ci_low", "_ci_high"):
        source = f"{metric}{suffix}"
        out[f"{name}{suffix}"] = grouped[source] * 100.0 if source in grouped else np.nan
    return out


LABEL_COLUMNS = ("method", "model", "backbone", "features")


def _distinct_methods(ours: pd.DataFrame, grouped: pd.DataFrame) -> pd.Series:
    """The Method column with every row's label (Method, Model, Backbone, Features) made unique:
    rows that would look the same name the params that differ between them (``epochs=4``), a
    stale row (``analysis.runs.load_runs(include_stale=True)``) says so."""
    method = ours["method"].copy()
    if "stale" in grouped:
        method = [f"{m} (stale: {s})" if isinstance(s, str) and s else m
                  for m, s in zip(method, grouped["stale"], strict=True)]
        method = pd.Series(method, index=ours.index)
    labels = ours.assign(method=method)[list(LABEL_COLUMNS)].astype(str).agg(" | ".join, axis=1)
    params = [c for c in param_columns(grouped) if c in grouped]
    for label in labels[labels.duplicated(keep=False)].unique():
        rows = labels.index[labels == label]
        differing = [c for c in params if grouped.loc[rows, c].astype(str).nunique() > 1]
        for i, row in enumerate(rows):
            extra = ", ".join(f"{c}={grouped.at[row, c]}" for c in differing) or f"configuration {i + 1}"
            method[row] = f"{method[row]} ({extra})"
    return method


def results_table(
    frame: pd.DataFrame,
    dataset: str | None = None,
    literature: bool = True,
    split: str = "test",
) -> Table:
    """A results table shaped like the paper's (one per dataset).

    Args:
        frame: Runs of ``load_runs`` (replicates are grouped here) or ``group_replicates``.
        dataset: Which dataset's runs; may be None when the runs use only one.
        literature: Add the published rows for this dataset (none for synthetic or folder data).
        split: ``"test"`` (default: test metrics of the val-selected checkpoint) or ``"val"``.

    Returns:
        Columns Method, Model, Backbone (frozen/trainable), Features, Accuracy (%), AUC (%),
        Params (M), OPs (G), the paper's "FLOPs (G)" (see ``OPS_FOOTNOTE``), plus 95% CI and n
        when seeds replicate a configuration.

    Raises:
        KeyError: The runs lack ``<split>_accuracy`` / ``<split>_auc`` / ``params`` / ``ops``.
        ValueError: Several datasets and none chosen, or no run of the chosen one.
    """
    accuracy, auc = f"{split}_accuracy", f"{split}_auc"
    require_metrics(frame, [accuracy, auc, "params", "ops"], "results_table")
    grouped = latency_frames.with_spread(as_grouped(frame), frame)
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else []
    if dataset is None:
        if len(datasets) > 1:
            raise ValueError(f"runs of several datasets {datasets}: pick one with dataset=...")
        dataset = datasets[0] if datasets else None
    if dataset is not None and "dataset" in grouped:
        grouped = grouped[grouped["dataset"] == dataset]
        if grouped.empty:
            raise ValueError(f"no run on dataset {dataset!r}; datasets: {datasets}")
    grouped = grouped.assign(
        _frozen=grouped["freeze_backbone"].astype(bool) if "freeze_backbone" in grouped else False,
        _binary=grouped["binary"].astype(bool) if "binary" in grouped else False,
        _features=grouped["features"].map(feature_set_sort_key) if "features" in grouped else 0,
    ).sort_values(
        ["_frozen", "_binary", "params", "_features"],
        ascending=[False, False, True, True],
        kind="stable",
    )

    ours = pd.DataFrame(
        {
            "block": "ours",
            "method": ["this study" + (f" ({SELECTED_ON_TEST})" if is_selected_on_test(row) else "")
                       for _, row in grouped.iterrows()],
            "model": grouped.get("model", grouped.get("backbone")),
            "backbone": [
                backbone_state(v) for v in grouped.get("freeze_backbone", [None] * len(grouped))
            ],
            "features": [display_label(f) for f in grouped.get("features", ["rgb"] * len(grouped))],
            "dataset": dataset,
        },
        index=grouped.index,
    )
    ours["method"] = _distinct_methods(ours, grouped)
    ours = pd.concat(
        [ours, _percent(grouped, accuracy, "accuracy"), _percent(grouped, auc, "auc")], axis=1
    )
    ours["params_m"] = grouped["params"] / 1e6
    ours["ops_g"] = grouped["ops"] / 1e9
    ours["paper_flops_g"] = grouped["ops"] / 1e8
    ours = pd.concat([ours, latency_frames.table_values(grouped)], axis=1)
    ours["n"] = grouped["n"]
    ours["seeds"] = grouped["seeds"]
    ours["run_ids"] = grouped["run_ids"]
    ours["source"] = "this study (MLflow runs)"

    published = load_literature("results", dataset) if literature and dataset else pd.DataFrame()
    blocks = []
    if len(published):
        lit = pd.DataFrame(
            {
                "block": published["block"].map(
                    {"reference": "published reference", "paper": "published"}
                ),
                "method": [
                    f"{r} via {SHORT_CITATION}" if r else f"{SHORT_CITATION} (published)"
                    for r in published["reference"]
                ],
                "model": published["model"],
                "backbone": [backbone_state(v) for v in published["frozen"]],
                "features": [display_label(f) if f else DASH for f in published["features"]],
                "dataset": published["dataset"],
                "accuracy": published["accuracy"],
                "auc": published["auc"],
                "params_m": published["params_m"],
                "ops_g": np.where(
                    published["block"] == "paper", published["flops_g_published"] / 10, np.nan
                ),
                "paper_flops_g": published["flops_g_published"],
                "n": np.nan,
                "source": published["source"] + "; " + published["transcribed_from"],
            }
        )
        blocks.append(lit)
    blocks.append(ours)
    runs_here = frame if dataset is None or "dataset" not in frame else frame[frame["dataset"] == dataset]
    accuracy_floors = data_audit.floors(runs_here, accuracy)
    auc_floors = data_audit.floors(runs_here, auc)
    if accuracy_floors:
        blocks.append(pd.DataFrame({
            "block": "floor",
            "method": list(accuracy_floors),
            "model": "(no network)",
            "dataset": dataset,
            "accuracy": [100 * v for v in accuracy_floors.values()],
            "auc": [100 * auc_floors.get(label, np.nan) for label in accuracy_floors],
            "source": "data audit (bnn.data.audit), fitted on this study's train split",
        }))
    table = pd.concat(blocks, ignore_index=True)

    replicated = bool((ours["n"] > 1).any())
    columns = [
        Column("method", "Method", "Method"),
        Column("model", "Model", "Model"),
        Column("backbone", "Backbone", "Backbone"),
        Column("features", "Features", "Features"),
        Column("accuracy", "Accuracy (%)", r"Acc. (\%)", 2, "higher", std="accuracy_std"),
    ]
    if replicated:
        columns.append(
            Column(
                "accuracy_ci_low",
                "Acc. 95% CI",
                r"Acc. 95\% CI",
                2,
                interval=("accuracy_ci_low", "accuracy_ci_high"),
            )
        )
    columns += [
        Column("auc", "AUC (%)", r"AUC (\%)", 2, "higher", std="auc_std"),
        Column("params_m", "Params (M)", "Params (M)", 1),
        Column("ops_g", "OPs (G)", "OPs (G)", 3, "lower"),
        Column("paper_flops_g", 'Paper "FLOPs (G)"¹', r"Paper ``FLOPs (G)''$^{1}$", 2),
    ]
    runs = frame
    if dataset is not None and "dataset" in frame and not is_grouped(frame):
        runs = frame[frame["dataset"] == dataset]
    timed_on, latency_notes = latency_frames.table_text(runs)
    columns += latency_frames.table_columns(single_host=len(latency_frames.hosts(runs)) <= 1)
    if replicated:
        columns.append(Column("n", "n", "$n$", 0))

    provenance = Provenance.from_runs(grouped)
    name = dataset_name(dataset) if dataset else "the study's data"
    selection = "checkpoint selected on validation"
    if bool(grouped.apply(is_selected_on_test, axis=1).any()) if len(grouped) else False:
        selection = f"checkpoint selected on validation, except rows marked '{SELECTED_ON_TEST}'"
    caption = (
        f"Results on {name} ({split} split, {selection}): accuracy and AUC"
        f"{' (mean ± std over seeds)' if replicated else ''}, parameters and OPs per image.{timed_on}"
    )
    notes = [OPS_FOOTNOTE, *latency_notes]
    if len(published):
        notes.append(
            f"Published rows are quoted from {SHORT_CITATION} (Method names the work it quotes);"
            " they were not re-run here."
        )
    if replicated:
        notes.append(
            f"{int(DEFAULT_LEVEL * 100)}% CI: percentile bootstrap of the mean over seeds "
            "(seeded); coarse with few seeds."
        )
    if provenance.synthetic:
        notes.append("Synthetic data: these numbers are not comparable with published results.")
    if accuracy_floors:
        notes.append("Floor rows: what baselines that see no network reach on the same splits (fitted on "
                     "train, scored on test; analysis.data_audit); read every result against them.")
    if provenance.selected_on_test:
        notes.append(data_audit.SELECTION_NOTE)
    return Table(table, columns, caption, f"tab:results-{dataset or 'study'}", notes, provenance)


def results_tables(
    frame: pd.DataFrame, literature: bool = True, split: str = "test"
) -> dict[str, Table]:
    """``results_table`` for every dataset of the runs: ``{dataset: Table}``.

    Give the runs (``load_runs``), not grouped rows: the latency columns need each run's host.
    """
    datasets = sorted(frame["dataset"].dropna().unique()) if "dataset" in frame else [None]
    return {str(d): results_table(frame, d, literature, split) for d in datasets}
