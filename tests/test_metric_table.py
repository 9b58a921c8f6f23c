"""The metric table (``bnn.metric_table``): one row per metric, read by the protocol, the objective
check, figure axes and tables; every row checked against what ``bnn.metrics`` computes."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import objectives
from analysis.figstyle import _scale, quality_label
from bnn import protocol
from bnn.metric_table import EVAL, MAXIMIZE, METRICS, MINIMIZE, ROBUST, metrics_on, spec_of
from bnn.metrics import compute_metrics


@pytest.mark.parametrize("name", list(METRICS))
def test_contract_every_metric_row(name):
    spec = METRICS[name]
    assert spec.direction in (MAXIMIZE, MINIMIZE, None)
    computed = compute_metrics(np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.6, 0.4])).scalars()
    if name != "loss":  # the training loss is logged by bnn.train, not computed from scores
        assert name in computed
        if spec.percent:
            assert 0 <= computed[name] <= 1
    for column in (name, f"test_{name}", f"eval_cifake_{name}", f"robust_jpeg_75_{name}"):
        assert spec_of(column) is spec, column
    if spec.direction is not None:
        assert objectives.direction(f"test_{name}") == spec.direction
    assert quality_label(f"test_{name}").endswith(" (%)") == spec.percent
    assert _scale(f"test_{name}") == (100.0 if spec.percent else 1.0)
    assert spec.column_header().startswith(spec.header) and spec.label and spec.title[0].isupper()
    assert spec.better == {MAXIMIZE: "higher", MINIMIZE: "lower", None: None}[spec.direction]
    assert (EVAL in spec.splits) == (name in protocol.EVAL_METRICS)
    assert (ROBUST in spec.splits) == (name in protocol.ROBUST_METRICS)


def test_table_facts():
    assert [m for m in METRICS if METRICS[m].lower_is_better] == ["eer", "ece", "brier", "loss"]
    assert set(metrics_on(ROBUST)) < set(metrics_on(EVAL))
    assert [m for m in METRICS if METRICS[m].two_class] == ["auc", "eer", "ap", "tpr_at_fpr_1pct",
                                                            "tpr_at_fpr_0p1pct"]
    # the longest name wins at a column's end, and columns that are not metrics have no row
    assert spec_of("eval_x_accuracy_real").name == "accuracy_real"
    assert spec_of("val_eer_threshold").name == "eer_threshold"
    assert spec_of("source_gan_auc").name == "auc"
    for column in ("test_auc_ci_low", "ops", "latency_ms", "best_epoch", "test_aucx"):
        assert spec_of(column) is None, column
    assert METRICS["accuracy_valthr"].column_latex() == r"Acc.\ @val.\ thr.\ (\%)"
    assert METRICS["brier"].column_header() == "Brier" and METRICS["ece"].column_header() == "ECE (%)"
