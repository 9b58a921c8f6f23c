"""The evaluation protocol's figures (``analysis.protocol_frames``): the cross-dataset heat map, robustness
curves against perturbation severity and reliability diagrams of the test predictions.

Drawn and footed like every figure of ``analysis`` (``analysis.figstyle``); configurations are named
as in the tables (``analysis.labels``, ``bnn.feature_sets``) and a feature set keeps its colour
across panels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import protocol_frames
from analysis.figstyle import _figure, _footer, quality_label, run_label
from analysis.labels import dataset_name, setting_label
from analysis.provenance import Provenance
from bnn.data.perturb import PERTURBATION_KINDS
from bnn.feature_sets import display_label, feature_set_sort_key
from bnn.metric_table import METRICS

_SETTING_SKIP = ("backbone", "features", "freeze_backbone", "dataset")


def cell_label(row: pd.Series, varying=()) -> str:
    """``run_label`` plus what else varies between the study's configurations: the dataset it
    trained on (when that varies) and ``key=value`` of other axes (``varying``)."""
    label = run_label(row)
    if "dataset" in varying and row.get("dataset"):
        label += f" [{dataset_name(row['dataset'], article=False)}]"
    extras = [f"{k}={row[k]}" for k in varying if k not in _SETTING_SKIP and k in row]
    return label + (f", {', '.join(extras)}" if extras else "")


def _feature_colors(features) -> dict[str, tuple]:
    """A colour per feature set, in the paper's order (the same set, the same colour)."""
    ordered = sorted(dict.fromkeys(features), key=feature_set_sort_key)
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
    if not protocol_frames.extra_test_sets(frame):
        raise ValueError("cross_dataset_heatmap: the runs have no extra test set (eval_<set>_*)")
    provenance = provenance or Provenance.from_runs(frame)
    grouped, long = protocol_frames.cross_dataset(frame, metrics=(metric,))
    order = sorted(
        grouped.index,
        key=lambda i: (_settings(grouped)[i], feature_set_sort_key(grouped.at[i, "features"])),
    )
    varying = grouped.attrs.get("varying", [])
    sets = protocol_frames.evaluated_sets(frame)
    datasets = sorted(grouped["dataset"].dropna().unique()) if "dataset" in grouped else []
    own = (
        f"own test\n({dataset_name(datasets[0], article=False)})"
        if len(datasets) == 1
        else "own test"
    )
    names = {s: own if s == protocol_frames.OWN_TEST else s for s in sets}
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
    pretty = METRICS[metric].label if metric in METRICS else metric.replace("_", " ")
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
        f", cells trained on {dataset_name(datasets[0])}"
        if len(datasets) == 1
        else ""
    )
    ax.set_title(f"{provenance.study}: test {pretty} (%) across test sets{trained}", fontsize=10)
    replicated = bool((grouped["n"] > 1).any())
    _footer(fig, provenance, "mean over seeds" if replicated else "")
    return fig


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
    keys = protocol_frames.robustness_keys(frame)
    if not keys:
        raise ValueError("robustness_curves: the runs have no robust_<perturbation>_* metrics")
    provenance = provenance or Provenance.from_runs(frame)
    grouped, long = protocol_frames.robustness(frame, metrics=metrics)
    kinds = list(dict.fromkeys(k.kind for k in keys if k.kind in PERTURBATION_KINDS))
    chains = [k for k in keys if k.kind not in PERTURBATION_KINDS]
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
                ax.set_xlabel(PERTURBATION_KINDS.get(panel).axis, fontsize=8)
                title = PERTURBATION_KINDS.get(panel).title
            if metric == "auc":
                ax.axhline(50, color="0.6", lw=0.8, ls=":")
            ax.tick_params(labelsize=8)
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(quality_label(f"test_{metric}"))
    handles = [Line2D([], [], color=colors[f], lw=2, label=display_label(f)) for f in colors]
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
    n_bins: int = protocol_frames.RELIABILITY_BINS,
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
    grouped, points = protocol_frames.reliability(frame, predictions, n_bins)
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
        members = members.iloc[members["features"].map(feature_set_sort_key).argsort()]
        for config, row in members.iterrows():
            curve = points[points["config"] == config]
            color = colors[row["features"]]
            label = f"{display_label(row['features'])} (ECE {row['ece'] * 100:.1f}%)"
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
