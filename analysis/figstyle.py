"""What every figure of ``analysis`` shares: the canvas, the provenance footer, colours per
family, axis labels of metrics, point labels, and saving as PNG/PDF/SVG.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas explicitly (pyplot and the
global backend are never touched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.labels import SELECTED_ON_TEST, is_selected_on_test
from analysis.provenance import Provenance
from bnn.feature_sets import display_label
from bnn.metric_table import METRICS

FAMILY_ORDER = ("BNext", "ResNet", "ViT", "VGG", "DenseNet", "Xception")
MARKERS = {False: "o", True: "^"}  # trainable, frozen backbone
COST_LABELS = {
    "ops": "OPs per image (FLOPs + BOPs/64)",
    "flops": "full-precision MACs per image",
    "bops": "binary MACs per image",
    "params": "parameters",
    "storage_bytes": "storage (bytes)",
    "trainable_params": "trainable parameters",
    "latency_ms": "measured latency per image, batch 1 (ms)",
    "latency_network_ms": "measured network latency per image, batch 1 (ms)",
    "throughput_ips": "measured throughput, batch 32 (images/s)",
    "latency_224px_ms": "measured latency per image at 224 px, batch 1 (ms)",
    "latency_network_224px_ms": "measured network latency at 224 px, batch 1 (ms)",
    "throughput_224px_ips": "measured throughput at 224 px, batch 32 (images/s)",
}
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
    ax,
    items: list[tuple[float, float, str]],
    fontsize: float,
    color: str,
    avoid: bool = True,
    log: bool = True,
) -> None:
    """Labels beside their points, pushed apart where points share a column.

    Positions along x are decades on a log axis (a linear axis counts as 3 decades wide). Points
    closer than 0.08 decades in x form a column; its labels keep a vertical gap of 3.5% of the y
    range (with a thin leader line where a label moved). Labels go right of their column; with
    ``avoid``, when the next column to the right is near (0.45 decades) they go left if there is
    room there, else above the point.
    """
    if not items:
        return
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()

    def pos(x: float) -> float:
        return np.log10(x) if log else 3.0 * (x - x_low) / (x_high - x_low)

    gap = 0.035 * (y_high - y_low)
    items = sorted(items, key=lambda item: pos(item[0]))
    columns, current = [], [items[0]]
    for item in items[1:]:
        if pos(item[0]) - pos(current[-1][0]) < 0.08:
            current.append(item)
        else:
            columns.append(current)
            current = [item]
    columns.append(current)
    for k, column in enumerate(columns):
        crowded = (
            avoid and k + 1 < len(columns) and pos(columns[k + 1][0][0]) - pos(column[-1][0]) < 0.45
        )
        side = (
            "right"
            if not crowded
            else "left"
            if pos(column[0][0]) - pos(x_low) > 0.45
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
    spec = METRICS.get(name)
    pretty = spec.label if spec else name.replace("_", " ")
    unit = " (%)" if spec and spec.percent else ""
    return f"{'Validation' if split == 'val' else 'Test'} {pretty}{unit}"


def _scale(metric: str) -> float:
    spec = METRICS.get(metric.partition("_")[2])
    return 100.0 if spec and spec.percent else 1.0


def run_label(row: pd.Series, seed: bool = False) -> str:
    """``BNext-T RGB+FFT+LBP (frozen)``, plus `` seed 1`` with ``seed`` and `` [selected on TEST]``
    for a run whose checkpoint was selected on the test split."""
    label = f"{row.get('model') or row.get('backbone')} {display_label(row.get('features', 'rgb'))}"
    if bool(row.get("freeze_backbone", False)):
        label += " (frozen)"
    if seed and "seed" in row and not pd.isna(row["seed"]):
        label += f" seed {row['seed']}"
    if is_selected_on_test(row):
        label += f" [{SELECTED_ON_TEST}]"
    return label


def _true(value) -> bool:
    """A bool column value that may be missing (pandas ``NA``): missing counts as False."""
    return not pd.isna(value) and bool(value)


def metric_label(metric: str) -> str:
    """An axis label for any metric column: a cost (``COST_LABELS``) or a quality (``quality_label``)."""
    return COST_LABELS.get(metric) or quality_label(metric)


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
