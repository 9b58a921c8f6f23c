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
    assert set(s) == {"val_accuracy", "val_auc", "val_eer", "val_ap", "val_accuracy_real", "val_accuracy_fake",
                      "val_ece", "val_brier", "val_tpr_at_fpr_1pct", "val_tpr_at_fpr_0p1pct", "val_eer_threshold",
                      "val_accuracy_valthr", "val_count"}


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


# --- calibration, operating points, bootstrap intervals, per-source metrics (issue 12) ---------


def test_metrics_fields_in_order():
    from dataclasses import fields

    from bnn.metrics import Metrics

    assert [f.name for f in fields(Metrics)] == [
        "accuracy", "auc", "eer", "ap", "accuracy_real", "accuracy_fake", "ece", "brier", "tpr_at_fpr_1pct",
        "tpr_at_fpr_0p1pct", "eer_threshold", "accuracy_valthr", "count", "roc"]


def test_ece_and_brier_hand_computed():
    from bnn.metrics import expected_calibration_error

    labels = [1, 0, 1, 0]
    scores = [0.9, 0.85, 0.3, 0.1]
    # Top-label: predicted fake iff p >= 0.5 -> 1, 1, 0, 0; confidence max(p, 1-p) -> 0.9, 0.85, 0.7, 0.9;
    # correct -> 1, 0, 0, 1. Bins of width 1/15, (lo, hi]: 0.9 in (13/15, 14/15] = (0.867, 0.933],
    # 0.85 in (12/15, 13/15] = (0.8, 0.867], 0.7 in (10/15, 11/15] = (0.667, 0.733].
    #   bin 0.9:  2 images, accuracy 1, confidence 0.9  -> 2/4 * |1 - 0.9|  = 0.05
    #   bin 0.85: 1 image,  accuracy 0, confidence 0.85 -> 1/4 * 0.85       = 0.2125
    #   bin 0.7:  1 image,  accuracy 0, confidence 0.7  -> 1/4 * 0.7        = 0.175
    # ECE = 0.4375 (the fake at 0.9 and the real at 0.1 share a bin: the top-label definition).
    m = compute_metrics(labels, scores)
    assert m.ece == pytest.approx(0.4375)
    assert expected_calibration_error(labels, scores) == pytest.approx(0.4375)
    # Brier = mean (p - y)^2 = (0.1^2 + 0.85^2 + 0.7^2 + 0.1^2) / 4 = 1.2325 / 4.
    assert m.brier == pytest.approx(1.2325 / 4)
    y, p = np.array(labels), np.array(scores)
    assert m.brier == pytest.approx(float(np.mean((p - y) ** 2)))


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 images predicted fake at 0.8 of which 8 are fake: accuracy 0.8 = confidence 0.8.
    assert compute_metrics([1] * 8 + [0] * 2, [0.8] * 10).ece == pytest.approx(0.0)


def test_ece_and_brier_nan_for_scores_that_are_not_probabilities():
    m = compute_metrics([0, 1], [-3.0, 5.0])
    assert math.isnan(m.ece) and math.isnan(m.brier) and m.auc == 1.0


def test_tpr_at_low_fpr_on_a_hand_made_roc():
    # 1000 reals: 1 at 0.95, 9 at 0.85, 990 at 0.1; 100 fakes: 50 at 0.99, 30 at 0.9, 20 at 0.2.
    labels = [0] * 1000 + [1] * 100
    scores = [0.95] + [0.85] * 9 + [0.1] * 990 + [0.99] * 50 + [0.9] * 30 + [0.2] * 20
    # ROC (threshold: FPR, TPR): 0.99: 0, .5; 0.95: .001, .5; 0.9: .001, .8; 0.85: .01, .8; 0.2: .01, 1; 0.1: 1, 1.
    m = compute_metrics(labels, scores)
    assert m.tpr_at_fpr_0p1pct == pytest.approx(0.8)  # FPR <= 0.001 includes the point at exactly 0.001
    assert m.tpr_at_fpr_1pct == pytest.approx(1.0)
    # Without the 0.9 fakes' point at FPR 0.001 the best is the 0.99 point (TPR 0.5):
    m2 = compute_metrics(labels, [0.95] * 2 + [0.85] * 8 + [0.1] * 990 + [0.99] * 50 + [0.9] * 30 + [0.2] * 20)
    assert m2.tpr_at_fpr_0p1pct == pytest.approx(0.5)


