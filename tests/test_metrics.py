"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnn.metrics import compute_metrics, equal_error_rate


def test_perfect_separation():
    m = compute_metrics([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9])
    assert (m.accuracy, m.auc, m.eer, m.ap, m.accuracy_real, m.accuracy_fake) == (1.0, 1.0, 0.0, 1.0, 1.0, 1.0)
    assert m.count == 4 and m.roc["fpr"][0] == 0.0


def test_hand_computed_case():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.2, 0.7, 0.3, 0.8, 0.4, 0.9]
    m = compute_metrics(labels, scores)
    # Predictions at 0.5: real 0,1,0 -> 2/3 correct; fake 1,0,1 -> 2/3 correct.
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.accuracy_real == pytest.approx(2 / 3) and m.accuracy_fake == pytest.approx(2 / 3)
    # AUC: pairs (fake > real) of 9: 0.8 beats 3, 0.9 beats 3, 0.4 beats 0.2 and 0.3 -> 8/9.
    assert m.auc == pytest.approx(8 / 9)
    # AP: ranks 0.9(F) 0.8(F) 0.7(R) 0.4(F) ...: precision at recalls 1/3, 2/3, 1 -> 1, 1, 3/4.
    assert m.ap == pytest.approx((1 + 1 + 0.75) / 3)
    assert m.eer == pytest.approx(1 / 3)


def test_eer_interpolates_between_roc_points():
    fpr = np.array([0.0, 0.0, 0.5, 1.0])
    tpr = np.array([0.0, 0.4, 0.8, 1.0])
    # fnr = 1, 0.6, 0.2, 0; fpr - fnr = -1, -0.6, 0.3, 1: crossing between points 1 and 2 at w = 2/3.
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.0 + (2 / 3) * 0.5)


def test_single_class_gives_nan_auc_not_an_error():
    m = compute_metrics([1, 1], [0.7, 0.2])
    assert m.accuracy == 0.5 and math.isnan(m.auc) and math.isnan(m.accuracy_real)


def test_scalars_have_prefixes():
    s = compute_metrics([0, 1], [0.2, 0.8]).scalars("val_")
    assert set(s) == {"val_accuracy", "val_auc", "val_eer", "val_ap", "val_accuracy_real", "val_accuracy_fake", "val_count"}


@pytest.mark.parametrize(
    "labels, scores, accuracy, accuracy_real, accuracy_fake",
    [
        ([1, 1, 1, 1], [0.9, 0.6, 0.4, 0.2], 0.5, math.nan, 0.5),  # fakes of one generator
        ([0, 0, 0], [0.1, 0.7, 0.3], 2 / 3, 2 / 3, math.nan),  # reals only
    ],
    ids=["fake_only", "real_only"],
)
def test_one_class_gives_accuracy_and_recall_and_nan_ranking_metrics(labels, scores, accuracy, accuracy_real,
                                                                       accuracy_fake):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning either
        m = compute_metrics(labels, scores)
    assert m.accuracy == pytest.approx(accuracy) and m.count == len(labels) and m.roc == {}
    for value, expected in ((m.accuracy_real, accuracy_real), (m.accuracy_fake, accuracy_fake)):
        assert math.isnan(value) if math.isnan(expected) else value == pytest.approx(expected)
    assert math.isnan(m.auc) and math.isnan(m.eer) and math.isnan(m.ap)  # AP would be 1 for any fake-only scores
