"""The paper's feature ablation (Table 4) from a study's runs: one row per feature set (RGB,
+Mag., +FFT, +LBP and combinations, in Table 4's order) and setting, with its difference to the
RGB baseline of the same setting (``ablation_table``), exported by ``analysis.table_format``.

Where seeds replicate a configuration: mean ± std, a seeded bootstrap interval of the value and of
the difference; with one seed, the run's own interval over test images. With per-image test
predictions, rows that differ significantly from RGB alone are marked (``analysis.paired``). The
paper's published ablation can be added as its own, cited block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import latency_frames, paired
from analysis.labels import setting_label
from analysis.literature import SHORT_CITATION, load_literature
from analysis.provenance import Provenance
from analysis.replicates import as_grouped, group_replicates, is_grouped, require_metrics
from analysis.stats import DEFAULT_LEVEL, bootstrap_diff_ci
from analysis.table_format import Column, Table, latex_escape
from bnn.feature_sets import display_label, feature_set_sort_key, parse_features
from bnn.metric_table import spec_of


def has_feature_ablation(frame: pd.DataFrame) -> bool:
    """Whether some setting of the runs was trained with more than one feature set."""
    if "features" not in frame:
        return False
    grouped = as_grouped(frame)
    keys = [k for k in grouped.attrs.get("grouped_by", []) if k != "features"]
    if not keys:
        return grouped["features"].nunique() > 1
    return bool((grouped.groupby(keys, dropna=False)["features"].nunique() > 1).any())


def _published_ablation() -> list[dict]:
    published = load_literature("ablation")
    published = published.iloc[published["features"].map(feature_set_sort_key).argsort()]
    base = published.loc[published["features"].map(parse_features) == (), "accuracy"]
    base_value = base.iloc[0] if len(base) else np.nan
    return [
        {
            "block": "published",
            "setting": f"{SHORT_CITATION} (published; setting not stated)",
            "features": display_label(row["features"], added=True),
            "feature_set": row["features"],
            "value": row["accuracy"],
            "delta": np.nan
            if parse_features(row["features"]) == ()
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
    require_metrics(frame, [metric, "features"], "ablation_table")
    if is_grouped(frame):
        raise ValueError(
            "ablation_table needs the runs of load_runs (not grouped): it resamples seeds"
        )
    timed = [m for m in (latency_frames.LATENCY, latency_frames.THROUGHPUT) if m in frame]
    grouped = group_replicates(frame, metrics=[metric, *timed], level=level, seed=seed)
    grouped = latency_frames.with_spread(grouped, frame)
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
            "features", key=lambda s: s.map(feature_set_sort_key), kind="stable"
        )
        label = setting_label(setting.iloc[0], varying)
        base = setting[setting["features"].map(parse_features) == ()]
        base_value = base[metric].iloc[0] * 100 if len(base) else np.nan
        base_runs = (
            per_run.loc[base["run_ids"].iloc[0].split(",")].to_numpy()
            if len(base) and per_run is not None
            else []
        )
        for _, row in setting.iterrows():
            runs = per_run.loc[row["run_ids"].split(",")].to_numpy() if per_run is not None else []
            is_base = parse_features(row["features"]) == ()
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
                    "features": display_label(row["features"], added=True),
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
                    **{c: row.get(c, np.nan) for c in latency_frames.TABLE_KEYS},
                    "latency_host": row.get(latency_frames.HOSTS),
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
    spec = spec_of(metric)
    name = metric.removeprefix("test_").removeprefix("val_").replace("_", " ")
    header = f"{spec.title if spec else name} (%)"  # the ablation's values are shares, in per cent
    columns = [
        Column("setting", "Setting", "Setting"),
        Column("features", "Features", "Features"),
        Column("value", header, latex_escape(header), 2, spec.better if spec else "higher", std="value_std"),
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
    timed_on, latency_notes = latency_frames.table_text(frame) if latency_frames.has_latency(frame) else ("", [])
    if latency_notes:  # measured: latency and throughput before n, as in the results tables
        at = len(columns) - 1 if replicated else len(columns)
        columns[at:at] = latency_frames.table_columns(single_host=len(latency_frames.hosts(frame)) <= 1)

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
