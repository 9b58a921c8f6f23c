"""Detection metrics as reported by deepfake benchmarks (DeepfakeBench, Yan et al. 2023; Lanzino
et al., CVPRW 2024 report accuracy and AUC): accuracy at 0.5, AUC, EER, AP, per-class accuracy;
with calibration (ECE, Brier), TPR at low FPR, the EER threshold, bootstrap intervals and
per-source metrics.

Labels: 1 = fake (positive class), 0 = real. Scores: probability of "fake" (or any monotone score).
A split with one class only (a folder of fakes from one generator) is valid input: accuracy and
that class's accuracy (its recall) are defined; AUC, EER and AP rank fakes against reals, so they,
the other class's accuracy, the TPR at a fixed FPR, the EER threshold and the ROC are not (NaN,
``roc`` empty), and nothing raises. ECE and Brier score compare each probability with its own label,
so they are defined for one class too (NaN only when the scores are not probabilities in [0, 1]).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from scipy.stats import bootstrap, rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

ECE_BINS = 15  # Guo et al. (ICML 2017) use M = 15 bins


@dataclass
class Metrics:
    """Metrics of one split.

    Attributes:
        accuracy: Share correct with threshold 0.5 on the fake probability.
        auc: Area under the ROC curve (NaN unless both classes are present).
        eer: Equal error rate: where false-positive and false-negative rates cross (NaN unless
            both classes are present).
        ap: Average precision for the fake class (NaN unless both classes are present: with
            fakes only it would be 1 whatever the scores).
        accuracy_real: Accuracy on real images only (their recall; NaN without real images).
        accuracy_fake: Accuracy on fake images only (their recall; NaN without fake images).
        ece: Expected calibration error, top-label definition of Guo et al. (ICML 2017) with 15
            equal-width confidence bins (see ``expected_calibration_error``); NaN when the scores
            are not probabilities.
        brier: Brier score, mean of ``(p - label)**2`` (NaN when the scores are not probabilities).
        tpr_at_fpr_1pct: Largest TPR among the ROC points with FPR <= 1% (NaN unless both classes).
        tpr_at_fpr_0p1pct: Largest TPR among the ROC points with FPR <= 0.1% (NaN unless both).
        eer_threshold: Score threshold of the ROC point where FPR and FNR = 1 - TPR are closest
            (NaN unless both classes are present).
        accuracy_valthr: Accuracy at the threshold chosen on validation (``val_threshold`` of
            ``compute_metrics``), else at this split's own ``eer_threshold``; NaN when that is.
        count: Number of images.
        roc: (fpr, tpr, thresholds) lists, for plots.
    """

    accuracy: float
    auc: float
    eer: float
    ap: float
    accuracy_real: float
    accuracy_fake: float
    ece: float
    brier: float
    tpr_at_fpr_1pct: float
    tpr_at_fpr_0p1pct: float
    eer_threshold: float
    accuracy_valthr: float
    count: int
    roc: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def of_empty_split(cls) -> Metrics:
        """The metrics of a split without images: every metric NaN, ``count`` 0, no ROC points."""
        values = {f.name: float("nan") for f in fields(cls) if f.name not in ("count", "roc")}
        return cls(**values, count=0)

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics as ``{prefix + name: value}`` (ROC points excluded)."""
        values = asdict(self)
        values.pop("roc")
        return {f"{prefix}{k}": float(v) for k, v in values.items()}


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER from ROC points, linearly interpolated where FPR crosses FNR = 1 - TPR."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increasing from <= 0 (threshold inf) to >= 0 (threshold -inf)
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(fpr[0])
    if i >= len(diff):
        return float(fpr[-1])
    d0, d1 = diff[i - 1], diff[i]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def eer_threshold(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> float:
    """Threshold of the ROC point where FPR and FNR = 1 - TPR are closest (they cross there).

    Only finite thresholds are candidates (``roc_curve``'s first point, threshold +inf, is no
    threshold a detector can use); on a tie the first point wins (higher threshold, lower FPR).
    """
    finite = np.isfinite(thresholds)
    if not finite.any():
        return float("nan")
    gap = np.abs(fpr[finite] - (1.0 - tpr[finite]))
    return float(thresholds[finite][int(np.argmin(gap))])


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Largest TPR among the ROC points with ``FPR <= max_fpr`` (no interpolation: an attainable
    operating point). The ROC always holds (0, 0), so with both classes this is defined."""
    allowed = fpr <= max_fpr
    return float(tpr[allowed].max()) if allowed.any() else float("nan")


def auc_by_ranks(labels, scores) -> float:
    """ROC AUC as the Mann-Whitney statistic, ``(sum of the fakes' ranks - n1 (n1 + 1) / 2) /
    (n1 n0)`` with average ranks for ties: the value of ``roc_auc_score`` (a tie counts one half)
    at a twentieth of its cost, for the resampling loops (bootstrap, permutation tests).

    Returns:
        The AUC; NaN unless both classes are present.
    """
    y = np.asarray(labels).ravel() == 1
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64).ravel())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _are_probabilities(s: np.ndarray) -> bool:
    return bool(s.size) and bool(np.all((s >= 0.0) & (s <= 1.0)))


def expected_calibration_error(labels, scores, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error, top-label definition (Guo et al., "On Calibration of Modern
    Neural Networks", ICML 2017, eq. 3).

    For binary detection the predicted class is "fake" when ``p >= 0.5`` and its confidence is
    ``max(p, 1 - p)`` (in [0.5, 1]). Confidences go into ``n_bins`` equal-width bins over [0, 1],
    ``((m-1)/M, m/M]`` as in Guo et al.'s code (with M = 15 only the bins above 7/15 are used);
    ``ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|``.
    This differs from the positive-class calibration that ``reliability_curve`` plots (bins of the
    fake probability against the fraction of fakes): that one is the reliability diagram's.

    Returns:
        The ECE in [0, 1]; NaN for no images or scores outside [0, 1]. One class is fine.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    if not _are_probabilities(p):
        return float("nan")
    predicted = (p >= 0.5).astype(np.int64)
    confidence = np.maximum(p, 1.0 - p)
    correct = (predicted == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)  # (lo, hi]
    total = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=confidence, minlength=n_bins))  # n_m * |acc - conf|
    return float(gap.sum() / total.sum())


def reliability_curve(labels, scores, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of a reliability diagram: the fake probability in ``n_bins`` equal-width bins over
    [0, 1] (``sklearn.calibration.calibration_curve``, strategy "uniform"; the last bin closed).

    Returns:
        ``(mean_predicted, fraction_positive, counts)`` for the non-empty bins, in bin order: mean
        fake probability, share of fakes and number of images of each bin. Empty arrays for no
        images. One class is fine (the fraction is then 0 or 1 everywhere).

    Raises:
        ValueError: Lengths differ or scores are outside [0, 1] (not probabilities).
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    if y.size == 0:
        return np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
    fraction_positive, mean_predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform", pos_label=1)
    # The same binning as calibration_curve (searchsorted on the inner edges), for the counts.
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)
    counts = np.bincount(bins, minlength=n_bins)
    return mean_predicted, fraction_positive, counts[counts > 0]


def compute_metrics(labels, scores, threshold: float = 0.5, val_threshold: float | None = None) -> Metrics:
    """Computes ``Metrics`` from labels (1 = fake) and fake probabilities.

    Args:
        labels: Array-like of 0/1.
        scores: Array-like of probabilities of "fake", same length.
        threshold: Decision threshold for the accuracies.
        val_threshold: Threshold chosen on validation (its ``eer_threshold``) for
            ``accuracy_valthr``; ``None`` uses this split's own ``eer_threshold`` (for the
            validation split itself). NaN gives a NaN ``accuracy_valthr``.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    nan = float("nan")
    if y.size == 0:
        return Metrics.of_empty_split()
    predicted = (s >= threshold).astype(np.int64)
    correct = predicted == y
    real, fake = y == 0, y == 1
    both_classes = bool(real.any() and fake.any())
    if both_classes:
        fpr, tpr, thresholds = roc_curve(y, s)
        auc = float(roc_auc_score(y, s))
        eer = equal_error_rate(fpr, tpr)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.nan_to_num(thresholds, posinf=1e300).tolist()}
        # Every threshold (roc above drops collinear points), for the operating points.
        fpr_all, tpr_all, thresholds_all = roc_curve(y, s, drop_intermediate=False)
        tpr_1pct = tpr_at_fpr(fpr_all, tpr_all, 0.01)
        tpr_0p1pct = tpr_at_fpr(fpr_all, tpr_all, 0.001)
        eer_thr = eer_threshold(fpr_all, tpr_all, thresholds_all)
    else:
        auc = eer = tpr_1pct = tpr_0p1pct = eer_thr = nan
        roc = {}
    chosen = eer_thr if val_threshold is None else float(val_threshold)
    probabilities = _are_probabilities(s)
    return Metrics(
        accuracy=float(correct.mean()),
        auc=auc,
        eer=eer,
        ap=float(average_precision_score(y, s)) if both_classes else nan,
        accuracy_real=float(correct[real].mean()) if real.any() else nan,
        accuracy_fake=float(correct[fake].mean()) if fake.any() else nan,
        ece=expected_calibration_error(y, s) if probabilities else nan,
        brier=float(brier_score_loss(y, s, pos_label=1)) if probabilities else nan,
        tpr_at_fpr_1pct=tpr_1pct,
        tpr_at_fpr_0p1pct=tpr_0p1pct,
        eer_threshold=eer_thr,
        accuracy_valthr=nan if np.isnan(chosen) else float(((s >= chosen).astype(np.int64) == y).mean()),
        count=int(y.size),
        roc=roc,
    )