def test_eer_threshold_and_accuracy_at_validation_threshold():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.2, 0.7, 0.3, 0.8, 0.4, 0.9]
    # Full ROC: thr 0.9 (0, 1/3), 0.8 (0, 2/3), 0.7 (1/3, 2/3), 0.4 (1/3, 1), ...; |FPR - FNR| is 0 at 0.7.
    m = compute_metrics(labels, scores)
    assert m.eer_threshold == pytest.approx(0.7)
    # Own threshold 0.7: reals 0.2, 0.3 right, 0.7 wrong; fakes 0.8, 0.9 right, 0.4 wrong -> 4/6.
    assert m.accuracy_valthr == pytest.approx(4 / 6)
    # A validation threshold of 0.35: only the real at 0.7 is wrong -> 5/6.
    given = compute_metrics(labels, scores, val_threshold=0.35)
    assert given.accuracy_valthr == pytest.approx(5 / 6) and given.eer_threshold == pytest.approx(0.7)
    assert math.isnan(compute_metrics(labels, scores, val_threshold=float("nan")).accuracy_valthr)
    # Perfect separation: FPR = FNR = 0 at the lowest fake score.
    assert compute_metrics([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9]).eer_threshold == pytest.approx(0.6)


@pytest.mark.parametrize("labels, scores, brier", [
    ([1, 1, 1, 1], [0.9, 0.6, 0.4, 0.2], (0.01 + 0.16 + 0.36 + 0.64) / 4),
    ([0, 0, 0], [0.1, 0.7, 0.3], (0.01 + 0.49 + 0.09) / 3),
], ids=["fake_only", "real_only"])
def test_one_class_new_metrics(labels, scores, brier):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(labels, scores)
        given = compute_metrics(labels, scores, val_threshold=0.5)
    assert math.isnan(m.tpr_at_fpr_1pct) and math.isnan(m.tpr_at_fpr_0p1pct) and math.isnan(m.eer_threshold)
    assert math.isnan(m.accuracy_valthr)  # no own EER threshold
    assert given.accuracy_valthr == pytest.approx(m.accuracy)  # a validation threshold is usable
    assert math.isfinite(m.ece) and m.brier == pytest.approx(brier)


def test_empty_input_all_nan():
    m = compute_metrics([], [])
    assert m.count == 0 and all(math.isnan(v) for k, v in m.scalars().items() if k != "count")


def test_reliability_curve():
    from bnn.metrics import reliability_curve

    # 2 bins [0, 0.5], (0.5, 1]: 0.1, 0.3, 0.2 (one fake) -> mean 0.2, 1/3 fake; 0.8 (fake) -> 0.8, 1.
    mean_predicted, fraction_positive, counts = reliability_curve([0, 0, 1, 1], [0.1, 0.3, 0.8, 0.2], n_bins=2)
    np.testing.assert_allclose(mean_predicted, [0.2, 0.8])
    np.testing.assert_allclose(fraction_positive, [1 / 3, 1.0])
    assert counts.tolist() == [3, 1]
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 100), rng.random(100)
    mean_predicted, fraction_positive, counts = reliability_curve(y, p)
    assert len(mean_predicted) == len(fraction_positive) == len(counts) <= 15 and counts.sum() == 100
    _, fraction_fake_only, _ = reliability_curve([1, 1], [0.2, 0.9])  # one class is fine
    assert fraction_fake_only.tolist() == [1.0, 1.0]
    assert all(a.size == 0 for a in reliability_curve([], []))


def test_auc_by_ranks_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from bnn.metrics import auc_by_ranks

    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 300), np.round(rng.random(300), 1)  # many ties
    assert auc_by_ranks(y, s) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(auc_by_ranks([1, 1], [0.2, 0.3]))


def _scored_set(n=200, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0.0, 1.0)


