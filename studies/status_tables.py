"""What ``python -m studies plan`` and ``status`` print: the cells with their state and results, and
the Pareto set of a multi-objective study, as rich tables.

The states come from the study's Optuna storage (``studies.cell_queue``), the results from MLflow
through the record reader (``studies.record``), the cost from ``bnn.cost.detector_cost``.
"""

from __future__ import annotations

import optuna
from rich.table import Table

from bnn.cost import Cost, detector_cost
from bnn.latency import METRIC_LATENCY
from studies import record
from studies.cell_queue import cell_states, is_finished, load_optuna_study
from studies.record import ATTR_CELL_ID
from studies.record_writer import stale_summary

__all__ = ["cell_table", "cell_cost", "pareto_table", "stale_note", "study_states"]


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cell_table(study, states: dict, title: str, with_ops: bool = False, trials: dict | None = None) -> Table:
    """The cells with their status; with ``trials`` (cell id -> Optuna user attributes of its
    finished trial) also their accuracies and AUC, read from MLflow through ``studies.record``."""
    table = Table(title=title, title_justify="left")
    # Values that do not fit the terminal wrap ("fold") instead of ending in "…": two feature sets
    # must never read alike.
    table.add_column("cell", overflow="fold")
    for axis in list(study.cells[0].axes) if study.cells else []:
        table.add_column(axis, overflow="fold")
    teachers = any(cell.teacher is not None for cell in study.cells)
    if teachers:
        table.add_column("teacher")
    table.add_column("status")
    if with_ops:
        table.add_column("OPs (M)", justify="right")
        table.add_column("params (M)", justify="right")
    results = {}
    if trials is not None:
        table.add_column("val acc", justify="right")
        table.add_column("test acc", justify="right")
        table.add_column("test AUC", justify="right")
        shown = [record.METRIC_VAL_ACCURACY, record.METRIC_TEST_ACCURACY, record.METRIC_TEST_AUC]
        if study.spec.latency.enabled:
            table.add_column("latency (ms)", justify="right")
            shown.append(METRIC_LATENCY)
        run_ids = {cell_id: attrs.get(record.ATTR_RUN_ID) for cell_id, attrs in trials.items()}
        try:
            metrics = record.read_cell_metrics(study.tracking_uri, study.name, [r for r in run_ids.values() if r])
            results = {cell_id: metrics.get(run_id, {}) for cell_id, run_id in run_ids.items()}
        except Exception as err:  # the states come from Optuna; the results are only shown if readable
            table.caption = f"results not read from MLflow at {study.tracking_uri}: {type(err).__name__}: {err}"
    for cell in study.cells:
        status = states.get(cell.cell_id, "pending")
        style = {"done": "green", "failed": "red", "running": "yellow", "not comparable": "magenta"}.get(status, "")
        row = [cell.cell_id, *(str(v) for v in cell.axes.values())]
        if teachers:
            row.append(cell.teacher.cell_id if cell.teacher else "-")
        row.append(f"[{style}]{status}[/]" if style else status)
        if with_ops:
            cost = cell_cost(cell.config)
            row += [f"{cost.ops / 1e6:.1f}", f"{cost.params / 1e6:.2f}"]
        if trials is not None:
            values = results.get(cell.cell_id, {})
            row += [_fmt(values.get(name), 2 if name == METRIC_LATENCY else 4) for name in shown]
        table.add_row(*row)
    return table


def cell_cost(config) -> Cost:
    """Cost per image of a cell's detector at its resolution (meta device: no weights)."""
    return detector_cost(config.backbone, config.features, config.freeze_backbone,
                         (config.resolution, config.resolution))


def stale_note(study) -> str | None:
    """The line about runs of an earlier version of the study file (``record_writer.stale_summary``)."""
    return stale_summary(study, record.read_cell_runs(study.tracking_uri, study.name))


def study_states(study):
    """cell id -> state, cell id -> Optuna user attributes of its finished trial (they hold the
    MLflow run id, not the results: ``studies.record``), and the Optuna study (None before a run)."""
    optuna_study = load_optuna_study(study, create=False)
    trials = {}
    if optuna_study is not None:
        for t in optuna_study.get_trials(deepcopy=False):
            if is_finished(t):
                trials[t.user_attrs.get(ATTR_CELL_ID)] = t.user_attrs
    return cell_states(optuna_study), trials, optuna_study


def pareto_table(study, optuna_study) -> Table | None:
    """The Pareto set of a multi-objective study: Optuna's ``best_trials`` (the completed trials no
    other completed trial dominates on every objective), with their objective values; None for a
    single-objective study or before any trial completed."""
    objectives = study.spec.objectives
    if len(objectives) < 2 or optuna_study is None or len(optuna_study.directions) != len(objectives):
        return None
    complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    best = sorted(optuna_study.best_trials, key=lambda t: t.values[0], reverse=objectives[0].direction == "maximize")
    arrows = ", ".join(f"{o.metric} {'max' if o.direction == 'maximize' else 'min'}" for o in objectives)
    table = Table(title=f"Pareto set: {len(best)} of {len(complete)} completed trials ({arrows})",
                  title_justify="left")
    for name in ("trial", "cell", "axes", *(o.metric for o in objectives)):
        table.add_column(name, justify="right" if name in {o.metric for o in objectives} else "left")
    for t in best:
        table.add_row(str(t.number), str(t.user_attrs.get("cell_id", "-")), str(t.user_attrs.get("axes", "")),
                      *(_fmt(float(v)) for v in t.values))
    return table


