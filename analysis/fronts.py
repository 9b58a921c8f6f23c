"""Figure 1 (quality against OPs), its measured-latency twin, and a front of any two metrics.

All three are one drawing (``front_figure``): one point per configuration, colour = architecture
family, marker = trainable (circle) or frozen (triangle) backbone, marker area ~ parameters, error
bars = std over seeds, the Pareto front as a staircase and its points labelled. Points timed on
different hosts (``analysis.latency_frames``) keep their host: a fill style per host (filled, hollow,
half-filled, ...) with a legend entry and a front per host.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from analysis import data_audit, latency_frames
from analysis.figstyle import (
    COST_LABELS,
    MARKERS,
    _figure,
    _footer,
    _place_labels,
    _scale,
    _true,
    family_colors,
    metric_label,
    quality_label,
    run_label,
)
from analysis.literature import SHORT_CITATION, published_points
from analysis.pareto import pareto_set, staircase
from analysis.provenance import Provenance
from analysis.replicates import as_grouped, require_metrics

FILL_STYLES = ("full", "none", "left", "bottom", "right", "top")  # host 1, 2, ... (cycled)
FRONT_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))
NO_PUBLISHED_LATENCY = f"Published points ({SHORT_CITATION}) left out: the paper gives no latency measured on these hosts"


def _host_handles(hosts: list[str]) -> list[Line2D]:
    if len(hosts) < 2:
        return []
    return [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color="0.3",
            fillstyle=FILL_STYLES[i % len(FILL_STYLES)],
            markersize=7,
            label=textwrap.fill(f"host {i + 1}: {host}", 34),
        )
        for i, host in enumerate(hosts)
    ]


def _limits(ax, xs: pd.Series, log: bool) -> None:
    """x limits padded more on the right, where labels go."""
    low, high = float(xs.min()), float(xs.max())
    if log:
        span = np.log10(high / low)  # decades
        ax.set_xlim(low / 10 ** (0.08 * span + 0.03), high * 10 ** (0.18 * span + 0.12))
    else:
        span = (high - low) or abs(high) or 1.0
        ax.set_xlim(low - 0.06 * span, high + 0.3 * span)


def front_figure(
    points: pd.DataFrame,
    x: str,
    y: str,
    maximize_x: bool = False,
    maximize_y: bool = True,
    log_x: bool = True,
    published: pd.DataFrame | None = None,
    published_on: str = "",
    annotate: str = "front",
    provenance: Provenance | None = None,
    title: str = "",
    note: str = "",
    floors: dict[str, float] | None = None,
) -> Figure:
    """The drawing behind ``figure1``, ``figure1_latency`` and ``objectives_figure``.

    Args:
        points: One row per configuration (and host): ``x``, ``y``, optional ``<x>_std`` /
            ``<y>_std`` (error bars), ``family``, ``freeze_backbone``, ``params`` and ``host``
            (None or one label: rows of different hosts get their own fill style and front).
        x, y: Columns on the axes; ``y`` in percent when it is a metric in [0, 1].
        maximize_x, maximize_y: Directions of the Pareto front.
        log_x: Log x axis (costs and latencies), else linear.
        published: Literature rows (``ops``, ``y`` already in display units, ``params_m``,
            ``frozen``, ``model``): hollow grey points, only on an OPs axis.
        published_on: The datasets of ``published``, for the legend.
        annotate: ``"front"`` labels the front's points, ``"all"`` every point, ``"none"``.
        provenance: Footer (study, runs, git commit, time).
        title: Axes title.
        note: Second footer line.
        floors: ``{label: value}`` drawn as horizontal reference lines (``y`` units, before the
            percent scaling): what a baseline that sees no network reaches (``analysis.data_audit``).
    """
    published = pd.DataFrame() if published is None else published
    points = points.reset_index(drop=True).copy()
    # Display units from here on: metrics in [0, 1] in percent.
    for metric in dict.fromkeys((x, y)):
        for column in (metric, f"{metric}_std"):
            if column in points:
                points[column] = points[column].astype(float) * _scale(metric)
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
    host = points.get(latency_frames.HOST, pd.Series(None, index=points.index, dtype=object))
    hosts = list(dict.fromkeys(h for h in host if isinstance(h, str)))
    style = {h: i for i, h in enumerate(hosts)}
    ys = points[y]
    y_std = points.get(f"{y}_std", pd.Series(np.nan, points.index))
    x_std = points.get(f"{x}_std", pd.Series(np.nan, points.index))
    for i, row in points.iterrows():
        color = colors.get(row.get("family"), "0.3")
        xerr = None if np.isnan(x_std[i]) else x_std[i]
        yerr = None if np.isnan(y_std[i]) else y_std[i]
        if xerr is not None or yerr is not None:
            ax.errorbar(row[x], ys[i], xerr=xerr, yerr=yerr, color=color, lw=1, capsize=2, zorder=2)
        fill = FILL_STYLES[style.get(host[i], 0) % len(FILL_STYLES)]
        if fill == "full":
            ax.scatter(
                row[x],
                ys[i],
                s=area([row.get("params", np.nan)]),
                marker=MARKERS[bool(frozen[i])],
                color=color,
                edgecolor="white",
                linewidth=0.6,
                alpha=0.9,
                zorder=3,
            )
        else:  # another host: same marker and colour, another fill
            ax.plot(
                row[x],
                ys[i],
                ls="",
                marker=MARKERS[bool(frozen[i])],
                markersize=float(np.sqrt(area([row.get("params", np.nan)])[0])),
                fillstyle=fill,
                color=color,
                markerfacecoloralt="white",
                markeredgewidth=1.3,
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
    directions = [
        (x, "maximize" if maximize_x else "minimize"),
        (y, "maximize" if maximize_y else "minimize"),
    ]
    mask = pd.Series(False, index=points.index)
    front_handles = []
    for k, label in enumerate(hosts or [None]):
        part = points if not hosts else points[host == label]
        on_front = pareto_set(part, directions)
        mask[on_front[on_front].index] = True
        steps, where = staircase(part, x, y, on_front, maximize_x)
        ls = FRONT_STYLES[k % len(FRONT_STYLES)]
        if len(steps) > 1:  # a front of one point is the point itself
            ax.step(steps[x], steps[y], where=where, color="0.15", ls=ls, lw=1.1, zorder=1)
        name = "Pareto front" if len(hosts) < 2 else f"Pareto front, host {k + 1}"
        front_handles.append(Line2D([], [], color="0.15", ls=ls, lw=1.1, label=name))
    xs = pd.concat([points[x], published.get("ops", pd.Series(dtype=float))]).astype(float)
    if log_x:
        narrow = np.log10(xs.max() / xs.min()) < 1.0  # less than a decade: more ticks
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if narrow else (1.0, 2.0, 5.0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        # OPs as 88M, 1.2G; times and rates in their axis label's unit (0.5 ms, not 500m).
        plain = latency_frames.is_latency(x)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}") if plain else EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
    _limits(ax, xs, log_x)
    ax.set_xlabel(f"{metric_label(x)}{', log scale' if log_x else ''}")
    ax.set_ylabel(metric_label(y) if y in COST_LABELS else quality_label(y))
    labelled = (
        points.index if annotate == "all" else points.index[mask] if annotate == "front" else []
    )
    ours = [(points.loc[i, x], ys[i], run_label(points.loc[i])) for i in labelled]
    theirs = [
        (row["ops"], row["y"], f"{row['model']}{' (frozen)' if _true(row['frozen']) else ''}")
        for _, row in published.iterrows()
    ]
    _place_labels(ax, ours, fontsize=7, color="0.1", avoid=False, log=log_x)
    _place_labels(ax, theirs, fontsize=6, color="0.45", log=log_x)
    ax.set_title(title, fontsize=11)

    handles = [
        Line2D([], [], ls="", marker="o", color=colors[f], markersize=7, label=f)
        for f in colors
        if f in set(points.get("family", []))
    ]
    handles += [
        Line2D([], [], ls="", marker=MARKERS[False], color="0.3", markersize=7, label="trainable"),
        Line2D([], [], ls="", marker=MARKERS[True], color="0.3", markersize=7, label="frozen"),
    ]
    handles += _host_handles(hosts) + front_handles
    for (label, value), style_ in zip((floors or {}).items(), FLOOR_STYLES, strict=False):
        ax.axhline(value * _scale(y), color="0.45", lw=1.0, ls=style_, zorder=0)
        handles.append(Line2D([], [], color="0.45", lw=1.0, ls=style_,
                              label=textwrap.fill(f"{label} ({value * _scale(y):.1f})", 34)))
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
    _footer(fig, provenance, note)
    return fig


FLOOR_STYLES = (":", "-.")


def _title(provenance: Provenance, x: str, y: str) -> str:
    return (
        f"{provenance.study}: {metric_label(y).split(' (')[0].lower()} "
        f"against {metric_label(x).split(' (')[0]}"
    )


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
        cost: Cost column for x (``ops``, ``params``, ``bops``, ``storage_bytes``, ...); a
            measured latency draws ``figure1_latency``.
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
        ValueError: No run has both.
    """
    if latency_frames.is_latency(cost):
        return figure1_latency(frame, cost, quality, provenance, title, annotate)
    require_metrics(frame, [cost, quality])
    grouped = as_grouped(frame)
    provenance = provenance or Provenance.from_runs(grouped)
    points = grouped.dropna(subset=[cost, quality]).reset_index(drop=True)
    if points.empty:
        raise ValueError(f"no run has both {cost!r} and {quality!r}")
    published, published_on = (
        published_points(literature, grouped, quality) if cost == "ops" else (pd.DataFrame(), "")
    )
    note = (
        'published points: x from the paper\'s "FLOPs (G)" column (BNext rows: OPs/1e8; '
        "others read as GFLOPs), y as published"
        if len(published)
        else ""
    )
    return front_figure(
        points.drop(columns=[latency_frames.HOST], errors="ignore"),
        cost,
        quality,
        published=published,
        published_on=published_on,
        annotate=annotate,
        provenance=provenance,
        title=title or _title(provenance, cost, quality),
        note=note,
        floors=data_audit.floors(frame, quality),
    )


