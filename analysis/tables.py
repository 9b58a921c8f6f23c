"""The paper's tables from a study's runs, exported as Markdown, LaTeX (booktabs) and CSV.

``results_table``: shaped like the paper's results tables (one per dataset): model, frozen or
trainable backbone, accuracy and AUC in percent, parameters (M) and OPs, with the published rows
as a separate, cited block. ``ablation_table``: shaped like the feature ablation: one row per
feature set (RGB, +Mag., +FFT, +LBP and combinations) with its difference to the RGB baseline.
Values are test metrics of the checkpoint selected on validation (what the runner logs); where
seeds replicate a configuration, mean ± std and a seeded bootstrap confidence interval. Best and
second best are marked as in the paper: bold and underline (``**x**`` and ``_x_`` in Markdown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.literature import SHORT_CITATION, load_literature
from analysis.provenance import Provenance
from analysis.runs import group_replicates, is_grouped
from analysis.stats import DEFAULT_LEVEL, bootstrap_diff_ci

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
DASH = "–"


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        key: Frame column holding the value (already in display units).
        markdown: Header in Markdown.
        latex: Header in LaTeX.
        decimals: Decimals of a number; None for a text column.
        better: ``"higher"`` or ``"lower"`` to mark best and second best; None not to mark.
        std: Frame column with the std, shown as ``value ± std`` where present.
        interval: Frame columns (low, high) shown as ``[low, high]`` instead of ``key``.
        signed: Numbers with an explicit sign (differences).
    """

    key: str
    markdown: str
    latex: str
    decimals: int | None = None
    better: str | None = None
    std: str | None = None
    interval: tuple[str, str] | None = None
    signed: bool = False


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _number(value, decimals: int, signed: bool = False) -> str:
    if _missing(value):
        return DASH
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _latex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\^{}",
        "±": r"$\pm$",
        "–": "--",
        "Δ": r"$\Delta$",
    }
    return "".join(replacements.get(ch, ch) for ch in text)


