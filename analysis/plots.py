"""Figures of a study's training: learning curves (per-epoch metrics of every run) and ROC curves.

Figure 1 and its measured-latency twin are ``analysis.fronts``; the evaluation protocol's figures
(cross-dataset heat map, robustness curves, reliability diagrams) are ``analysis.protocol_plots``.
Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas explicitly (pyplot and the
global backend are never touched), styled with seaborn, saved as PNG, PDF and SVG
(``analysis.figstyle.save_figure``), and carry the study's provenance (study, runs, git commit,
time) in a small footer (``analysis.figstyle``).
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figstyle import _figure, _footer, run_label
from analysis.provenance import Provenance
from studies.roc_figure import draw_roc


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
    draw_roc(ax, rocs, colors=sns.color_palette("colorblind", max(len(rocs), 1)), percent=True, lw=1.6)
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
