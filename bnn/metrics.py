"""Detection metrics as reported by deepfake benchmarks (DeepfakeBench, Yan et al. 2023; Lanzino
et al., CVPRW 2024 report accuracy and AUC): accuracy at 0.5, AUC, EER, AP, per-class accuracy.

Labels: 1 = fake (positive class), 0 = real. Scores: probability of "fake" (or any monotone score).
A split with one class only (a folder of fakes from one generator) is valid input: accuracy and
that class's accuracy (its recall) are defined; AUC, EER and AP rank fakes against reals, so they,
the other class's accuracy and the ROC are not (NaN, ``roc`` empty), and nothing raises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


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
        count: Number of images.
        roc: (fpr, tpr, thresholds) lists, for plots.
    """

    accuracy: float
    auc: float
    eer: float
    ap: float
    accuracy_real: float
    accuracy_fake: float
    count: int
    roc: dict[str, list[float]] = field(default_factory=dict, repr=False)

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


def compute_metrics(labels, scores, threshold: float = 0.5) -> Metrics:
    """Computes ``Metrics`` from labels (1 = fake) and fake probabilities.

    Args:
        labels: Array-like of 0/1.
        scores: Array-like of probabilities of "fake", same length.
        threshold: Decision threshold for the accuracies.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if y.size == 0:
        nan = float("nan")
        return Metrics(nan, nan, nan, nan, nan, nan, 0)
    predicted = (s >= threshold).astype(np.int64)
    correct = predicted == y
    real, fake = y == 0, y == 1
    both_classes = bool(real.any() and fake.any())
    if both_classes:
        fpr, tpr, thresholds = roc_curve(y, s)
        auc = float(roc_auc_score(y, s))
        eer = equal_error_rate(fpr, tpr)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.nan_to_num(thresholds, posinf=1e300).tolist()}
    else:
        auc = eer = float("nan")
        roc = {}
    return Metrics(
        accuracy=float(correct.mean()),
        auc=auc,
        eer=eer,
        ap=float(average_precision_score(y, s)) if both_classes else float("nan"),
        accuracy_real=float(correct[real].mean()) if real.any() else float("nan"),
        accuracy_fake=float(correct[fake].mean()) if fake.any() else float("nan"),
        count=int(y.size),
        roc=roc,
    )
