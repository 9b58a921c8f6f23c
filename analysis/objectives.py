"""A study's objectives: the Pareto set over all of them, and a front of any two metrics.

A study declares its objectives (``studies.spec``; the selection objective first) and the
runner records them on the parent run: ``frame.attrs["objectives"]`` of ``load_runs``, a list of
``{"metric": ..., "direction": "maximize" | "minimize"}``, empty for studies recorded before.
``pareto_set_table`` lists the configurations no other beats on all objectives at once (means
over seeds); ``objectives_figure`` draws any two metric columns with their 2-D front, in Figure 1's
encoding (``analysis.fronts``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import latency_frames
from analysis.figstyle import COST_LABELS, metric_label, run_label
from analysis.fronts import front_figure
from analysis.pareto import DIRECTIONS, pareto_set
from analysis.provenance import Provenance
from analysis.replicates import as_grouped, replicate_keys, require_metrics
from analysis.table_format import DASH, Column, Table, latex_escape
from bnn.feature_sets import display_label
from bnn.metric_table import spec_of

ARROWS = {"maximize": "↑", "minimize": "↓"}
_SHOWN = ("backbone", "features", "freeze_backbone")  # in the Configuration column


def _lower_is_better(metric: str) -> bool:
    spec = spec_of(metric)
    return spec is not None and spec.lower_is_better


def study_objectives(frame: pd.DataFrame) -> list[dict[str, str]]:
    """The study's objectives from ``frame.attrs["objectives"]``, selection objective first.

    Returns:
        ``[{"metric", "direction"}]``; for a study recorded before objectives were recorded, its
        selection metric ``val_accuracy`` maximised (what the runner selected on by default).
    """
    recorded = [
        {"metric": o["metric"], "direction": o.get("direction", "maximize")}
        for o in frame.attrs.get("objectives") or []
        if isinstance(o, dict) and o.get("metric")
    ]
    return recorded or [{"metric": "val_accuracy", "direction": "maximize"}]


def direction(metric: str, frame: pd.DataFrame | None = None) -> str:
    """``"maximize"`` or ``"minimize"``: the study's own where ``metric`` is an objective, else
    minimise costs, latencies and the metrics ``bnn.metric_table`` says are lower-is-better (EER,
    loss, ECE, Brier), maximise the rest."""
    for objective in study_objectives(frame) if frame is not None else []:
        if objective["metric"] == metric:
            return objective["direction"]
    if metric.startswith("throughput_"):
        return "maximize"
    if metric in COST_LABELS or latency_frames.is_latency(metric) or _lower_is_better(metric):
        return "minimize"
    return "maximize"


def default_front_metrics(frame: pd.DataFrame) -> list[str] | None:
    """The first two objectives when the study has two or more, else None (nothing to plot)."""
    recorded = frame.attrs.get("objectives") or []
    if len(recorded) < 2:
        return None
    return [o["metric"] for o in study_objectives(frame)[:2]]


def _points(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Configuration rows (per host where a metric is a measured speed), means over seeds."""
    if any(latency_frames.is_latency(m) for m in metrics):
        return latency_frames.group_by_host(frame)
    return as_grouped(frame)


def objectives_figure(
    frame: pd.DataFrame,
    x: str,
    y: str,
    directions: dict[str, str] | None = None,
    provenance: Provenance | None = None,
    annotate: str = "front",
) -> Figure:
    """Any two metric columns against each other, their 2-D Pareto front highlighted.

    Args:
        frame: Runs of ``load_runs``.
        x, y: Metric columns (``test_auc``, ``latency_ms``, ``eval_heldout_auc``, ``ops``, ...).
        directions: ``{metric: "maximize" | "minimize"}``; default ``direction`` of each.
        provenance: Footer; default from ``frame``.
        annotate: ``"front"``, ``"all"`` or ``"none"``, as in ``analysis.fronts.figure1``.

    Raises:
        KeyError: A metric is not a column of the runs.
        ValueError: No run has both.
    """
    require_metrics(frame, [x, y])
    directions = {m: (directions or {}).get(m) or direction(m, frame) for m in (x, y)}
    points = _points(frame, [x, y]).dropna(subset=[x, y]).reset_index(drop=True)
    if points.empty:
        raise ValueError(f"no run has both {x!r} and {y!r}")
    provenance = provenance or Provenance.from_runs(frame)
    log_x = (x in COST_LABELS or latency_frames.is_latency(x)) and bool((points[x] > 0).all())
    names = [f"{metric_label(m).split(' (')[0]} {ARROWS[directions[m]]}" for m in (x, y)]
    note = latency_frames.describe_hosts(frame) if latency_frames.HOST in points else ""
    return front_figure(
        points,
        x,
        y,
        maximize_x=directions[x] == "maximize",
        maximize_y=directions[y] == "maximize",
        log_x=log_x,
        annotate=annotate,
        provenance=provenance,
        title=f"{provenance.study}: {names[1]} against {names[0]}",
        note=note,
    )


def _display(metric: str) -> tuple[float, int, str]:
    """(scale, decimals, unit) a metric is shown with in a table."""
    spec = spec_of(metric)
    if spec is not None and spec.percent:
        return 100.0, spec.decimals, " (%)"
    if metric in ("ops", "flops", "bops"):
        return 1e-9, 3, " (G)"
    if metric in ("params", "binary_params", "trainable_params"):
        return 1e-6, 2, " (M)"
    if metric.startswith("throughput_"):
        return 1.0, 1, " (img/s)"
    if latency_frames.is_latency(metric):
        return 1.0, 2, " (ms)"
    return 1.0, 4, ""


