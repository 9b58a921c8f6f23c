"""The paper's tables from a study's runs, exported as Markdown, LaTeX (booktabs) and CSV
(``analysis.table_format``).

``results_table``: shaped like the paper's results tables (one per dataset): model, frozen or
trainable backbone, accuracy and AUC in percent, parameters (M) and OPs, with the published rows
as a separate, cited block. ``ablation_table``: shaped like the feature ablation: one row per
feature set (RGB, +Mag., +FFT, +LBP and combinations) with its difference to the RGB baseline.
Values are test metrics of the checkpoint selected on validation (what the runner logs); where
seeds replicate a configuration, mean ± std and a seeded bootstrap confidence interval. Best and
second best are marked as in the paper: bold and underline (``**x**`` and ``_x_`` in Markdown).
With per-image test predictions, the ablation marks rows that differ significantly from RGB alone
(``analysis.paired``).

The evaluation protocol's tables (``analysis.protocol``): ``cross_dataset_table`` (own test split and
extra test sets), ``per_source_table`` (each generator and real source), ``robustness_table``
(test split under perturbations) and ``calibration_table`` (ECE, Brier, operating points).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import latency, paired, protocol
from analysis.literature import SHORT_CITATION, load_literature
from analysis.provenance import Provenance
from analysis.runs import group_replicates, is_grouped
from analysis.stats import DEFAULT_LEVEL, bootstrap_diff_ci
from analysis.table_format import (  # noqa: F401  (Column, Table, DASH: also analysis.tables')
    DASH,
    Column,
    Table,
    _latex_escape,
    _missing,
)

DATASET_NAMES = {
    "cocofake": "COCOFake",
    "dffd": "DFFD",
    "cifake": "CIFAKE",
    "synthetic": "the synthetic benchmark",
    "folder": "an image folder",
}
FEATURE_NAMES = {"rgb": "RGB", "sobel": "Mag.", "magnitude": "Mag.", "fft": "FFT", "lbp": "LBP"}
FEATURE_ORDER = ("sobel", "fft", "lbp")  # the paper's order (Mag., FFT, LBP)
OPS_FOOTNOTE = (
    "The paper's \"FLOPs (G)\" column is, for its BNext rows, OPs = FLOPs + BOPs/64 in units "
    "of 1e8 (BNext-T: 0.89 for 88.6 M OPs). Our rows give OPs in G and, in that column, OPs/1e8. "
    "Published rows are verbatim; OPs (G) of the published BNext rows is their value /10; the "
    'unit of the quoted reference rows is not stated beyond "FLOPs (G)".'
)
def feature_extras(features: str) -> tuple[str, ...]:
    """``"rgb+sobel+fft"`` -> ``("sobel", "fft")`` in the paper's order."""
    extras = [f for f in str(features).split("+") if f and f != "rgb"]
    rank = {name: i for i, name in enumerate(FEATURE_ORDER)}
    return tuple(
        sorted(extras, key=lambda f: (rank.get("sobel" if f == "magnitude" else f, len(rank)), f))
    )


def feature_sort_key(features: str) -> tuple:
    """Paper's row order: RGB, +Mag., +FFT, +LBP, +Mag.+FFT, +Mag.+LBP, +FFT+LBP, all three."""
    extras = feature_extras(features)
    rank = {name: i for i, name in enumerate(FEATURE_ORDER)}
    return (len(extras), tuple(rank.get(e, len(rank)) for e in extras), extras)


def feature_label(features: str, added: bool = False) -> str:
    """``"rgb+fft+lbp"`` -> ``"RGB+FFT+LBP"``, or ``"+FFT+LBP"`` with ``added`` (ablation style)."""
    extras = [FEATURE_NAMES.get(e, e.upper()) for e in feature_extras(features)]
    if added:
        return "RGB (baseline)" if not extras else "".join(f"+{e}" for e in extras)
    return "+".join(["RGB", *extras])