@dataclass
class Table:
    """A table ready to export.

    Attributes:
        frame: One row per table row: display values, numeric columns behind them (std, interval,
            run ids, sources) and ``block`` (rows of one block are contiguous).
        columns: What is shown, in order.
        caption: Caption (LaTeX and Markdown).
        label: LaTeX label.
        notes: Footnotes under the table.
        provenance: Study record behind the table.
        mark_within: Column whose values delimit the groups best/second are marked within
            (None: the whole table).
    """

    frame: pd.DataFrame
    columns: list[Column]
    caption: str
    label: str
    notes: list[str] = field(default_factory=list)
    provenance: Provenance | None = None
    mark_within: str | None = None

    def text(self, row: int, column: Column) -> str:
        """The cell as text, without marks."""
        values = self.frame.iloc[row]
        if column.interval is not None:
            low, high = values[column.interval[0]], values[column.interval[1]]
            if _missing(low) or _missing(high):
                return DASH
            low = _number(low, column.decimals, column.signed)
            return f"[{low}, {_number(high, column.decimals, column.signed)}]"
        value = values[column.key]
        if column.decimals is None:
            return DASH if _missing(value) else str(value)
        text = _number(value, column.decimals, column.signed)
        if column.std is not None and not _missing(values[column.std]) and text != DASH:
            text += f" ± {values[column.std]:.{column.decimals}f}"
        return text

    def marks(self) -> dict[tuple[int, str], str]:
        """``{(row, column key): "best" | "second"}`` over the values as displayed (ties share)."""
        out: dict[tuple[int, str], str] = {}
        groups = (
            self.frame[self.mark_within].astype(str)
            if self.mark_within
            else pd.Series("", index=self.frame.index)
        )
        for column in self.columns:
            if column.better is None or column.decimals is None:
                continue
            rounded = self.frame[column.key].astype(float).round(column.decimals)
            for group in groups.unique():
                rows = [
                    i
                    for i in range(len(self.frame))
                    if groups.iloc[i] == group and not np.isnan(rounded.iloc[i])
                ]
                distinct = sorted(
                    {rounded.iloc[i] for i in rows}, reverse=column.better == "higher"
                )
                if len(rows) < 2:
                    continue
                for i in rows:
                    if rounded.iloc[i] == distinct[0]:
                        out[(i, column.key)] = "best"
                    elif len(distinct) > 1 and rounded.iloc[i] == distinct[1]:
                        out[(i, column.key)] = "second"
        return out

    def _rows(self, bold, underline, escape=lambda text: text) -> list[list[str]]:
        marks = self.marks()
        rows = []
        for i in range(len(self.frame)):
            cells = []
            for column in self.columns:
                text = escape(self.text(i, column))
                mark = marks.get((i, column.key))
                cells.append(
                    bold(text) if mark == "best" else underline(text) if mark == "second" else text
                )
            rows.append(cells)
        return rows

    def to_markdown(self) -> str:
        """Markdown: caption, table (best **bold**, second _underlined_), notes, provenance."""
        header = [c.markdown for c in self.columns]
        align = [
            ":--" if c.decimals is None and c.interval is None else "--:" for c in self.columns
        ]
        lines = [
            f"**{self.caption}**",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(align) + "|",
        ]
        for cells in self._rows(lambda t: f"**{t}**", lambda t: f"_{t}_"):
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
        lines += [f"{n}. {note}" for n, note in enumerate(self.notes, start=1)]
        if self.provenance is not None:
            p = self.provenance
            lines += [
                "",
                f"<sub>Source: study `{p.study}`, {len(p.run_ids)} runs, git {p.short_commits}, "
                f"generated {p.generated_at}.</sub>",
                "",
                "<!-- provenance",
            ]
            lines += [f"  {line}" for line in p.lines()]
            lines.append("-->")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` (``\\toprule``/``\\midrule``/``\\bottomrule``), one line per row.

        Best is ``\\textbf``, second ``\\underline``; provenance as ``%`` comments on top.
        """
        lines = []
        if self.provenance is not None:
            lines += [f"% {line}" for line in self.provenance.lines()]
        spec = "".join(
            "l" if c.decimals is None and c.interval is None else "r" for c in self.columns
        )
        lines += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_latex_escape(self.caption)}}}",
            rf"\label{{{self.label}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(c.latex for c in self.columns) + r" \\",
            r"\midrule",
        ]
        rows = self._rows(
            lambda t: rf"\textbf{{{t}}}", lambda t: rf"\underline{{{t}}}", _latex_escape
        )
        blocks = self.frame["block"].tolist() if "block" in self.frame else [""] * len(rows)
        for i, cells in enumerate(rows):
            if i and blocks[i] != blocks[i - 1]:
                lines.append(r"\midrule")
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for n, note in enumerate(self.notes, start=1):
            lines.append(rf"\par\smallskip{{\footnotesize ({n}) {_latex_escape(note)}}}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Every column behind the table (numbers unrounded), run ids and provenance per row."""
        frame = self.frame.copy()
        if self.provenance is not None:
            frame["study"] = self.provenance.study
            frame["git_commit"] = ",".join(self.provenance.git_commits)
            frame["generated_at"] = self.provenance.generated_at
        return frame.to_csv(index=False)

    def save(self, directory: str | Path, stem: str) -> dict[str, Path]:
        """Writes ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv``; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "md": directory / f"{stem}.md",
            "tex": directory / f"{stem}.tex",
            "csv": directory / f"{stem}.csv",
        }
        paths["md"].write_text(self.to_markdown())
        paths["tex"].write_text(self.to_latex())
        paths["csv"].write_text(self.to_csv())
        return paths


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


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = [
            c
            for c in frame.columns
            if c.startswith(("val_", "test_"))
            and not c.endswith(("_std", "_ci_low", "_ci_high", "_count"))
        ]
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
    grouped = _grouped(frame)
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
    if replicated:
        columns.append(Column("n", "n", "$n$", 0))

    provenance = Provenance.from_runs(grouped)
    name = DATASET_NAMES.get(dataset, dataset or "the study's data")
    caption = (
        f"Results on {name} ({split} split, checkpoint selected on validation): accuracy and AUC"
        f"{' (mean ± std over seeds)' if replicated else ''}, parameters and OPs per image."
    )
    notes = [OPS_FOOTNOTE]
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
    """``results_table`` for every dataset of the runs: ``{dataset: Table}``."""
    grouped = _grouped(frame)
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else [None]
    return {str(d): results_table(grouped, d, literature, split) for d in datasets}


def _setting_label(row: pd.Series, varying: list[str]) -> str:
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


def ablation_table(
    frame: pd.DataFrame,
    metric: str = "test_accuracy",
    literature: bool = False,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
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
        seed: Seed of the bootstrap.

    Returns:
        Columns Setting, Features, the metric (%), 95% CI, Δ vs RGB (pp), Δ 95% CI, n (the
        interval and n columns only when seeds replicate); best and second marked per setting.

    Raises:
        KeyError: The runs lack ``metric`` or ``features``.
    """
    _require(frame, [metric, "features"], "ablation_table")
    if is_grouped(frame):
        raise ValueError(
            "ablation_table needs the runs of load_runs (not grouped): it resamples seeds"
        )
    grouped = group_replicates(frame, metrics=[metric], level=level, seed=seed)
    keys = [k for k in grouped.attrs["grouped_by"] if k != "features"]
    varying = [k for k in keys if grouped[k].astype(str).nunique() > 1]
    per_run = frame.set_index("run_id")[metric] if "run_id" in frame else None

    rows = []
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
        label = _setting_label(setting.iloc[0], varying)
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
                    "delta": np.nan if is_base else row[metric] * 100 - base_value,
                    "delta_ci_low": low * 100,
                    "delta_ci_high": high * 100,
                    "n": row["n"],
                    "seeds": row["seeds"],
                    "run_ids": row["run_ids"],
                    "source": "this study (MLflow runs)",
                }
            )
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
        "delta_ci_low",
        "delta_ci_high",
        "n",
    ):
        if column not in table:
            table[column] = np.nan

    replicated = bool((table["n"] > 1).any())
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
    columns.append(Column("delta", "Δ vs RGB (pp)", r"$\Delta$ vs RGB (pp)", 2, signed=True))
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

    provenance = Provenance.from_runs(frame)
    caption = (
        f"Feature ablation: {metric.replace('_', ' ')} (%) per input feature set"
        f"{' (mean ± std over seeds)' if replicated else ''} and its difference to RGB alone "
        "in the same setting. Mag. = Sobel gradient magnitude."
    )
    notes = []
    if replicated:
        notes.append(
            f"{int(level * 100)}% CI: percentile bootstrap over seeds (seeded); Δ CI resamples "
            "both feature sets independently. Coarse with few seeds."
        )
    if literature:
        notes.append(
            f"Published rows: {SHORT_CITATION}, feature ablation (accuracy), quoted verbatim; "
            "the published table does not state its dataset and backbone."
        )
    if provenance.synthetic:
        notes.append("Synthetic data: these numbers are not comparable with published results.")
    return Table(table, columns, caption, "tab:ablation", notes, provenance, mark_within="setting")