BOOTSTRAP_METRICS = ("accuracy", "auc")


def bootstrap_ci(
    labels,
    scores,
    metric: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    threshold: float = 0.5,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a split's accuracy or AUC, over images.

    Images are resampled with replacement, labels and scores together
    (``scipy.stats.bootstrap``, ``paired=True``, ``method="percentile"``). A resample that
    draws one class only has no AUC: its statistic is NaN and it is left out of the percentiles
    (``np.nanpercentile`` of ``bootstrap_distribution``; scipy's own interval would be NaN as soon
    as one resample is). That conditions the interval on resamples with both classes, which
    matters only when a class has very few images. The AUC of each resample is ``auc_by_ranks``
    (equal to ``roc_auc_score``, faster).

    Args:
        labels: Array-like of 0/1 (1 = fake).
        scores: Fake probabilities (any monotone score for AUC), same length.
        metric: ``"accuracy"`` (at ``threshold``) or ``"auc"``.
        n_resamples: Number of bootstrap resamples.
        confidence: Coverage (0.95 gives the 2.5th and 97.5th percentiles).
        seed: Seed of the resampling: the same inputs and seed give the same interval.
        threshold: Decision threshold for the accuracy.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no images (fewer than 2 for accuracy), and for AUC
        when either class has fewer than 2 images.
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {BOOTSTRAP_METRICS}, not {metric!r}")
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    nan = (float("nan"), float("nan"))
    if y.size < 2:
        return nan
    if metric == "auc" and min(int((y == 0).sum()), int((y == 1).sum())) < 2:
        return nan

    def accuracy(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(((ss >= threshold).astype(np.int64) == yy).mean())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of NaN / degenerate bootstrap distributions
        res = bootstrap((y, s), accuracy if metric == "accuracy" else auc_by_ranks, n_resamples=n_resamples,
                        vectorized=False, paired=True, confidence_level=confidence, method="percentile",
                        rng=np.random.default_rng(seed))
    distribution = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if np.isnan(distribution).all():
        return nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(distribution, [tail, 100.0 - tail])
    return float(low), float(high)


def source_slug(name) -> str:
    """A source name as a metric-name part: lower case, every run of characters outside
    ``[a-z0-9]`` one ``_``, no leading or trailing ``_``; ``"unknown"`` when nothing is left
    (``"Stable Diffusion 1.5"`` -> ``"stable_diffusion_1_5"``, ``None`` -> ``"unknown"``)."""
    slug = re.sub(r"[^a-z0-9]+", "_", ("" if name is None else str(name)).lower()).strip("_")
    return slug or "unknown"


def per_source_metrics(labels, scores, sources, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, count and AUC of every source (generator, or the real-image source) of a split.

    Sources are grouped by ``source_slug``: two raw names with the same slug (``"SD-1.5"`` and
    ``"sd 1.5"``) are one source. A source's AUC ranks its fakes against all the real images of
    the split (whatever their source), as benchmarks report per-generator AUC.

    Args:
        labels: Array-like of 0/1 (1 = fake).
        scores: Fake probabilities, same length.
        sources: Source name of each image, same length.
        threshold: Decision threshold for the accuracies.

    Returns:
        ``{"source_<slug>_accuracy", "source_<slug>_count"}`` for every source and
        ``"source_<slug>_auc"`` for each source with fake images (NaN when the split has no real
        images), sorted by slug; ``{}`` for no images.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    names = [source_slug(n) for n in (sources.tolist() if isinstance(sources, np.ndarray) else list(sources))]
    if not y.shape == s.shape == (len(names),):
        raise ValueError(f"labels {y.shape}, scores {s.shape} and sources ({len(names)},) differ in length")
    slugs = np.asarray(names, dtype=object)
    correct = (s >= threshold).astype(np.int64) == y
    real = y == 0
    out: dict[str, float] = {}
    for slug in sorted(set(names)):
        member = slugs == slug
        out[f"source_{slug}_accuracy"] = float(correct[member].mean())
        out[f"source_{slug}_count"] = float(member.sum())
        fakes = member & (y == 1)
        if fakes.any():
            if real.any():
                pair = real | fakes
                out[f"source_{slug}_auc"] = float(roc_auc_score(y[pair], s[pair]))
            else:
                out[f"source_{slug}_auc"] = float("nan")
    return out
