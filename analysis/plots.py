"""Figures of a study: Figure 1 (accuracy against OPs), learning curves, ROC curves, and the
evaluation protocol's cross-dataset heat map, robustness curves and reliability diagrams.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas explicitly (pyplot and the
global backend are never touched), styled with seaborn, saved as PNG, PDF and SVG, and carry the
study's provenance (study, runs, git commit, time) in a small footer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from analysis import protocol
from analysis.literature import SHORT_CITATION, load_literature, published_ops
from analysis.pareto import front_steps, pareto_front
from analysis.provenance import Provenance
from analysis.runs import group_replicates, is_grouped
from analysis.tables import DATASET_NAMES, feature_label, feature_sort_key, setting_label

FAMILY_ORDER = ("BNext", "ResNet", "ViT", "VGG", "DenseNet", "Xception")
MARKERS = {False: "o", True: "^"}  # trainable, frozen backbone
COST_LABELS = {
    "ops": "OPs per image (FLOPs + BOPs/64)",
    "flops": "full-precision MACs per image",
    "bops": "binary MACs per image",
    "params": "parameters",
    "storage_bytes": "storage (bytes)",
    "trainable_params": "trainable parameters",
}
PERCENT_METRICS = ("accuracy", "auc", "ap", "eer", "accuracy_real", "accuracy_fake")
FOOTER_HEIGHT = 0.07


def _figure(width: float, height: float, footer: bool = True) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if footer:
        fig.get_layout_engine().set(rect=(0, FOOTER_HEIGHT, 1, 1 - FOOTER_HEIGHT))
    return fig


def _footer(fig: Figure, provenance: Provenance | None, note: str = "") -> None:
    """Provenance (and an optional note on a second line) in small grey type under the axes."""
    text = "\n".join(t for t in (provenance.footer() if provenance else "", note) if t)
    if text:
        fig.text(
            0.01, 0.01, text, fontsize=6.5, color="0.35", ha="left", va="bottom", linespacing=1.4
        )


def _place_labels(
    ax, items: list[tuple[float, float, str]], fontsize: float, color: str, avoid: bool = True
) -> None:
    """Labels beside their points (log x axis), pushed apart where points share a column.

    Points closer than 0.08 decades in x form a column; its labels keep a vertical gap of 3.5% of
    the y range (with a thin leader line where a label moved). Labels go right of their column;
    with ``avoid``, when the next column to the right is near (0.45 decades) they go left if there
    is room there, else above the point.
    """
    if not items:
        return
    (x_low, _), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    gap = 0.035 * (y_high - y_low)
    items = sorted(items, key=lambda item: np.log10(item[0]))
    columns, current = [], [items[0]]
    for item in items[1:]:
        if np.log10(item[0]) - np.log10(current[-1][0]) < 0.08:
            current.append(item)
        else:
            columns.append(current)
            current = [item]
    columns.append(current)
    for k, column in enumerate(columns):
        crowded = (
            avoid and k + 1 < len(columns) and np.log10(columns[k + 1][0][0] / column[-1][0]) < 0.45
        )
        side = (
            "right"
            if not crowded
            else "left"
            if np.log10(column[0][0] / x_low) > 0.45
            else "center"
        )
        dx = {"right": 13, "left": -13, "center": 0}[side]  # points, past the largest marker
        lift = 0.9 if side == "center" else 0.25
        previous = -np.inf
        for x, y, text in sorted(column, key=lambda item: item[1]):
            label_y = max(y + lift * gap, previous + gap)
            previous = label_y
            moved = label_y - y > gap * max(lift, 1.0)
            ax.annotate(
                text,
                (x, y),
                xytext=(dx, label_y),
                textcoords=("offset points", "data"),
                fontsize=fontsize,
                color=color,
                va="bottom",
                ha={"right": "left", "left": "right"}.get(side, "center"),
                arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5} if moved else None,
            )


def family_colors(families) -> dict[str, tuple]:
    """A stable colour per architecture family (the same family has the same colour everywhere)."""
    palette = sns.color_palette("colorblind", 10)
    known = list(FAMILY_ORDER) + sorted(set(families) - set(FAMILY_ORDER))
    return {family: palette[i % len(palette)] for i, family in enumerate(known)}


def quality_label(metric: str) -> str:
    """``test_accuracy`` -> ``Test accuracy (%)``."""
    split, _, name = metric.partition("_")
    if split not in ("val", "test"):
        return metric.replace("_", " ")
    pretty = {"auc": "AUC", "ap": "AP", "eer": "EER"}.get(name, name.replace("_", " "))
    unit = " (%)" if name in PERCENT_METRICS else ""
    return f"{'Validation' if split == 'val' else 'Test'} {pretty}{unit}"


def _scale(metric: str) -> float:
    return 100.0 if metric.partition("_")[2] in PERCENT_METRICS else 1.0


def run_label(row: pd.Series, seed: bool = False) -> str:
    """``BNext-T RGB+FFT+LBP (frozen)``, plus `` seed 1`` with ``seed``."""
    label = f"{row.get('model') or row.get('backbone')} {feature_label(row.get('features', 'rgb'))}"
    if bool(row.get("freeze_backbone", False)):
        label += " (frozen)"
    if seed and "seed" in row and not pd.isna(row["seed"]):
        label += f" seed {row['seed']}"
    return label


def _true(value) -> bool:
    """A bool column value that may be missing (pandas ``NA``): missing counts as False."""
    return not pd.isna(value) and bool(value)


def _require(frame: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        metrics = [
            c
            for c in frame.columns
            if c.startswith(("val_", "test_"))
            and not c.endswith(("_std", "_ci_low", "_ci_high", "_count"))
        ]
        raise KeyError(f"the runs have no {missing}; metrics there: {metrics or 'none'}")


def _published(literature, frame: pd.DataFrame, quality: str) -> tuple[pd.DataFrame, str]:
    """Literature rows to plot (their ``quality`` in ``y``) and the dataset they are on."""
    column = {"accuracy": "accuracy", "auc": "auc"}.get(quality.partition("_")[2])
    if literature is None or literature is False or column is None:
        return pd.DataFrame(), ""
    if isinstance(literature, pd.DataFrame):
        rows = literature
    else:
        dataset = literature
        if literature is True:
            datasets = frame["dataset"].dropna().unique() if "dataset" in frame else []
            dataset = datasets[0] if len(datasets) == 1 else None
        rows = load_literature("results", dataset) if dataset else pd.DataFrame()
    if rows.empty:
        return rows, ""
    rows = rows.assign(ops=published_ops(rows), y=rows[column]).dropna(subset=["ops", "y"])
    datasets = rows["dataset"].dropna().unique()
    return rows, ", ".join(DATASET_NAMES.get(d, d) for d in datasets)


def figure1(
    frame: pd.DataFrame,
    cost: str = "ops",
    quality: str = "test_accuracy",
    literature=None,
    provenance: Provenance | None = None,
    title: str | None = None,
    annotate: str = "front",
) -> Figure:
    """Figure 1 of the paper for a study: quality against cost, one point per configuration.

    Log x axis; marker area proportional to parameters; colour = architecture family; marker =
    trainable (circle) or frozen (triangle) backbone; error bars = std over seeds; the Pareto
    front drawn as a staircase. Published points are hollow grey and labelled "published".

    Args:
        frame: Runs of ``load_runs`` (replicates are averaged) or ``group_replicates``.
        cost: Cost column for x (``ops``, ``params``, ``bops``, ``storage_bytes``, ...).
        quality: Quality column for y (``test_accuracy``, ``test_auc``, ...); metrics in [0, 1]
            are shown in percent.
        literature: Published points: None/False for none, True for those of the runs' dataset
            (if the paper has it), a dataset name (``"cocofake"``) or rows of ``load_literature``.
            Only an OPs axis can hold them (their OPs come from the paper's "FLOPs (G)" column,
            see ``analysis.literature.published_ops``).
        provenance: Footer; default from ``frame``.
        title: Axes title; default names the study.
        annotate: ``"front"`` labels the front's points, ``"all"`` every point, ``"none"``.

    Raises:
        KeyError: ``cost`` or ``quality`` is not a column of the runs (the message lists metrics).
    """
    _require(frame, [cost, quality])
    grouped = frame if is_grouped(frame) else group_replicates(frame)
    provenance = provenance or Provenance.from_runs(grouped)
    points = grouped.dropna(subset=[cost, quality]).reset_index(drop=True)
    if points.empty:
        raise ValueError(f"no run has both {cost!r} and {quality!r}")
    scale = _scale(quality)
    published, published_on = (
        _published(literature, grouped, quality) if cost == "ops" else (pd.DataFrame(), "")
    )

    sizes_source = pd.concat(
        [
            points.get("params", pd.Series(dtype=float)),
            published.get("params_m", pd.Series(dtype=float)) * 1e6,
        ]
    )
    largest = float(np.nanmax(sizes_source)) if sizes_source.notna().any() else 1.0

    def area(params) -> np.ndarray:
        values = np.asarray(params, dtype=float)
        return np.where(np.isnan(values), 60.0, 30.0 + 420.0 * values / largest)

    fig = _figure(9.0, 5.2)
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    colors = family_colors(points.get("family", pd.Series(dtype=str)).dropna().unique())
    frozen = (
        points["freeze_backbone"].astype(bool)
        if "freeze_backbone" in points
        else pd.Series(False, points.index)
    )
    y = points[quality] * scale
    std = points.get(f"{quality}_std", pd.Series(np.nan, points.index)) * scale
    for i, row in points.iterrows():
        color = colors.get(row.get("family"), "0.3")
        if not np.isnan(std[i]):
            ax.errorbar(row[cost], y[i], yerr=std[i], color=color, lw=1, capsize=2, zorder=2)
        ax.scatter(
            row[cost],
            y[i],
            s=area([row.get("params", np.nan)]),
            marker=MARKERS[bool(frozen[i])],
            color=color,
            edgecolor="white",
            linewidth=0.6,
            alpha=0.9,
            zorder=3,
        )

    if len(published):
        markers = published["frozen"].map(lambda f: "D" if pd.isna(f) else MARKERS[_true(f)])
        for marker in markers.unique():
            part = published[markers == marker]
            ax.scatter(
                part["ops"],
                part["y"],
                s=area(part["params_m"] * 1e6),
                marker=marker,
                facecolors="none",
                edgecolors="0.5",
                linewidth=1.0,
                zorder=2,
            )
    mask = pareto_front(points, cost, quality)
    steps = front_steps(points, cost, quality, mask)
    if len(steps):
        ax.step(
            steps[cost],
            steps[quality] * scale,
            where="post",
            color="0.15",
            ls="--",
            lw=1.1,
            zorder=1,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = pd.concat([points[cost], published.get("ops", pd.Series(dtype=float))]).astype(float)
    span = np.log10(xs.max() / xs.min())  # decades; pad more on the right, where labels go
    ax.set_xlim(xs.min() / 10 ** (0.08 * span + 0.03), xs.max() * 10 ** (0.18 * span + 0.12))
    ax.set_xlabel(f"{COST_LABELS.get(cost, cost)}, log scale")
    ax.set_ylabel(quality_label(quality))
    labelled = (
        points.index if annotate == "all" else points.index[mask] if annotate == "front" else []
    )
    ours = [(points.loc[i, cost], y[i], run_label(points.loc[i])) for i in labelled]
    theirs = [
        (row["ops"], row["y"], f"{row['model']}{' (frozen)' if _true(row['frozen']) else ''}")
        for _, row in published.iterrows()
    ]
    _place_labels(ax, ours, fontsize=7, color="0.1", avoid=False)
    _place_labels(ax, theirs, fontsize=6, color="0.45")
    ax.set_title(
        title
        or f"{provenance.study}: {quality_label(quality).split(' (')[0].lower()} "
        f"against {COST_LABELS.get(cost, cost).split(' (')[0]}",
        fontsize=11,
    )

    handles = [
        Line2D([], [], ls="", marker="o", color=colors[f], markersize=7, label=f)
        for f in colors
        if f in set(points.get("family", []))
    ]
    handles += [
        Line2D([], [], ls="", marker=MARKERS[False], color="0.3", markersize=7, label="trainable"),
        Line2D([], [], ls="", marker=MARKERS[True], color="0.3", markersize=7, label="frozen"),
    ]
    handles.append(Line2D([], [], color="0.15", ls="--", lw=1.1, label="Pareto front"))
    if len(published):
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="0.5",
                markersize=7,
                label=f"published, {published_on}\n({SHORT_CITATION})",
            )
        )
    if "params" in points and points["params"].notna().any():
        for value in sorted(
            {float(f"{v:.2g}") for v in np.quantile(sizes_source.dropna(), [0.0, 1.0])}
        ):
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    color="0.75",
                    markersize=float(np.sqrt(area([value])[0])),
                    label=f"{value / 1e6:.3g} M params",
                )
            )
    fig.legend(
        handles=handles, loc="outside right upper", fontsize=7.5, frameon=False, labelspacing=1.0
    )
    note = (
        'published points: x from the paper\'s "FLOPs (G)" column (BNext rows: OPs/1e8; '
        "others read as GFLOPs), y as published"
        if len(published)
        else ""
    )
    _footer(fig, provenance, note)
    return fig


def learning_curves(
    history: pd.DataFrame,
    frame: pd.DataFrame,
    metrics=("epoch_train_loss", "epoch_val_loss", "epoch_val_accuracy"),
    provenance: Provenance | None = None,
) -> Figure:
    """Per-epoch curves, one panel per metric and one line per run (colour = cell).

    Args:
        history: From ``load_epoch_history``.
        frame: Runs of ``load_runs`` (for labels).
        metrics: Per-epoch metrics to draw, one panel each.
        provenance: Footer; default from ``frame``.
    """
    provenance = provenance or Provenance.from_runs(frame)
    labels = {row["run_id"]: run_label(row) for _, row in frame.iterrows()}
    cells = list(dict.fromkeys(labels.values()))
    palette = dict(zip(cells, sns.color_palette("husl", max(len(cells), 1)), strict=False))
    seeds = dict(zip(frame["run_id"], frame.get("seed", pd.Series(0, frame.index)), strict=True))
    styles = ["-", "--", ":", "-."]

    fig = _figure(4.0 * len(metrics) + 2.5, 3.8)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        part = history[history["metric"] == metric]
        for run_id, curve in part.groupby("run_id", sort=False):
            label = labels.get(run_id, run_id[:8])
            ax.plot(
                curve["step"],
                curve["value"],
                color=palette.get(label, "0.3"),
                lw=1.4,
                marker=".",
                ls=styles[int(seeds.get(run_id, 0) or 0) % len(styles)],
            )
        ax.set_title(metric.removeprefix("epoch_").replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=palette[c], lw=2, label=c) for c in cells]
    if frame.get("seed", pd.Series(dtype=int)).nunique() > 1:
        handles += [
            Line2D([], [], color="0.3", ls=styles[s % len(styles)], label=f"seed {s}")
            for s in sorted(frame["seed"].unique())
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    _footer(fig, provenance)
    return fig


def roc_curves(
    rocs: dict[str, dict],
    provenance: Provenance | None = None,
    title: str = "ROC curves (test split) of the Pareto-front configurations",
) -> Figure:
    """ROC curves, one per label, with the AUC of the drawn points in the legend.

    Args:
        rocs: ``{label: {"fpr": ..., "tpr": ...}}`` (``analysis.runs.load_roc``).
        provenance: Footer.
        title: Axes title.
    """
    fig = _figure(7.5, 4.8)
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    palette = sns.color_palette("colorblind", max(len(rocs), 1))
    for color, (label, roc) in zip(palette, rocs.items(), strict=False):
        fpr, tpr = np.asarray(roc["fpr"], float), np.asarray(roc["tpr"], float)
        ax.plot(
            fpr, tpr, color=color, lw=1.6, label=f"{label} (AUC {np.trapezoid(tpr, fpr) * 100:.2f})"
        )
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.005),
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake detected)",
        aspect="equal",
    )
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside right upper", fontsize=7.5, frameon=False)
    _footer(fig, provenance)
    return fig


_SETTING_SKIP = ("backbone", "features", "freeze_backbone", "dataset")


def cell_label(row: pd.Series, varying=()) -> str:
    """``run_label`` plus what else varies between the study's configurations: the dataset it
    trained on (when that varies) and ``key=value`` of other axes (``varying``)."""
    label = run_label(row)
    if "dataset" in varying and row.get("dataset"):
        label += f" [{DATASET_NAMES.get(row['dataset'], row['dataset']).removeprefix('the ')}]"
    extras = [f"{k}={row[k]}" for k in varying if k not in _SETTING_SKIP and k in row]
    return label + (f", {', '.join(extras)}" if extras else "")


def _feature_colors(features) -> dict[str, tuple]:
    """A colour per feature set, in the paper's order (the same set, the same colour)."""
    ordered = sorted(dict.fromkeys(features), key=feature_sort_key)
    palette = sns.color_palette("colorblind", max(len(ordered), 1))
    return {f: palette[i % len(palette)] for i, f in enumerate(ordered)}


