"""The metric a study selects and searches by: which names are valid, and its value for a cell.

A study's ``objective.metric`` must be one of the metrics its cells will log, so a misspelt name
(``val_acc``) is an error at ``validate`` instead of a study that can never be ranked. The valid
names come from metric *families*: functions of the study file that list the names one part of the
suite logs for every cell. ``bnn.train.scalar_names`` (``val_*``, ``test_*``, cost, ``best_epoch``)
is the first; a feature that logs more per cell (extra test sets, latency) appends its own family to
``METRIC_FAMILIES``, and the runner reads the objectives from every scalar a cell logged.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bnn.data.perturb import parse_robustness
from bnn.metric_table import spec_of
from bnn.protocol import TestSet, protocol_metric_names
from bnn.train import scalar_names

MetricFamily = Callable[[Any], Iterable[str]]  # the study file (studies.spec.StudyFile) -> names


def _protocol_family(spec: Any) -> list[str]:
    """``eval_<set>_*`` and ``robust_<perturbation>_*`` of the study's ``evaluate``/``robustness``."""
    sets = [TestSet(entry["name"], entry["dataset"]) for entry in spec.evaluate]
    return protocol_metric_names(sets, parse_robustness(spec.robustness))


def _latency_family(spec: Any) -> list[str]:
    """``latency_ms``, ``latency_network_ms``, ``throughput_ips`` (and per extra resolution) when the
    study measures latency (``latency.enabled``, on by default)."""
    return spec.latency.metric_names() if spec.latency.enabled else []


METRIC_FAMILIES: list[MetricFamily] = [lambda spec: scalar_names(), _protocol_family, _latency_family]


def objective_metric_names(spec: Any) -> list[str]:
    """Every metric name a cell of the study ``spec`` (a ``StudyFile``) logs, in family order."""
    names: list[str] = []
    for family in METRIC_FAMILIES:
        names += [name for name in family(spec) if name not in names]
    return names


def unknown_metric_message(metric: str, valid: list[str]) -> str:
    """The one-line error for an objective metric that no family logs."""
    close = ([name for name in valid if name.lower() == metric.lower()]
             or [name for name in valid if name.startswith(metric)]  # val_acc -> val_accuracy
             or difflib.get_close_matches(metric, valid, n=1))
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown metric '{metric}'; {hint}valid: {', '.join(valid)}"


def objective_value(scalars: Mapping[str, float], metric: str) -> float:
    """The objective of a finished cell from its logged scalars; NaN when missing or not a number
    (a one-class split has no AUC, an empty one no accuracy)."""
    value = scalars.get(metric)
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return float("nan")
    return float(value)


def not_comparable_reason(metric: str, scalars: Mapping[str, float]) -> str:
    """Why a cell's objective is NaN, in words a user can act on."""
    split = metric.split("_", 1)[0]
    count = scalars.get(f"{split}_count")
    if split in ("val", "test") and count is not None:
        if count == 0:
            return f"objective {metric} is NaN: the {split} split has no images"
        spec = spec_of(metric)
        if spec is not None and spec.two_class:
            images = f"{int(count)} image{'s' if count != 1 else ''}"
            return (f"objective {metric} is NaN: the {split} split has one class "
                    f"({images}); {spec.label} needs real and fake images")
    return f"objective {metric} is NaN"
