"""Paired comparisons of ablation rows with their RGB baseline on the same test images.

Two cells of one setting (same backbone, freezing, dataset and other axes; different feature sets)
score the same test split, so their difference is tested per image (``analysis.significance``):
the exact McNemar test on correctness at threshold 0.5 (accuracy) and a paired permutation test
of the AUC difference. Images are matched by path (only those both cells scored); with several
seeds, each seed of a row is paired with the same seed of the baseline and the paired images of
all seeds are pooled into one test. Holm's correction runs across the compared rows, separately
for each test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.significance import holm, mcnemar_exact, paired_auc_test

ALPHA = 0.05
THRESHOLD = 0.5
RESAMPLES = 2000
MARK_ACCURACY, MARK_AUC = "*", "†"


@dataclass(frozen=True)
class Paired:
    """Images of one row and its baseline, matched by path (seeds pooled).

    Attributes:
        labels: Shape ``(n,)``, 1 = fake.
        scores: Shape ``(n,)``, the row's fake probabilities.
        baseline: Shape ``(n,)``, the baseline's, image by image.
        seeds: Seeds that were paired (both rows have a run with predictions).
    """

    labels: np.ndarray
    scores: np.ndarray
    baseline: np.ndarray
    seeds: tuple

    @property
    def images(self) -> int:
        return int(self.labels.size)


def pair_predictions(row: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """The images both prediction tables hold, joined by ``path``: ``label``, ``prob_fake``
    (the row's) and ``prob_fake_baseline``. Images whose label differs between the two (not the
    same image) and missing scores are dropped; a path listed twice counts once."""
    a = row.drop_duplicates("path")[["path", "label", "prob_fake"]]
    b = baseline.drop_duplicates("path")[["path", "label", "prob_fake"]]
    joined = a.merge(b, on="path", suffixes=("", "_baseline"))
    joined = joined[joined["label"] == joined["label_baseline"]]
    return joined.dropna(subset=["prob_fake", "prob_fake_baseline"])[
        ["path", "label", "prob_fake", "prob_fake_baseline"]
    ]


def pair_runs(
    runs: Mapping, baseline_runs: Mapping, predictions: Mapping[str, pd.DataFrame]
) -> Paired:
    """Pairs a row's runs with its baseline's, seed by seed, and pools the matched images.

    Args:
        runs: ``{seed: run_id}`` of the row.
        baseline_runs: ``{seed: run_id}`` of the baseline row.
        predictions: ``{run_id: predictions}``; runs without predictions are skipped.
    """
    parts, seeds = [], []
    for seed, run_id in runs.items():
        base_id = baseline_runs.get(seed)
        if base_id is None or run_id not in predictions or base_id not in predictions:
            continue
        joined = pair_predictions(predictions[run_id], predictions[base_id])
        if len(joined):
            parts.append(joined)
            seeds.append(seed)
    if not parts:
        empty = np.empty(0)
        return Paired(empty.astype(np.int64), empty, empty, ())
    pooled = pd.concat(parts, ignore_index=True)
    return Paired(
        pooled["label"].to_numpy(dtype=np.int64),
        pooled["prob_fake"].to_numpy(dtype=float),
        pooled["prob_fake_baseline"].to_numpy(dtype=float),
        tuple(seeds),
    )


def p_values(paired: Paired, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """``(p McNemar, p AUC)`` of one pairing; NaN where no test can be made (no images; one class
    for the AUC)."""
    if paired.images == 0:
        return float("nan"), float("nan")
    correct = (paired.scores >= THRESHOLD).astype(np.int64) == paired.labels
    correct_base = (paired.baseline >= THRESHOLD).astype(np.int64) == paired.labels
    p_accuracy = mcnemar_exact(correct, correct_base)
    p_auc = paired_auc_test(
        paired.labels, paired.scores, paired.baseline, n_resamples=resamples, seed=seed
    )
    return p_accuracy, p_auc


def compare_with_baselines(
    comparisons: list[tuple[Mapping, Mapping]],
    predictions: Mapping[str, pd.DataFrame],
    alpha: float = ALPHA,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Every row against its baseline, Holm-corrected across the rows per test.

    Args:
        comparisons: ``(row runs, baseline runs)`` per compared row, each ``{seed: run_id}``.
        predictions: ``{run_id: predictions}`` (``analysis.runs.load_all_predictions``).
        alpha: Family-wise error rate of each test.
        resamples: Swaps of the permutation test.
        seed: Seed of the permutation test.

    Returns:
        One row per comparison, in order: ``paired_images``, ``paired_seeds`` (comma-joined),
        ``p_mcnemar``, ``p_mcnemar_holm``, ``significant_accuracy``, ``p_auc``, ``p_auc_holm``,
        ``significant_auc`` and ``marks`` (``*`` accuracy, ``†`` AUC, where significant).
    """
    rows = []
    for runs, baseline in comparisons:
        paired = pair_runs(runs, baseline, predictions)
        p_accuracy, p_auc = p_values(paired, resamples, seed)
        rows.append(
            {
                "paired_images": paired.images,
                "paired_seeds": ",".join(str(s) for s in paired.seeds),
                "p_mcnemar": p_accuracy,
                "p_auc": p_auc,
            }
        )
    out = pd.DataFrame(
        rows, columns=["paired_images", "paired_seeds", "p_mcnemar", "p_auc"]
    ).astype({"p_mcnemar": float, "p_auc": float})
    for test, name in (("p_mcnemar", "accuracy"), ("p_auc", "auc")):
        reject, adjusted = holm(out[test].to_numpy(), alpha=alpha) if len(out) else ([], [])
        out[f"{test}_holm"] = adjusted
        out[f"significant_{name}"] = reject
    out["marks"] = [
        (MARK_ACCURACY if a else "") + (MARK_AUC if b else "")
        for a, b in zip(out["significant_accuracy"], out["significant_auc"], strict=True)
    ]
    return out[
        [
            "paired_images",
            "paired_seeds",
            "p_mcnemar",
            "p_mcnemar_holm",
            "significant_accuracy",
            "p_auc",
            "p_auc_holm",
            "significant_auc",
            "marks",
        ]
    ]