def _settings(grouped: pd.DataFrame) -> pd.Series:
    """Each configuration's setting label (all but its feature set)."""
    varying = [k for k in grouped.attrs.get("varying", []) if k != "features"]
    return pd.Series(
        [setting_label(row, varying) for _, row in grouped.iterrows()], index=grouped.index
    )


def cross_dataset_heatmap(
    frame: pd.DataFrame, metric: str = "auc", provenance: Provenance | None = None
) -> Figure:
    """A heat map of each configuration (row: model, feature set, what it trained on) on every
    test set (column: its own test split, then the extra test sets), coloured and annotated with
    ``metric`` in percent (mean over seeds).

    Args:
        frame: Runs of ``load_runs``.
        metric: ``auc`` (default) or ``accuracy``.
        provenance: Footer; default from ``frame``.

    Raises:
        ValueError: The runs have no extra test set.
    """
    if not protocol.extra_test_sets(frame):
        raise ValueError("cross_dataset_heatmap: the runs have no extra test set (eval_<set>_*)")
    provenance = provenance or Provenance.from_runs(frame)
    grouped, long = protocol.cross_dataset(frame, metrics=(metric,))
    order = sorted(
        grouped.index,
        key=lambda i: (_settings(grouped)[i], feature_sort_key(grouped.at[i, "features"])),
    )
    varying = grouped.attrs.get("varying", [])
    sets = protocol.evaluated_sets(frame)
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else []
    own = (
        f"own test\n({DATASET_NAMES.get(datasets[0], datasets[0]).removeprefix('the ')})"
        if len(datasets) == 1
        else "own test"
    )
    names = {s: own if s == protocol.OWN_TEST else s for s in sets}
    matrix = long.pivot(index="config", columns="test_set", values="value").reindex(
        index=order, columns=sets
    )
    matrix = matrix.astype(float) * 100.0
    matrix.index = [cell_label(grouped.loc[i], varying) for i in order]
    matrix.columns = [names[s] for s in sets]

    longest = max(len(label) for label in matrix.index)
    fig = _figure(3.0 + 0.07 * longest + 1.3 * len(sets), max(3.4, 2.0 + 0.42 * len(matrix)))
    ax = fig.add_subplot()
    values = matrix.to_numpy()
    low = float(np.nanmin(values)) if np.isfinite(values).any() else 50.0
    pretty = "AUC" if metric == "auc" else metric.replace("_", " ")
    sns.heatmap(
        matrix,
        ax=ax,
        annot=True,
        fmt=".1f",
        cmap="viridis",
        vmin=min(50.0, np.floor(low)),
        vmax=100.0,
        linewidths=0.8,
        linecolor="white",
        cbar_kws={"label": f"{pretty} (%)", "shrink": 0.9},
        annot_kws={"fontsize": 9},
    )
    ax.figure.axes[-1].tick_params(labelsize=8)
    ax.figure.axes[-1].yaxis.label.set_size(9)
    ax.set_xlabel("test set", fontsize=9)
    ax.set_ylabel("cell (model, features)", fontsize=9)
    ax.tick_params(axis="y", rotation=0, labelsize=8)
    ax.tick_params(axis="x", rotation=0, labelsize=8)
    trained = (
        f", cells trained on {DATASET_NAMES.get(datasets[0], datasets[0])}"
        if len(datasets) == 1
        else ""
    )
    ax.set_title(f"{provenance.study}: test {pretty} (%) across test sets{trained}", fontsize=10)
    replicated = bool((grouped["n"] > 1).any())
    _footer(fig, provenance, "mean over seeds" if replicated else "")
    return fig


