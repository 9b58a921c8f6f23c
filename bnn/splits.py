"""The data of one configuration: its train/val/test datasets and their loaders.

``load_splits`` lists the three splits of ``FitConfig.dataset`` (no image is decoded) and checks
that training can use them; ``make_loader`` batches a split with ``bnn.data.collate_skip``
(unreadable images are skipped and counted), seeded per epoch so that runs repeat.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from bnn.config import FitConfig
from bnn.data import ImageDataset, collate_skip, create_dataset

__all__ = ["load_splits", "make_loader"]


def load_splits(config: FitConfig) -> dict[str, ImageDataset]:
    """The train, val and test datasets of ``config`` (listing only: no image is decoded).

    Raises:
        ValueError: A split has no image (an empty val split would make every validation metric
            NaN and the checkpoint selection meaningless), or train lacks one class.
        DatasetLayoutError, TypeError, KeyError: from ``bnn.data.create_dataset``.
    """
    caps = {"train": config.max_train_samples, "val": config.max_val_samples, "test": config.max_test_samples}
    splits = {}
    for split, cap in caps.items():
        ds = create_dataset(
            config.dataset, split, root=config.data_root, resolution=config.resolution,
            augment=config.augment.resolved(), **config.data_params,
        )
        splits[split] = ds.subsample(cap, seed=config.seed) if cap is not None else ds
        if len(splits[split]) == 0:
            hint = {"val": " (raise data_params.val_fraction, or give the dataset a val folder)"}.get(split, "")
            raise ValueError(f"the {split} split has no images{hint}: {splits[split].describe()}")
    counts = splits["train"].class_counts()
    if counts["fake"] == 0 or counts["real"] == 0:
        missing = "fake" if counts["fake"] == 0 else "real"
        raise ValueError(f"the train split has no {missing} images: {splits['train'].describe()}")
    return splits


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
