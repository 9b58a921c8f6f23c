"""ROC curves drawn with matplotlib's object API: one drawing for every figure that shows them.

Used by the per-cell plot the study runner logs to MLflow (``studies.record_writer``) and by the
study figures (``analysis.plots.roc_curves``). Figures are ``matplotlib.figure.Figure`` objects on
an explicit Agg canvas: pyplot's global state and the global backend are never touched, so drawing
is safe in worker threads and in processes whose backend the user chose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def agg_figure(width: float, height: float, dpi: int = 100, **kwargs: Any) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas (``kwargs``: ``Figure``'s)."""
    fig = Figure(figsize=(width, height), dpi=dpi, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def draw_roc(ax: Axes, rocs: Mapping[str, Mapping[str, Sequence[float]]], colors: Sequence[Any] | None = None,
             auc: Mapping[str, float] | None = None, percent: bool = False, lw: float | None = None) -> None:
    """Draws one ROC curve per label on ``ax``, with its AUC in the legend label, and the chance
    diagonal. Axis labels, limits and the legend are the caller's.

    Args:
        ax: The axes.
        rocs: ``{label: {"fpr": [...], "tpr": [...]}}``; an empty label is shown as ``AUC x`` only.
        colors: One per curve (default: the axes' colour cycle).
        auc: The AUC to show per label (default: the area under the drawn points, trapezoidal).
        percent: Show the AUC in percent with two decimals (``87.30``), else as a fraction (``0.873``).
        lw: Line width of the curves (default: matplotlib's).
    """
    for i, (label, roc) in enumerate(rocs.items()):
        fpr, tpr = np.asarray(roc["fpr"], float), np.asarray(roc["tpr"], float)
        value = auc[label] if auc is not None and label in auc else float(np.trapezoid(tpr, fpr))
        shown = f"{value * 100:.2f}" if percent else f"{value:.3f}"
        style = {"color": colors[i]} if colors is not None else {}
        if lw is not None:
            style["lw"] = lw
        ax.plot(fpr, tpr, label=f"{label} (AUC {shown})" if label else f"AUC {shown}", **style)
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8)