_KIND_AXES = {
    "jpeg": ("JPEG", "severity: 100 − JPEG quality"),
    "blur": ("Gaussian blur", "severity: blur σ (pixels)"),
    "resize": ("resize and back", "severity: 1 / resize scale"),
}


def robustness_curves(
    frame: pd.DataFrame,
    metrics=("auc", "accuracy"),
    provenance: Provenance | None = None,
) -> Figure:
    """Test metrics against perturbation severity: one panel per perturbation kind (columns) and
    metric (rows), one line per configuration (colour = feature set, line style = setting when
    several), the clean test split at severity 0; chains as points in a last panel.

    Severity is ``bnn.data.perturb.Perturbation.severity`` (JPEG 100 - quality, blur sigma, resize
    1 / scale); error bars are the std over seeds.

    Args:
        frame: Runs of ``load_runs``.
        metrics: ``bnn.protocol.ROBUST_METRICS`` in [0, 1], one row of panels each.
        provenance: Footer; default from ``frame``.

    Raises:
        ValueError: The runs have no robustness metrics.
    """
    keys = protocol.robustness_keys(frame)
    if not keys:
        raise ValueError("robustness_curves: the runs have no robust_<perturbation>_* metrics")
    provenance = provenance or Provenance.from_runs(frame)
    grouped, long = protocol.robustness(frame, metrics=metrics)
    kinds = list(dict.fromkeys(k.kind for k in keys if k.kind in _KIND_AXES))
    chains = [k for k in keys if k.kind not in _KIND_AXES]
    panels = kinds + (["chain"] if chains else [])
    settings = _settings(grouped)
    colors = _feature_colors(grouped["features"])
    styles = dict(zip(dict.fromkeys(settings), ["-", "--", ":", "-."] * 8, strict=False))
    markers = dict(zip(dict.fromkeys(settings), ["o", "s", "^", "D"] * 8, strict=False))

    fig = _figure(3.3 * len(panels) + 2.8, 2.9 * len(metrics) + 0.6)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(len(metrics), len(panels), squeeze=False, sharey="row")
    for r, metric in enumerate(metrics):
        part = long[long["metric"] == metric]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if panel == "chain":
                ticks = ["clean", *[k.tick() for k in chains]]
                wanted = ["clean", *[k.key for k in chains]]
                offsets = np.linspace(-0.15, 0.15, len(grouped)) if len(grouped) > 1 else [0.0]
                for offset, config in zip(offsets, grouped.index, strict=True):
                    points = part[part["config"] == config].set_index("key").reindex(wanted)
                    x = np.arange(len(wanted)) + offset
                    ax.errorbar(
                        x,
                        points["value"].astype(float) * 100,
                        yerr=points["std"].astype(float) * 100,
                        ls="",
                        marker=markers[settings[config]],
                        color=colors[grouped.at[config, "features"]],
                        capsize=2,
                        markersize=5,
                    )
                ax.set_xticks(range(len(wanted)), ticks)
                ax.set_xlim(-0.6, len(wanted) - 0.4)
                ax.set_xlabel("chains of perturbations", fontsize=8)
                title = "chains"
            else:
                ordered = [k for k in keys if k.kind == panel]
                for config in grouped.index:
                    points = part[(part["config"] == config) & part["kind"].isin(["clean", panel])]
                    points = points.sort_values("severity")
                    ax.errorbar(
                        points["severity"],
                        points["value"].astype(float) * 100,
                        yerr=points["std"].astype(float) * 100,
                        color=colors[grouped.at[config, "features"]],
                        ls=styles[settings[config]],
                        marker=markers[settings[config]],
                        markersize=4,
                        lw=1.5,
                        capsize=2,
                    )
                ax.set_xticks(
                    [0.0, *[k.severity for k in ordered]], ["clean", *[k.tick() for k in ordered]]
                )
                ax.set_xlabel(_KIND_AXES[panel][1], fontsize=8)
                title = _KIND_AXES[panel][0]
            if metric == "auc":
                ax.axhline(50, color="0.6", lw=0.8, ls=":")
            ax.tick_params(labelsize=8)
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(quality_label(f"test_{metric}"))
    handles = [Line2D([], [], color=colors[f], lw=2, label=feature_label(f)) for f in colors]
    if len(styles) > 1:
        handles += [
            Line2D([], [], color="0.3", ls=styles[s], marker=markers[s], label=s) for s in styles
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7.5, frameon=False)
    fig.suptitle(f"{provenance.study}: robustness of the test split to perturbations", fontsize=11)
    note = "clean = the unperturbed test split (severity 0)"
    if bool((grouped["n"] > 1).any()):
        note += "; mean ± std over seeds"
    if any(m == "auc" for m in metrics):
        note += "; dotted: chance AUC"
    _footer(fig, provenance, note)
    return fig