def quality_metrics(frame: pd.DataFrame) -> list[str]:
    """The ``val_*``/``test_*`` metric columns of a frame, without their spreads, CIs and counts
    (what an error about a missing metric lists as the choices)."""
    return [
        c
        for c in frame.columns
        if c.startswith(("val_", "test_"))
        and not c.endswith(("_std", "_ci_low", "_ci_high", "_count"))
    ]


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = quality_metrics(frame)
        raise KeyError(
            f"{what} needs metric(s) {missing}, which the runs do not have; "
            f"metrics there: {available or 'none'}"
        )


def _grouped(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if is_grouped(frame) else group_replicates(frame)


def _state(frozen) -> str:
    if _missing(frozen):
        return DASH
    return "frozen" if bool(frozen) else "trainable"


def _percent(grouped: pd.DataFrame, metric: str, name: str) -> pd.DataFrame:
    out = pd.DataFrame(index=grouped.index)
    for suffix in ("", "_std", "_ci_low", "_ci_high"):
        source = f"{metric}{suffix}"
        out[f"{name}{suffix}"] = grouped[source] * 100.0 if source in grouped else np.nan
    return out


def _latency_columns(single_host: bool) -> list[Column]:
    """Latency and throughput (mean ± std over seeds); best/second marked only on one host."""
    return [
        Column("latency_ms", "Latency (ms)", "Latency (ms)", 2, "lower" if single_host else None,
               std="latency_ms_std"),
        Column("throughput_ips", "Throughput (img/s)", "Throughput (img/s)", 1,
               "higher" if single_host else None, std="throughput_ips_std"),
    ]


LATENCY_KEYS = ("latency_ms", "latency_ms_std", "throughput_ips", "throughput_ips_std")


def _latency_frame(grouped: pd.DataFrame) -> pd.DataFrame:
    """The latency columns of a table from configuration rows of ``latency.with_spread``."""
    out = pd.DataFrame({c: grouped.get(c, np.nan) for c in LATENCY_KEYS}, index=grouped.index)
    out["latency_host"] = grouped.get(latency.HOSTS)
    return out


def _latency_text(runs: pd.DataFrame) -> tuple[str, list[str]]:
    """A caption phrase on where latency was measured and the notes explaining the columns."""
    hosts = latency.hosts(runs)
    if not hosts and not latency.has_latency(runs):
        phrase = ""
    elif len(hosts) <= 1:
        phrase = f" Latency and throughput measured on {hosts[0] if hosts else 'one host'}."
    else:
        phrase = f" Latency and throughput measured on {len(hosts)} hosts: compare within a host."
    note = (
        "Latency: median time per image at batch 1, end to end (extra input channels + network) "
        "on the exported engine at the cell's resolution; throughput: images per second at batch "
        f"32; mean ± std over seeds. {DASH}: not measured. "
    )
    note += latency.describe(runs) or "Latency was not measured."
    if len(hosts) > 1:
        note += " Host of each row: CSV column latency_host."
    return phrase, [note]


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
    _require(frame, [accuracy, auc, "params", "ops"], "results_table")
    grouped = latency.with_spread(_grouped(frame), frame)
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
        _features=grouped["features"].map(feature_sort_key) if "features" in grouped else 0,
    ).sort_values(
        ["_frozen", "_binary", "params", "_features"],
        ascending=[False, False, True, True],
        kind="stable",
    )

    ours = pd.DataFrame(
        {
            "block": "ours",
            "method": "this study",
            "model": grouped.get("model", grouped.get("backbone")),
            "backbone": [_state(v) for v in grouped.get("freeze_backbone", [None] * len(grouped))],
            "features": [feature_label(f) for f in grouped.get("features", ["rgb"] * len(grouped))],
            "dataset": dataset,
        },
        index=grouped.index,
    )
    ours = pd.concat(
        [ours, _percent(grouped, accuracy, "accuracy"), _percent(grouped, auc, "auc")], axis=1
    )
    ours["params_m"] = grouped["params"] / 1e6
    ours["ops_g"] = grouped["ops"] / 1e9
    ours["paper_flops_g"] = grouped["ops"] / 1e8
    ours = pd.concat([ours, _latency_frame(grouped)], axis=1)
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
                "backbone": [_state(v) for v in published["frozen"]],
                "features": [feature_label(f) if f else DASH for f in published["features"]],
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
    timed_on, latency_notes = _latency_text(runs)
    columns += _latency_columns(single_host=len(latency.hosts(runs)) <= 1)
    if replicated:
        columns.append(Column("n", "n", "$n$", 0))

    provenance = Provenance.from_runs(grouped)
    name = DATASET_NAMES.get(dataset, dataset or "the study's data")
    caption = (
        f"Results on {name} ({split} split, checkpoint selected on validation): accuracy and AUC"
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
    return Table(table, columns, caption, f"tab:results-{dataset or 'study'}", notes, provenance)


def results_tables(
    frame: pd.DataFrame, literature: bool = True, split: str = "test"
) -> dict[str, Table]:
    """``results_table`` for every dataset of the runs: ``{dataset: Table}``.

    Give the runs (``load_runs``), not grouped rows: the latency columns need each run's host.
    """
    datasets = sorted(frame["dataset"].dropna().unique()) if "dataset" in frame else [None]
    return {str(d): results_table(frame, d, literature, split) for d in datasets}


def setting_label(row: pd.Series, varying: list[str]) -> str:
    """What a row shares with the others of its setting (all but the features): ``BNext-T,
    trainable, COCOFake`` plus ``key=value`` for every other key in ``varying``."""
    parts = [str(row.get("model") or row.get("backbone") or "")]
    if "freeze_backbone" in row and not _missing(row["freeze_backbone"]):
        parts.append(_state(row["freeze_backbone"]))
    if "dataset" in row and row["dataset"]:
        parts.append(DATASET_NAMES.get(row["dataset"], row["dataset"]).removeprefix("the "))
    parts += [
        f"{k}={row[k]}" for k in varying if k not in ("backbone", "freeze_backbone", "dataset")
    ]
    return ", ".join(p for p in parts if p)


def has_feature_ablation(frame: pd.DataFrame) -> bool:
    """Whether some setting of the runs was trained with more than one feature set."""
    if "features" not in frame:
        return False
    grouped = _grouped(frame)
    keys = [k for k in grouped.attrs.get("grouped_by", []) if k != "features"]
    if not keys:
        return grouped["features"].nunique() > 1
    return bool((grouped.groupby(keys, dropna=False)["features"].nunique() > 1).any())


def _published_ablation() -> list[dict]:
    published = load_literature("ablation")
    published = published.iloc[published["features"].map(feature_sort_key).argsort()]
    base = published.loc[published["features"].map(feature_extras) == (), "accuracy"]
    base_value = base.iloc[0] if len(base) else np.nan
    return [
        {
            "block": "published",
            "setting": f"{SHORT_CITATION} (published; setting not stated)",
            "features": feature_label(row["features"], added=True),
            "feature_set": row["features"],
            "value": row["accuracy"],
            "delta": np.nan
            if feature_extras(row["features"]) == ()
            else row["accuracy"] - base_value,
            "source": f"{row['source']}; {row['transcribed_from']}",
        }
        for _, row in published.iterrows()
    ]


def _seed_runs(run_ids: str, seed_of: pd.Series | None) -> dict:
    """``{seed: run_id}`` of a row's comma-joined runs (by position when runs have no seed)."""
    ids = [r for r in str(run_ids).split(",") if r]
    if seed_of is None:
        return dict(enumerate(ids))
    return {seed_of.get(r, i): r for i, r in enumerate(ids)}


def _significance_note(results: pd.DataFrame, pooled: bool) -> str:
    compared = int(results["p_mcnemar"].notna().sum())
    text = (
        f"{paired.MARK_ACCURACY} accuracy and {paired.MARK_AUC} AUC differ from the RGB row of "
        f"the same setting at the {paired.ALPHA:g} level after Holm's correction across the "
        f"{compared} compared row(s), separately per test: {paired.MARK_ACCURACY} two-sided exact "
        f"McNemar test on per-image correctness at threshold {paired.THRESHOLD:g}, "
        f"{paired.MARK_AUC} two-sided paired permutation test of the AUC difference "
        f"({paired.RESAMPLES} random swaps, seeded). Both on the same test images: predictions "
        "joined by image path, only images both rows scored."
    )
    if pooled:
        text += (
            " With several seeds, each seed is paired with the same seed of the RGB row and the "
            "paired images of all seeds are pooled into one test."
        )
    return text + " Raw and Holm-adjusted p-values: CSV columns p_mcnemar(_holm), p_auc(_holm)."


def ablation_table(
    frame: pd.DataFrame,
    metric: str = "test_accuracy",
    literature: bool = False,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    predictions: dict[str, pd.DataFrame] | None = None,
) -> Table:
    """The feature ablation shaped like the paper's: one row per feature set and setting.

    A setting is everything but the features (model, frozen/trainable, dataset, other varying
    params); settings with a single feature set are left out (see ``has_feature_ablation``);
    differences are to the RGB-only row of the same setting.

    Args:
        frame: Runs of ``load_runs`` (raw runs: the difference's interval resamples seeds).
        metric: A metric in [0, 1] shown in percent (``test_accuracy``, ``test_auc``, ...).
        literature: Add the paper's published ablation as its own block.
        level: Coverage of the bootstrap intervals.
        seed: Seed of the bootstrap and of the permutation test.
        predictions: ``{run_id: test predictions}`` (``analysis.runs.load_all_predictions``):
            each row is then tested against its setting's RGB row on the same images
            (``analysis.paired``: exact McNemar for accuracy, paired permutation test for AUC,
            Holm across rows per test) and marked ``*`` / ``†`` where significant at 0.05.

    Returns:
        Columns Setting, Features, the metric (%), 95% CI, Δ vs RGB (pp), Δ 95% CI, n (the
        interval and n columns only when seeds replicate); best and second marked per setting.
        With one seed per row and the runs' own intervals (``<metric>_ci_low``/``_ci_high``,
        bootstrap over test images), a "95% CI (images)" column instead. With predictions,
        significance marks on Δ and the p-values in the frame (CSV): ``paired_images``,
        ``paired_seeds``, ``p_mcnemar``, ``p_mcnemar_holm``, ``p_auc``, ``p_auc_holm``.

    Raises:
        KeyError: The runs lack ``metric`` or ``features``.
    """
    _require(frame, [metric, "features"], "ablation_table")
    if is_grouped(frame):
        raise ValueError(
            "ablation_table needs the runs of load_runs (not grouped): it resamples seeds"
        )
    timed = [m for m in (latency.LATENCY, latency.THROUGHPUT) if m in frame]
    grouped = group_replicates(frame, metrics=[metric, *timed], level=level, seed=seed)
    grouped = latency.with_spread(grouped, frame)
    keys = [k for k in grouped.attrs["grouped_by"] if k != "features"]
    varying = [k for k in keys if grouped[k].astype(str).nunique() > 1]
    indexed = frame.set_index("run_id") if "run_id" in frame else None
    per_run = indexed[metric] if indexed is not None else None
    seed_of = indexed["seed"] if indexed is not None and "seed" in indexed else None
    image_ci = [f"{metric}_ci_low", f"{metric}_ci_high"]
    has_image_ci = indexed is not None and all(c in indexed for c in image_ci)

    rows, comparisons = [], []
    setting_ids = (
        grouped.groupby(keys, dropna=False, sort=False).ngroup()
        if keys
        else pd.Series(0, grouped.index)
    )
    for _, setting in grouped.groupby(setting_ids, sort=False):
        if setting["features"].nunique() < 2:  # nothing ablated in this setting
            continue
        setting = setting.sort_values(
            "features", key=lambda s: s.map(feature_sort_key), kind="stable"
        )
        label = setting_label(setting.iloc[0], varying)
        base = setting[setting["features"].map(feature_extras) == ()]
        base_value = base[metric].iloc[0] * 100 if len(base) else np.nan
        base_runs = (
            per_run.loc[base["run_ids"].iloc[0].split(",")].to_numpy()
            if len(base) and per_run is not None
            else []
        )
        for _, row in setting.iterrows():
            runs = per_run.loc[row["run_ids"].split(",")].to_numpy() if per_run is not None else []
            is_base = feature_extras(row["features"]) == ()
            low, high = (
                (np.nan, np.nan)
                if is_base
                else bootstrap_diff_ci(runs, base_runs, level, seed=seed)
            )
            image_low, image_high = (
                indexed.loc[row["run_ids"].split(",")[0], image_ci].to_numpy(dtype=float) * 100
                if has_image_ci and row["n"] == 1
                else (np.nan, np.nan)
            )
            if not is_base and len(base):
                comparisons.append(
                    (
                        len(rows),
                        _seed_runs(row["run_ids"], seed_of),
                        _seed_runs(base["run_ids"].iloc[0], seed_of),
                    )
                )
            rows.append(
                {
                    "block": "ours",
                    "setting": label,
                    "features": feature_label(row["features"], added=True),
                    "feature_set": row["features"],
                    "value": row[metric] * 100,
                    "value_std": row[f"{metric}_std"] * 100,
                    "value_ci_low": row[f"{metric}_ci_low"] * 100,
                    "value_ci_high": row[f"{metric}_ci_high"] * 100,
                    "value_image_ci_low": image_low,
                    "value_image_ci_high": image_high,
                    "delta": np.nan if is_base else row[metric] * 100 - base_value,
                    "delta_ci_low": low * 100,
                    "delta_ci_high": high * 100,
                    **{c: row.get(c, np.nan) for c in LATENCY_KEYS},
                    "latency_host": row.get(latency.HOSTS),
                    "n": row["n"],
                    "seeds": row["seeds"],
                    "run_ids": row["run_ids"],
                    "source": "this study (MLflow runs)",
                }
            )

    significance = None
    if predictions and comparisons:
        significance = paired.compare_with_baselines(
            [(a, b) for _, a, b in comparisons], predictions, seed=seed
        )
        if not (significance["paired_images"] > 0).any():
            significance = None  # no row has predictions paired with its baseline's
        else:
            significance.index = [i for i, _, _ in comparisons]
            for i in significance.index:
                rows[i].update(significance.loc[i].to_dict())

    if literature:
        rows = _published_ablation() + rows
    empty = pd.DataFrame(
        columns=["block", "setting", "features", "feature_set", "value", "delta", "run_ids"]
    )
    table = pd.DataFrame(rows) if rows else empty
    for column in (
        "value_std",
        "value_ci_low",
        "value_ci_high",
        "value_image_ci_low",
        "value_image_ci_high",
        "delta_ci_low",
        "delta_ci_high",
        "latency_ms",
        "throughput_ips",
        "n",
    ):
        if column not in table:
            table[column] = np.nan
    if significance is not None:
        table["marks"] = table["marks"].fillna("") if "marks" in table else ""

    replicated = bool((table["n"] > 1).any())
    image_intervals = not replicated and bool(table["value_image_ci_low"].notna().any())
    name = metric.removeprefix("test_").removeprefix("val_").replace("_", " ")
    header = (
        "Accuracy (%)" if name == "accuracy" else f"{name.upper() if len(name) <= 3 else name} (%)"
    )
    columns = [
        Column("setting", "Setting", "Setting"),
        Column("features", "Features", "Features"),
        Column("value", header, _latex_escape(header), 2, "higher", std="value_std"),
    ]
    if replicated:
        columns.append(
            Column(
                "value_ci_low",
                f"{int(level * 100)}% CI",
                rf"{int(level * 100)}\% CI",
                2,
                interval=("value_ci_low", "value_ci_high"),
            )
        )
    elif image_intervals:
        columns.append(
            Column(
                "value_image_ci_low",
                "95% CI (images)",
                r"95\% CI (images)",
                2,
                interval=("value_image_ci_low", "value_image_ci_high"),
            )
        )
    columns.append(
        Column(
            "delta",
            "Δ vs RGB (pp)",
            r"$\Delta$ vs RGB (pp)",
            2,
            signed=True,
            suffix="marks" if significance is not None else None,
        )
    )
    if replicated:
        columns.append(
            Column(
                "delta_ci_low",
                f"Δ {int(level * 100)}% CI",
                rf"$\Delta$ {int(level * 100)}\% CI",
                2,
                interval=("delta_ci_low", "delta_ci_high"),
                signed=True,
            )
        )
        columns.append(Column("n", "n", "$n$", 0))
    timed_on, latency_notes = _latency_text(frame) if latency.has_latency(frame) else ("", [])
    if latency_notes:  # measured: latency and throughput before n, as in the results tables
        at = len(columns) - 1 if replicated else len(columns)
        columns[at:at] = _latency_columns(single_host=len(latency.hosts(frame)) <= 1)

    provenance = Provenance.from_runs(frame)
    caption = (
        f"Feature ablation: {metric.replace('_', ' ')} (%) per input feature set"
        f"{' (mean ± std over seeds)' if replicated else ''} and its difference to RGB alone "
        f"in the same setting. Mag. = Sobel gradient magnitude.{timed_on}"
    )
    if significance is not None:
        caption += (
            f" {paired.MARK_ACCURACY}/{paired.MARK_AUC}: accuracy/AUC significantly different "
            "from RGB (Holm-corrected)."
        )
    notes = []
    if replicated:
        notes.append(
            f"{int(level * 100)}% CI: percentile bootstrap over seeds (seeded); Δ CI resamples "
            "both feature sets independently. Coarse with few seeds."
        )
    elif image_intervals:
        notes.append(
            "95% CI (images): one seed per row; percentile bootstrap over the test images "
            f"(1000 resamples, seeded) as the runner logs it ({image_ci[0]}, {image_ci[1]})."
        )
    if significance is not None:
        pooled = any("," in str(s) for s in significance["paired_seeds"])
        notes.append(_significance_note(significance, pooled))
    notes += latency_notes
    if literature:
        notes.append(
            f"Published rows: {SHORT_CITATION}, feature ablation (accuracy), quoted verbatim; "
            "the published table does not state its dataset and backbone."
        )
    if provenance.synthetic:
        notes.append("Synthetic data: these numbers are not comparable with published results.")
    return Table(table, columns, caption, "tab:ablation", notes, provenance, mark_within="setting")


# --- the evaluation protocol (analysis.protocol) --------------------------------------------------


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
        grouped["features"].map(feature_sort_key)
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
        _state(v) for v in grouped.get("freeze_backbone", pd.Series(None, grouped.index))
    ]
    out["features"] = [
        feature_label(f) for f in grouped.get("features", pd.Series("rgb", grouped.index))
    ]
    columns = [
        Column("model", "Model", "Model"),
        Column("backbone", "Backbone", "Backbone"),
        Column("features", "Features", "Features"),
    ]
    if "dataset" in varying:
        out["trained_on"] = [
            DATASET_NAMES.get(d, d).removeprefix("the ") for d in grouped["dataset"]
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
    return "Own test" if test_set == protocol.OWN_TEST else test_set


def _count_text(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "?"
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}-{high}"


def has_cross_dataset(frame: pd.DataFrame) -> bool:
    """Whether the runs were evaluated on extra test sets (a study's ``evaluate:``)."""
    return bool(protocol.extra_test_sets(frame))


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
    sets = protocol.evaluated_sets(frame)
    if not protocol.extra_test_sets(frame):
        raise ValueError("cross_dataset_table: the runs have no extra test set (eval_<set>_*)")
    grouped, _ = protocol.cross_dataset(frame)
    values = []
    for test_set in sets:
        header = _set_header(test_set)
        for metric, name in (("accuracy", "Acc."), ("auc", "AUC")):
            values.append(
                (
                    protocol.metric_column(test_set, metric),
                    100,
                    Column(
                        f"{metric}_{test_set}",
                        f"{header} {name} (%)",
                        _latex_escape(f"{header} {name} (%)"),
                        2,
                        "higher",
                    ),
                )
            )
    counts = {
        s: grouped[protocol.metric_column(s, "count")]
        for s in sets
        if protocol.metric_column(s, "count") in grouped
    }
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else []
    trained = ", ".join(DATASET_NAMES.get(d, d) for d in datasets) or "the study's data"
    notes = [
        f"Own test: the test split of the data each cell was trained on ({trained}); "
        f"{_count_text(counts[protocol.OWN_TEST])} images."
        if protocol.OWN_TEST in counts
        else f"Own test: the test split of the data each cell was trained on ({trained}).",
        "Extra test sets (the study file's evaluate: list), never seen in training or checkpoint "
        "selection: "
        + "; ".join(
            f"{s} ({_count_text(counts[s])} images)" if s in counts else s
            for s in sets
            if s != protocol.OWN_TEST
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


def per_source_table(frame: pd.DataFrame, test_set: str = protocol.OWN_TEST) -> Table:
    """Per-source results on one test split: accuracy of every source and AUC of every generator.

    Args:
        frame: Runs of ``load_runs``.
        test_set: ``analysis.protocol.OWN_TEST`` (the cell's own test split, ``source_*``) or an
            extra test set (``eval_<set>_source_*``).

    Returns:
        Rows: configurations; columns: per real source its accuracy (share called real), per
        fake source its accuracy (share detected) and AUC against all real images of the split,
        in percent; the CSV adds ``count_<source>``.

    Raises:
        ValueError: The runs have no per-source metrics for that split.
    """
    found = protocol.sources(frame, test_set)
    if not found:
        raise ValueError(f"per_source_table: no per-source metrics for test set {test_set!r}")
    grouped, _ = protocol.per_source(frame, test_set)
    values = []
    for source, fake in found:
        metrics = (("accuracy", "Acc."), ("auc", "AUC")) if fake else (("accuracy", "Acc."),)
        for metric, name in metrics:
            text = f"{source} {name} (%)"
            values.append(
                (
                    protocol.source_column(test_set, source, metric),
                    100,
                    Column(f"{metric}_{source}", text, _latex_escape(text), 2, "higher"),
                )
            )
    where = (
        "the own test split"
        if test_set == protocol.OWN_TEST
        else f"the extra test set {test_set}"
    )
    counts = {s: grouped.get(protocol.source_column(test_set, s, "count")) for s, _ in found}
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
    return bool(protocol.robustness_keys(frame))


ROBUSTNESS_NOTES = {
    "jpeg": "JPEG qN: each test image re-encoded by Pillow at quality N",
    "blur": "blur σs: Gaussian blur of standard deviation s pixels",
    "resize": "resize ×s: down-scaled by s (bilinear) and back to its size",
    "chain": "chain <name>: the study file's chain of these steps, applied in order",
}


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
    keys = protocol.robustness_keys(frame)
    if not keys:
        raise ValueError("robustness_table: the runs have no robust_<perturbation>_* metrics")
    grouped, _ = protocol.robustness(frame, metrics=(metric,))
    pretty = "AUC" if metric == "auc" else metric.replace("_", " ")
    values = [(f"test_{metric}", 100, Column(f"{metric}_clean", "Clean", "Clean", 2, "higher"))]
    values += [
        (
            f"{protocol.ROBUST_PREFIX}{k.key}_{metric}",
            100,
            Column(f"{metric}_{k.key}", k.label(), _latex_escape(k.label()), 2, "higher"),
        )
        for k in keys
    ]
    kinds = list(dict.fromkeys(k.kind for k in keys))
    notes = [
        "Clean: the unperturbed test split. "
        + "; ".join(ROBUSTNESS_NOTES[k] for k in kinds if k in ROBUSTNESS_NOTES)
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
    _require(frame, [f"{split}_ece"], "calibration_table")
    grouped = protocol.calibration(frame, split)
    spec = {
        "ece": ("ECE (%)", r"ECE (\%)", 100, 2, "lower"),
        "brier": ("Brier", "Brier", 1, 4, "lower"),
        "accuracy": ("Acc. @0.5 (%)", r"Acc.\ @0.5 (\%)", 100, 2, "higher"),
        "accuracy_valthr": ("Acc. @val. thr. (%)", r"Acc.\ @val.\ thr.\ (\%)", 100, 2, "higher"),
        "tpr_at_fpr_1pct": ("TPR @FPR 1% (%)", r"TPR @FPR 1\% (\%)", 100, 2, "higher"),
        "tpr_at_fpr_0p1pct": ("TPR @FPR 0.1% (%)", r"TPR @FPR 0.1\% (\%)", 100, 2, "higher"),
    }
    values = [
        (f"{split}_{m}", scale, Column(m, md, tex, decimals, better))
        for m, (md, tex, scale, decimals, better) in spec.items()
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