def pareto_set_table(frame: pd.DataFrame, objectives: list | None = None) -> Table:
    """The configurations no other configuration beats on all objectives at once.

    n-dimensional (``analysis.pareto.pareto_set``), each objective with its direction, on the
    means over seeds; with a measured speed among the objectives, per host (a configuration timed
    on two hosts is two rows, compared within its host only).

    Args:
        frame: Runs of ``load_runs``.
        objectives: ``[{"metric", "direction"}]`` or ``(metric, direction)`` pairs; default the
            study's (``study_objectives``).

    Returns:
        Rows sorted by the first objective (best first). Columns Configuration, the parameters
        that vary between the study's configurations, each objective (mean ± std over seeds,
        header with ↑ maximise / ↓ minimise), Host where a speed is an objective, n. The frame
        (CSV) keeps raw objective values, ``run_ids`` and ``cell_ids``.

    Raises:
        KeyError: An objective is not a column of the runs.
        ValueError: A direction other than maximize/minimize.
    """
    pairs = [
        (o["metric"], o["direction"]) if isinstance(o, dict) else tuple(o)
        for o in (objectives if objectives is not None else study_objectives(frame))
    ]
    metrics = [m for m, _ in pairs]
    require_metrics(frame, metrics)
    bad = [d for _, d in pairs if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"objective direction {bad[0]!r}; valid: {', '.join(DIRECTIONS)}")
    grouped = _points(frame, metrics).reset_index(drop=True)
    per_host = latency_frames.HOST in grouped and grouped[latency_frames.HOST].notna().any()
    hosts = grouped[latency_frames.HOST] if per_host else pd.Series("", index=grouped.index)
    in_set = pd.Series(False, index=grouped.index)
    for _, part in grouped.groupby(hosts.fillna(""), sort=False):
        found = pareto_set(part, pairs)
        in_set[found[found].index] = True
    incomplete = int(grouped[metrics].isna().any(axis=1).sum())
    chosen = grouped[in_set]
    first, first_direction = pairs[0]
    chosen = chosen.sort_values(first, ascending=first_direction == "minimize", kind="stable")

    keys = [k for k in grouped.attrs.get("grouped_by", replicate_keys(frame)) if k in grouped]
    varying = [
        k
        for k in keys
        if k not in _SHOWN and k != latency_frames.HOST and grouped[k].astype(str).nunique() > 1
    ]
    table = pd.DataFrame(
        {
            "block": "ours",
            "configuration": [run_label(row) for _, row in chosen.iterrows()],
            "features": [display_label(f) for f in chosen.get("features", ["rgb"] * len(chosen))],
        },
        index=chosen.index,
    )
    columns = [Column("configuration", "Configuration", "Configuration")]
    for key in varying:
        table[key] = [DASH if pd.isna(v) else str(v) for v in chosen[key]]
        columns.append(Column(key, key, latex_escape(key)))
    for metric, goal in pairs:
        scale, decimals, unit = _display(metric)
        table[metric] = chosen[metric] * scale
        std = chosen.get(f"{metric}_std", pd.Series(np.nan, index=chosen.index))
        table[f"{metric}_std"] = std * scale
        header = f"{ARROWS[goal]} {metric}{unit}"
        columns.append(Column(metric, header, latex_escape(header), decimals, std=f"{metric}_std"))
    if per_host:
        table["host"] = chosen[latency_frames.HOST]
        columns.append(Column("host", "Host", "Host"))
    for column in ("n", "seeds", "run_ids", "cell_ids"):
        table[column] = chosen.get(column)
    columns.append(Column("n", "n", "$n$", 0))

    described = ", ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in pairs)
    caption = (
        f"Pareto set over the study's {len(pairs)} objectives, {described}: the "
        f"{len(chosen)} of {len(grouped)} configurations no other one beats on all of them at "
        "once (means over seeds; ↑ higher is better, ↓ lower is better)."
    )
    notes = [
        "A configuration is left out when another is at least as good on every objective and "
        "better on one; configurations equal on all objectives are all kept."
    ]
    if incomplete:
        notes.append(f"{incomplete} configuration(s) lack an objective's value and are left out.")
    if per_host:
        notes.append(f"{latency_frames.describe_hosts(frame)} The set is computed within each host.")
    provenance = Provenance.from_runs(frame)
    return Table(
        table.reset_index(drop=True), columns, caption, "tab:pareto-set", notes, provenance
    )


def has_objectives(frame: pd.DataFrame) -> bool:
    """Whether the study recorded two or more objectives (then the report shows their set)."""
    return len(frame.attrs.get("objectives") or []) >= 2


def front_pair(frame: pd.DataFrame, requested: list[str] | None = None) -> list[str] | None:
    """The two metrics to draw as a front: ``requested`` (checked), else the study's first two
    objectives when it has two or more; None for none (``requested=[]`` asks for none).

    Raises:
        ValueError: ``requested`` is not two names.
        KeyError: A requested metric is not a column of the runs (the message lists metrics).
    """
    if requested is None:
        return default_front_metrics(frame)
    if isinstance(requested, str):
        requested = [m.strip() for m in requested.split(",") if m.strip()]
    if not requested:
        return None
    if len(requested) != 2:
        raise ValueError(f"front_metrics: two metric columns (x, y), got {list(requested)}")
    require_metrics(frame, requested)
    return list(requested)