def reliability_diagram(
    frame: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    provenance: Provenance | None = None,
    n_bins: int = protocol.RELIABILITY_BINS,
) -> Figure:
    """Reliability diagrams of the test predictions: share of fakes against the mean predicted
    fake probability in ``n_bins`` equal-width bins (``bnn.metrics.reliability_curve``), one
    panel per setting and one line per feature set, the diagonal as reference, the ECE of each
    line in the legend (seeds pooled; marker area grows with the bin's images).

    Args:
        frame: Runs of ``load_runs``.
        predictions: ``{run_id: predictions}`` (``analysis.runs.load_all_predictions``).
        provenance: Footer; default from ``frame``.
        n_bins: Bins of the fake probability.

    Raises:
        ValueError: No configuration has predictions.
    """
    grouped, points = protocol.reliability(frame, predictions, n_bins)
    if grouped.empty:
        raise ValueError("reliability_diagram: no run has test predictions")
    provenance = provenance or Provenance.from_runs(frame)
    settings = _settings(grouped)
    panels = list(dict.fromkeys(settings))
    colors = _feature_colors(grouped["features"])
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig = _figure(4.3 * columns + 0.4, 4.3 * rows + 0.5)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(rows, columns, squeeze=False).ravel()
    largest = max(float(points["count"].max()), 1.0) if len(points) else 1.0
    for ax, panel in zip(axes, panels, strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.9, label="perfectly calibrated")
        members = grouped[settings == panel]
        members = members.iloc[members["features"].map(feature_sort_key).argsort()]
        for config, row in members.iterrows():
            curve = points[points["config"] == config]
            color = colors[row["features"]]
            label = f"{feature_label(row['features'])} (ECE {row['ece'] * 100:.1f}%)"
            ax.plot(
                curve["mean_predicted"],
                curve["fraction_positive"],
                color=color,
                lw=1.4,
                label=label,
            )
            ax.scatter(
                curve["mean_predicted"],
                curve["fraction_positive"],
                s=12 + 90 * curve["count"] / largest,
                color=color,
                edgecolor="white",
                linewidth=0.5,
                alpha=0.85,
                zorder=3,
            )
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), aspect="equal")
        ax.set_xlabel("mean predicted fake probability", fontsize=8)
        ax.set_ylabel("share of fakes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_title(panel, fontsize=9)
        ax.legend(loc="upper left", fontsize=7, frameon=True)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{provenance.study}: reliability of the test predictions", fontsize=11)
    pooled = bool((grouped["runs_used"] > 1).any())
    _footer(
        fig,
        provenance,
        f"{n_bins} equal-width bins, empty ones left out; marker area ~ images"
        + ("; seeds pooled" if pooled else ""),
    )
    return fig


def save_figure(
    fig: Figure,
    directory: str | Path,
    stem: str,
    formats=("png", "pdf", "svg"),
    dpi: int = 200,
) -> dict[str, Path]:
    """Saves ``<stem>.png/.pdf/.svg`` (or ``formats``) under ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        paths[fmt] = directory / f"{stem}.{fmt}"
        metadata = {"Creator": "bnn-deepfake analysis.plots"} if fmt in ("pdf", "svg") else None
        fig.savefig(paths[fmt], format=fmt, dpi=dpi, metadata=metadata)
    return paths
