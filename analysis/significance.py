"""Paired significance tests between two ablation rows evaluated on the same images.

Two models scored on the same test set give paired observations, so their comparison is tested
per image rather than by comparing two summary numbers:

- ``mcnemar_exact``: do the two models' accuracies differ? (McNemar 1947, exact binomial form)
- ``paired_auc_test``: do their AUCs differ? (paired permutation test; DeLong et al. 1988 is the
  asymptotic alternative, with a closed-form variance of the AUC difference)
- ``holm``: Holm's (1979) step-down correction when several rows are compared with one baseline.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import permutation_test
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from bnn.metrics import auc_by_ranks

HOLM_ALPHA = 0.05


def mcnemar_exact(correct_a, correct_b) -> float:
    """Two-sided exact McNemar test of two models' paired correctness (McNemar, Psychometrika 1947).

    Only the discordant images count: ``n01`` (A wrong, B right) and ``n10`` (A right, B wrong).
    Null hypothesis: the two models have the same accuracy, i.e. a discordant image is as likely
    to favour A as B, so ``n10 ~ Binomial(n01 + n10, 0.5)``; the exact test is that two-sided
    binomial test (``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``).

    Args:
        correct_a: Shape ``(n,)``, 1/True where model A classified image i correctly.
        correct_b: Shape ``(n,)``, the same for model B on the same images in the same order.

    Returns:
        The p-value; 1.0 when no image is discordant (identical correctness), NaN for no images.
    """
    a = np.asarray(correct_a).ravel().astype(bool)
    b = np.asarray(correct_b).ravel().astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} differ in length")
    if a.size == 0:
        return float("nan")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)],
                      [np.sum(~a & b), np.sum(~a & ~b)]])
    if table[0, 1] + table[1, 0] == 0:
        return 1.0
    return float(min(1.0, mcnemar(table, exact=True).pvalue))


def paired_auc_test(labels, scores_a, scores_b, n_resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation test of the difference of two models' AUCs on the same images.

    Null hypothesis: the two models' scores are exchangeable within each image, so swapping A's
    and B's score of any image leaves the distribution of ``AUC_a - AUC_b`` unchanged
    (``scipy.stats.permutation_test``, ``permutation_type="samples"``: each resample swaps the
    pair of scores of a random subset of images; all ``2**n`` swaps when that is at most
    ``n_resamples``). The statistic is ``AUC_a - AUC_b``; the AUC is ``bnn.metrics.auc_by_ranks``,
    equal to ``sklearn.metrics.roc_auc_score`` and faster. The two models' scores should be on the
    same scale (probabilities), since swapping mixes them. DeLong et al. (Biometrics 1988) is the
    asymptotic alternative.

    Args:
        labels: Shape ``(n,)``, 0/1 (1 = fake), shared by both models.
        scores_a: Shape ``(n,)``, model A's fake probabilities.
        scores_b: Shape ``(n,)``, model B's on the same images in the same order.
        n_resamples: Number of random swaps (Monte-Carlo p-value).
        seed: Seed of the swaps: the same inputs and seed give the same p-value.

    Returns:
        The p-value; 1.0 for identical scores; NaN when the labels have one class (no AUC).
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    if not y.shape == a.shape == b.shape:
        raise ValueError(f"labels {y.shape}, scores_a {a.shape} and scores_b {b.shape} differ in length")
    if not ((y == 0).any() and (y == 1).any()):
        return float("nan")
    if np.array_equal(a, b):
        return 1.0

    def difference(sa: np.ndarray, sb: np.ndarray) -> float:
        return auc_by_ranks(y, sa) - auc_by_ranks(y, sb)

    res = permutation_test((a, b), difference, permutation_type="samples", vectorized=False,
                           n_resamples=n_resamples, alternative="two-sided",
                           rng=np.random.default_rng(seed))
    return float(res.pvalue)


def holm(pvalues, alpha: float = HOLM_ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction for several tests (Holm, Scand. J. Statist. 1979), which keeps
    the family-wise error rate at ``alpha`` (``statsmodels.stats.multitest.multipletests``,
    ``method="holm"``).

    Args:
        pvalues: Shape ``(m,)``, one p-value per comparison; NaN (a test that could not be made)
            is passed through: not significant, adjusted p NaN, and not counted in ``m``.
        alpha: Family-wise error rate.

    Returns:
        ``(reject, adjusted)``: per comparison, whether the null is rejected and the Holm-adjusted
        p-value, in the input order.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        r, adj, _, _ = multipletests(p[finite], alpha=alpha, method="holm")
        reject[finite] = r
        adjusted[finite] = adj
    return [bool(v) for v in reject], [float(v) for v in adjusted]