@pytest.mark.parametrize("metric", ["accuracy", "auc"])
def test_bootstrap_ci_contains_estimate_and_is_seeded(metric):
    from bnn.metrics import bootstrap_ci

    y, s = _scored_set()
    point = getattr(compute_metrics(y, s), metric)
    low, high = bootstrap_ci(y, s, metric, n_resamples=500, seed=7)
    assert 0.0 <= low < point < high <= 1.0
    assert bootstrap_ci(y, s, metric, n_resamples=500, seed=7) == (low, high)
    assert bootstrap_ci(y, s, metric, n_resamples=500, seed=8) != (low, high)


def test_bootstrap_ci_nan_cases():
    from bnn.metrics import bootstrap_ci

    assert all(math.isnan(v) for v in bootstrap_ci([1, 1, 1], [0.9, 0.6, 0.4], "auc"))  # one class
    assert all(math.isnan(v) for v in bootstrap_ci([0, 0, 1], [0.1, 0.2, 0.9], "auc"))  # one fake only
    assert all(math.isnan(v) for v in bootstrap_ci([], [], "accuracy"))
    low, high = bootstrap_ci([1, 1, 1, 1], [0.9, 0.6, 0.4, 0.2], "accuracy", n_resamples=200)
    assert 0.0 <= low <= 0.5 <= high <= 1.0  # accuracy of one class is defined
    with pytest.raises(ValueError, match="metric"):
        bootstrap_ci([0, 1], [0.1, 0.9], "eer")


def test_bootstrap_ci_ignores_one_class_resamples():
    from bnn.metrics import bootstrap_ci

    # 2 fakes among 10: about 1 resample in 9 draws no fake; those are left out, not NaN.
    labels = [1, 1] + [0] * 8
    scores = [0.9, 0.3] + [0.1, 0.2, 0.4, 0.5, 0.6, 0.15, 0.25, 0.35]
    low, high = bootstrap_ci(labels, scores, "auc", n_resamples=300)
    assert math.isfinite(low) and math.isfinite(high) and low <= compute_metrics(labels, scores).auc <= high


@pytest.mark.parametrize("name, slug", [
    ("Stable Diffusion 1.5", "stable_diffusion_1_5"),
    ("  --BigGAN__v2!! ", "biggan_v2"),
    ("real", "real"),
    ("", "unknown"),
    ("***", "unknown"),
    (None, "unknown"),
])
def test_source_slug(name, slug):
    from bnn.metrics import source_slug

    assert source_slug(name) == slug


def test_per_source_metrics_hand_computed():
    from bnn.metrics import per_source_metrics

    labels = [0, 0, 1, 1, 1, 1, 0]
    scores = [0.1, 0.6, 0.7, 0.2, 0.9, 0.8, 0.3]
    sources = ["Real", "real", "SD-1.5", "sd 1.5", "GAN", "GAN", "FFHQ"]  # "SD-1.5" and "sd 1.5" merge
    out = per_source_metrics(labels, scores, sources)
    assert out == pytest.approx({
        "source_real_accuracy": 0.5, "source_real_count": 2.0,  # 0.1 right, 0.6 wrong
        "source_ffhq_accuracy": 1.0, "source_ffhq_count": 1.0,
        "source_sd_1_5_accuracy": 0.5, "source_sd_1_5_count": 2.0,  # 0.7 right, 0.2 wrong
        # fakes 0.7, 0.2 against all reals 0.1, 0.6, 0.3: 0.7 beats 3, 0.2 beats 1 -> 4/6
        "source_sd_1_5_auc": 4 / 6,
        "source_gan_accuracy": 1.0, "source_gan_count": 2.0, "source_gan_auc": 1.0,
    })
    slugs = [k.removeprefix("source_").rsplit("_", 1)[0] for k in out]
    assert slugs == sorted(slugs)  # grouped and sorted by slug
    no_reals = per_source_metrics([1, 1], [0.8, 0.3], ["a", "b"])
    assert no_reals["source_a_accuracy"] == 1.0 and no_reals["source_b_accuracy"] == 0.0
    assert math.isnan(no_reals["source_a_auc"]) and math.isnan(no_reals["source_b_auc"])
    assert per_source_metrics([], [], []) == {}
    with pytest.raises(ValueError, match="differ"):
        per_source_metrics([0, 1], [0.1, 0.9], ["a"])