def figure1_latency(
    frame: pd.DataFrame,
    metric: str = latency_frames.LATENCY,
    quality: str = "test_accuracy",
    provenance: Provenance | None = None,
    title: str | None = None,
    annotate: str = "front",
) -> Figure:
    """Figure 1's twin: quality against measured latency (``latency_ms``), same encoding.

    One point per configuration and host (seeds averaged within a host, never across hosts);
    x error bars = the latency's std over seeds. With several hosts each has its own fill style,
    legend entry and Pareto front, and the footer says to compare within a host. Published points
    are left out (no latency of theirs was measured here), which the footer says.

    Args:
        frame: Runs of ``load_runs`` (grouped frames lose the hosts: one host assumed).
        metric: A latency or throughput column (``latency_ms``, ``latency_224px_ms``,
            ``throughput_ips``: throughput is maximised, latencies minimised).
        quality: Quality column for y.
        provenance: Footer; default from ``frame``.
        title: Axes title; default names the study.
        annotate: ``"front"``, ``"all"`` or ``"none"``, as in ``figure1``.

    Raises:
        KeyError: ``metric`` or ``quality`` is not a column of the runs.
        ValueError: No run has both (e.g. latency was not measured: the message says why).
    """
    require_metrics(frame, [quality])
    if metric not in frame:
        raise KeyError(
            f"the runs have no {metric!r}: {latency_frames.describe(frame, metric) or 'not measured'}"
        )
    grouped = latency_frames.group_by_host(frame)
    provenance = provenance or Provenance.from_runs(grouped)
    points = grouped.dropna(subset=[metric, quality]).reset_index(drop=True)
    if points.empty:
        raise ValueError(
            f"no run has both {metric!r} and {quality!r}: {latency_frames.describe(frame, metric)}"
        )
    if latency_frames.HOST not in points:
        points[latency_frames.HOST] = points.get(latency_frames.HOSTS)
    timed = int(latency_frames.measured(frame, metric).sum())
    subset = (f"Points: the {timed} of {len(frame)} runs with a latency (accuracy averaged over those)."
              if 0 < timed < len(frame) else "")
    note = " ".join(
        t for t in (latency_frames.describe_hosts(frame, metric), subset, NO_PUBLISHED_LATENCY + ".") if t
    )
    return front_figure(
        points,
        metric,
        quality,
        maximize_x=metric.startswith("throughput_"),
        annotate=annotate,
        provenance=provenance,
        title=title or _title(provenance, metric, quality),
        note=textwrap.fill(note, 190),
        floors=data_audit.floors(frame, quality),
    )
