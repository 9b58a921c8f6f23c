"""The data of one configuration: its train/val/test datasets and their loaders.

``load_splits`` lists the three splits of ``FitConfig.dataset`` (no image is decoded), drops the
train/val copies of val/test images (``dedupe``) and checks that training can use them;
``prepare_splits`` adds the data audit (``bnn.data.audit``); ``make_loader`` batches a split with ``bnn.data.collate_skip``
(unreadable images are skipped and counted), seeded per epoch so that runs repeat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from bnn.config import FitConfig
from bnn.data import ImageDataset, collate_skip, create_dataset
from bnn.data.audit import AuditReport, dedupe, fingerprint_splits
from bnn.data.audit import audit as run_audit

__all__ = ["PreparedSplits", "load_splits", "make_loader", "prepare_splits"]


@dataclass
class PreparedSplits:
    """The splits a fit uses and what the data audit found (``None`` when not audited)."""

    datasets: dict[str, ImageDataset]
    audit: AuditReport | None


def load_splits(config: FitConfig) -> dict[str, ImageDataset]:
    """The train, val and test datasets of ``config``, after ``dedupe`` (no image is decoded;
    with ``dedupe`` on, every file is read once to hash it, then cached: ``bnn.data.audit``).

    Raises:
        ValueError: A split has no image (an empty val split would make every validation metric
            NaN and the checkpoint selection meaningless), or train lacks one class.
        DatasetLayoutError, TypeError, KeyError: from ``bnn.data.create_dataset``.
    """
    return prepare_splits(config, audit=False).datasets


def prepare_splits(config: FitConfig, audit: bool = True) -> PreparedSplits:
    """``load_splits``, and with ``audit`` the data audit of the splits as used (``bnn.data.audit``:
    duplicates before ``dedupe``, file statistics, the shortcut and spectral floors; cached).

    Raises:
        As ``load_splits``.
    """
    caps = {"train": config.max_train_samples, "val": config.max_val_samples, "test": config.max_test_samples}
    listed = {}
    for split, cap in caps.items():
        ds = create_dataset(
            config.dataset, split, root=config.data_root, resolution=config.resolution,
            augment=config.augment.resolved(), **config.data_params,
        )
        listed[split] = ds.subsample(cap, seed=config.seed) if cap is not None else ds
    _check_usable(listed, {})
    splits, prints, dropped = listed, None, {}
    if config.dedupe or audit:
        prints = fingerprint_splits(listed)
    if config.dedupe:
        splits, kept_prints, dropped = dedupe(listed, prints)
        _check_usable(splits, dropped)
    report = None
    if audit:
        report = run_audit(splits, kept_prints if config.dedupe else prints, before=listed, before_prints=prints,
                           dropped=dropped, resolution=config.resolution, seed=config.seed)
    return PreparedSplits(splits, report)


def _check_usable(splits: dict[str, ImageDataset], dropped: dict[str, int]) -> None:
    """Raises ``ValueError`` when a split is empty (saying when ``dedupe`` emptied it) or train
    lacks one class."""
    for split, ds in splits.items():
        if len(ds) == 0:
            hint = {"val": " (raise data_params.val_fraction, or give the dataset a val folder)"}.get(split, "")
            if dropped.get(split):
                hint = f" (dedupe dropped all {dropped[split]}: each duplicates a val or test image)"
            raise ValueError(f"the {split} split has no images{hint}: {ds.describe()}")
    counts = splits["train"].class_counts()
    if counts["fake"] == 0 or counts["real"] == 0:
        missing = "fake" if counts["fake"] == 0 else "real"
        why = " after dedupe" if dropped.get("train") else ""
        raise ValueError(f"the train split has no {missing} images{why}: {splits['train'].describe()}")


def make_loader(ds: ImageDataset, config: FitConfig, device: torch.device, shuffle: bool, epoch: int = 0) -> DataLoader:
    """Batches of ``(images, labels, paths, n_skipped)`` over ``ds``.

    Args:
        ds: A split from ``load_splits`` (or any ``ImageDataset``).
        config: Batch size and ``num_workers`` (``None``: none on a CPU with <= 2 cores, else up
            to 8); its seed and ``epoch`` seed the shuffling.
        device: Where the batches go (pinned memory for CUDA).
        shuffle: Shuffle (training) or keep the dataset order (evaluation).
        epoch: Epoch number, for the shuffling seed.
    """
    workers = config.num_workers
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = 0 if device.type == "cpu" and cpus <= 2 else min(8, max(cpus - 1, 0))
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    return DataLoader(
        ds,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skip,
        generator=generator,
        persistent_workers=False,
    )
