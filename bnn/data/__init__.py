"""Data: readers for COCOFake, DFFD, CIFAKE, any real/fake folder tree, Hugging Face datasets and the
built-in synthetic benchmark, behind one registry; the preprocessing of Lanzino et al., "Faster Than Lies: Real-time
Deepfake Detection using Binary Neural Networks", CVPRW 2024.

Every dataset is an ``ImageDataset`` of ``(path, label)`` items, label 1 = fake and 0 = real,
whose samples are ``(image (3, R, R) in [0, 1], label, path)`` or ``None`` for an unreadable file
(use ``collate_skip`` as the DataLoader's ``collate_fn``). ``load_rgb`` is the one decoder, and
its ``UnreadableImage`` the one definition of an unreadable file, for training and ``detect``
alike; ``layout.list_images`` is the one listing (hidden files and ``__MACOSX`` left out).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from bnn.data import cifake, cocofake, dffd, folder, hf, synthetic  # noqa: F401  (fills the registry)
from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.dataset import (
    MAX_UNREADABLE_FRACTION,
    ImageDataset,
    UnreadableSplitError,
    check_readable,
    collate_skip,
)
from bnn.data.layout import SPLITS, DatasetLayoutError, check_split
from bnn.data.synthetic import generate_synthetic
from bnn.data.transforms import UNREADABLE_ERRORS, UnreadableImage, build_transform, load_rgb
from bnn.errors import KeyedValueError

COMMON_PARAMS = ("max_samples", "seed")


class DatasetParamError(KeyedValueError, TypeError):
    """Unknown reader parameter(s) for a dataset; the message lists the valid ones.

    A ``ValueError`` (an invalid value of ``data_params``, one line and exit code 2 in the command
    lines, a validation error inside ``FitConfig``) and a ``TypeError`` (what an unexpected keyword
    argument is, and what ``create_dataset`` raised before this class).

    Attributes:
        dataset: The dataset's registered name.
        unknown: The unknown parameters, sorted.
        valid: The parameters the dataset accepts, sorted.
    """

    def __init__(self, dataset: str, unknown: list[str], valid: list[str]) -> None:
        self.dataset, self.unknown, self.valid = dataset, list(unknown), list(valid)
        super().__init__(
            f"unknown parameter(s) {', '.join(unknown)} for dataset {dataset!r}; valid: {', '.join(valid)}",
            key=self.unknown[0],
            detail=f"unknown parameter; valid: {', '.join(valid)}",
        )


def create_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    resolution: int = 224,
    train_augment: bool | None = None,
    augment: Mapping[str, Any] | None = None,
    **params,
) -> ImageDataset:
    """Builds one split of a registered dataset.

    Args:
        name: ``cocofake``, ``dffd``, ``cifake``, ``folder``, ``hf`` or ``synthetic``.
        split: ``train``, ``val`` or ``test`` (see each reader for how val/test are defined).
        root: Dataset folder; ``None`` reads the dataset's environment variable
            (``BNN_DATA_COCO2014``, ``BNN_DATA_DFFD``, ``BNN_DATA_CIFAKE``, ``BNN_DATA_FOLDER``) or,
            for ``synthetic``, uses the cache (``$BNN_CACHE_DIR/synthetic``).
        resolution: Side R of the returned images.
        train_augment: Random augmentation; default ``True`` for ``train``, ``False`` otherwise.
        augment: The training augmentation's knobs (``build_transform``); ``None``: the paper's.
        **params: Reader parameters (``dataset_params(name)`` lists them), e.g. ``fake_root`` and
            ``val_fraction`` for cocofake, ``count``/``image_size``/``difficulty`` for synthetic,
            plus for every dataset ``max_samples`` (a stratified subsample, seeded by ``seed``) and
            ``seed`` (split hashing / generation seed where the reader has one, default 0).

    Raises:
        KeyError: Unknown dataset name.
        ValueError: Unknown split.
        DatasetParamError: Unknown parameter (the message lists the valid ones); a ``TypeError``
            and a ``ValueError``.
        DatasetLayoutError: Missing root or a layout that does not match.
    """
    canonical = DATASETS.canonical(name)
    spec = DATASETS.get(canonical)
    check_split(split)
    reader_params = _reader_params(spec)
    valid = sorted({*reader_params, *COMMON_PARAMS})
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DatasetParamError(canonical, unknown, valid)
    max_samples = params.pop("max_samples", None)
    seed = params.get("seed", 0)
    if "seed" not in reader_params:
        params.pop("seed", None)
    listing = spec.read(split, root, **params)
    if train_augment is None:
        train_augment = split == "train"
    dataset = ImageDataset(
        listing.items,
        name=canonical,
        split=split,
        description=listing.description,
        roots=listing.roots,
        transform=build_transform(resolution, train=train_augment, augment=augment),
        sources=listing.item_sources(),
    )
    if max_samples is not None:
        dataset = dataset.subsample(max_samples, seed=seed)
    return dataset


def dataset_params(name: str) -> list[str]:
    """Parameters ``create_dataset`` accepts for ``name`` besides its own arguments."""
    return sorted({*_reader_params(DATASETS.get(name)), *COMMON_PARAMS})


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


def _reader_params(spec: DatasetSpec) -> list[str]:
    """Keyword parameters of a reader after ``split`` and ``root``."""
    parameters = list(inspect.signature(spec.read).parameters.values())[2:]
    return [p.name for p in parameters]


__all__ = [
    "DATASETS",
    "MAX_UNREADABLE_FRACTION",
    "SPLITS",
    "UNREADABLE_ERRORS",
    "DatasetLayoutError",
    "DatasetParamError",
    "DatasetSpec",
    "ImageDataset",
    "Listing",
    "UnreadableImage",
    "UnreadableSplitError",
    "build_transform",
    "check_readable",
    "collate_skip",
    "create_dataset",
    "dataset_params",
    "generate_synthetic",
    "list_datasets",
    "load_rgb",
]
