"""Paired significance tests between ablation rows against hand-computed and library values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from analysis.significance import holm, mcnemar_exact, paired_auc_test


def test_mcnemar_identical_predictions():
    correct = [1, 0, 1, 1, 0, 1]
    assert mcnemar_exact(correct, correct) == 1.0
    assert math.isnan(mcnemar_exact([], []))


def test_mcnemar_one_model_right_wherever_the_other_is_wrong():
    a, b = np.ones(20, dtype=int), np.zeros(20, dtype=int)
    p = mcnemar_exact(a, b)
    # 20 discordant images all favouring A: two-sided binomial 2 * 0.5**20.
    assert p < 1e-4 and p == pytest.approx(2 * 0.5**20)
    assert p == pytest.approx(mcnemar(np.array([[0, 20], [0, 0]]), exact=True).pvalue)
    assert p == pytest.approx(binomtest(0, 20, 0.5).pvalue)
    assert mcnemar_exact(b, a) == pytest.approx(p)


def test_mcnemar_mixed_hand_computed():
    # 30 images: 15 both right, 5 both wrong, 8 only A right, 2 only B right.
    a = [1] * 15 + [0] * 5 + [1] * 8 + [0] * 2
    b = [1] * 15 + [0] * 5 + [0] * 8 + [1] * 2
    # Two-sided binomial on 2 of 10 discordant: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2**10 = 112/1024.
    assert mcnemar_exact(a, b) == pytest.approx(112 / 1024)
    assert mcnemar_exact(a, b) == pytest.approx(binomtest(2, 10, 0.5).pvalue)
    with pytest.raises(ValueError, match="differ"):
        mcnemar_exact([1, 0], [1])


def _perfect_and_random(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n // 2))
    perfect = np.where(labels == 1, 0.6 + 0.39 * rng.random(n), 0.4 * rng.random(n))
    random = rng.random(n)
    return labels, perfect, random


def test_paired_auc_identical_scores():
    labels, perfect, _ = _perfect_and_random()
    assert paired_auc_test(labels, perfect, perfect.copy()) == 1.0


@pytest.mark.integration
def test_paired_auc_perfect_against_random_scorer():
    labels, perfect, random = _perfect_and_random()
    p = paired_auc_test(labels, perfect, random)
    assert p < 0.01
    assert paired_auc_test(labels, perfect, random) == p  # seeded
    assert paired_auc_test(labels, perfect, random, n_resamples=500, seed=3) == paired_auc_test(
        labels, perfect, random, n_resamples=500, seed=3)


def test_paired_auc_similar_scorers_not_significant():
    labels, perfect, _ = _perfect_and_random()
    rng = np.random.default_rng(1)
    noisy_a = np.clip(perfect + 0.3 * rng.standard_normal(60), 0, 1)
    noisy_b = np.clip(perfect + 0.3 * rng.standard_normal(60), 0, 1)
    assert paired_auc_test(labels, noisy_a, noisy_b, n_resamples=500) > 0.05


def test_paired_auc_one_class_is_nan():
    assert math.isnan(paired_auc_test([1, 1, 1], [0.9, 0.8, 0.7], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="differ"):
        paired_auc_test([0, 1], [0.1, 0.9], [0.2])


@pytest.mark.integration
def test_holm_hand_computed():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    # 0.02, 0.03, 0.06, 0.06. At 0.05 the first two (0.005, 0.01) are rejected.
    reject, adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert reject == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.integration
def test_holm_nan_passthrough():
    reject, adjusted = holm([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert reject == [True, False, False, False, True]
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    reject, adjusted = holm([float("nan")] * 2)
    assert reject == [False, False] and all(math.isnan(v) for v in adjusted)
    assert holm([]) == ([], [])
