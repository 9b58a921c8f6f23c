"""Running a detector over a split: loss, metrics (``bnn.metrics``) and per-image predictions.

``evaluate`` returns an ``Evaluation``; ``bnn.train.fit`` calls it on validation every epoch and
once on test, the protocol (``bnn.protocol``), the CLI (``bnn evaluate``) and the study runner on
extra test sets and perturbed copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bnn.data import check_readable
from bnn.detector import Detector
from bnn.device import amp_context
from bnn.metrics import Metrics, compute_metrics
from bnn.progress import progress_bar
from bnn.signals import FitInterrupted

__all__ = ["Evaluation", "evaluate"]


class Evaluation(NamedTuple):
    """What ``evaluate`` measured on one pass over a loader.

    Attributes:
        loss: Mean binary cross-entropy (with ``pos_weight``) per image; NaN when no image was read.
        metrics: Accuracy, AUC, EER, ... of the fake probabilities (``bnn.metrics.compute_metrics``).
        predictions: Per image ``{path, label, prob_fake, source}`` (label 1 = fake).
        skipped: Unreadable images skipped.
        images_per_second: Throughput of the pass, data loading included.
    """

    loss: float
    metrics: Metrics
    predictions: list[dict]
    skipped: int
    images_per_second: float


@torch.no_grad()
def evaluate(
    model: Detector,
    loader: DataLoader,
    device: torch.device,
    *,
    pos_weight: float = 1.0,
    amp: bool = True,
    max_batches: int | None = None,
    desc: str = "eval",
    should_stop: Callable[[], bool] | None = None,
    val_threshold: float | None = None,
) -> Evaluation:
    """Runs ``model`` over ``loader`` (whose dataset is an ``ImageDataset``).

    Args:
        model: The detector (put in eval mode).
        loader: Batches of ``(images, labels, paths, skipped)`` from ``bnn.splits.make_loader``.
        device: Where the batches go.
        pos_weight: BCE weight of the fake class (``#real / #fake`` of the training split).
        amp: Autocast on CUDA (``bnn.device.amp_context``).
        max_batches: Stop after this many batches (``None``: all).
        desc: Progress-bar label (the split's name).
        should_stop: Polled before every batch.
        val_threshold: Decision threshold chosen on validation, for ``Metrics.accuracy_valthr``
            (``None``: the set's own equal-error-rate threshold, as for the validation split).

    Returns:
        An ``Evaluation`` (it unpacks as ``loss, metrics, predictions, skipped, images_per_second``).

    Raises:
        FitInterrupted: ``should_stop()`` became true (checked before every batch).
        UnreadableSplitError: More unreadable images than ``MAX_UNREADABLE_FRACTION``, or no
            readable image of a class (``bnn.data.check_readable``).
    """
    model.eval()
    losses, labels_all, probs_all, paths_all = [], [], [], []
    skipped, seen, start = 0, 0, time.perf_counter()
    weight = torch.tensor(pos_weight, device=device)
    for i, (images, labels, paths, n_skipped) in enumerate(progress_bar(loader, desc=desc)):
        if max_batches is not None and i >= max_batches:
            break
        if should_stop is not None and should_stop():
            raise FitInterrupted(f"stopped during {desc}")
        skipped += n_skipped
        if len(labels) == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with amp_context(device, amp):
            logits = model(images).float()
        losses.append(F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight, reduction="sum").item())
        labels_all.append(labels.cpu())
        probs_all.append(torch.sigmoid(logits).cpu())
        paths_all.extend(paths)
        seen += len(labels)
    elapsed = time.perf_counter() - start
    check_readable(loader.dataset, int(sum(t.sum().item() for t in labels_all)), seen, skipped)
    if seen == 0:
        return Evaluation(float("nan"), compute_metrics([], []), [], skipped, 0.0)
    y = torch.cat(labels_all).numpy()
    p = torch.cat(probs_all).numpy()
    sources = loader.dataset.source_by_path()
    predictions = [{"path": path, "label": int(t), "prob_fake": float(q), "source": sources[path]}
                   for path, t, q in zip(paths_all, y, p, strict=True)]
    metrics = compute_metrics(y, p, val_threshold=val_threshold)
    return Evaluation(sum(losses) / seen, metrics, predictions, skipped, seen / max(elapsed, 1e-9))
