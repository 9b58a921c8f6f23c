"""Reader for CIFAKE (Bird & Lotfi, "CIFAKE: Image Classification and Explainable Identification of
AI-Generated Synthetic Images", IEEE Access 2024), one of the benchmarks of Lanzino et al.,
"Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks", CVPRW 2024.

Layout (as on Kaggle and in the authors' ``cifake_dataset.py``)::

    <root>/train/{REAL,FAKE}/<image>.jpg      50,000 + 50,000 images, 32x32
    <root>/test/{REAL,FAKE}/<image>.jpg       10,000 + 10,000

CIFAKE has no validation split. Here ``val`` is carved out of ``train``: an image goes to val when
a seeded hash of its path relative to ``train/`` (e.g. ``REAL/1000 (2).jpg``) falls below
``val_fraction`` (default 10%); ``train`` is the rest. ``test`` is CIFAKE's test split.
Class folder names are matched as by the ``folder`` reader (any case, its synonyms); both classes
must be present. Hidden files (``.DS_Store``, macOS ``._<name>``) are never listed.
"""

from __future__ import annotations

import os

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.folder import carve, check_fraction, class_items
from bnn.data.layout import check_split, layout_error, resolve_root

ENV_VAR = "BNN_DATA_CIFAKE"
LAYOUT = "<root>/{train,test}/{REAL,FAKE}/<image>.jpg"
SOURCE = (
    "CIFAKE (Bird & Lotfi, IEEE Access 2024), https://www.kaggle.com/datasets/birdy654/"
    "cifake-real-and-ai-generated-synthetic-images"
)


def read_cifake(
    split: str, root: str | os.PathLike | None, *, seed: int = 0, val_fraction: float = 0.1
) -> Listing:
    """Lists one CIFAKE split (see the module docstring for the val convention).

    Args:
        split: ``train``, ``val`` (held out of train) or ``test``.
        root: CIFAKE folder; ``None`` reads ``$BNN_DATA_CIFAKE``.
        seed: Seed of the train/val hash split.
        val_fraction: Share of train held out as val.
    """
    check_split(split)
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = resolve_root(root, env_var=ENV_VAR, layout=LAYOUT, source=SOURCE)
    errors = {"layout": LAYOUT, "env_var": ENV_VAR, "source": SOURCE}
    folder = root / ("test" if split == "test" else "train")
    if not folder.is_dir():
        raise layout_error(f"missing folder '{folder}'", **errors)
    items = class_items(folder, recursive=False, **errors)
    if split == "test":
        return Listing(items, [root], f"CIFAKE test at {root}")
    fractions = {"val": val_fraction, "train": 1.0 - val_fraction}
    items = carve(items, folder, seed, fractions, split)
    if split == "val":
        what = f"CIFAKE val ({val_fraction:.0%} of train held out by seeded hash, seed={seed})"
    else:
        what = f"CIFAKE train (minus {val_fraction:.0%} held out as val, seed={seed})"
    return Listing(items, [root], f"{what} at {root}")


DATASETS.add("cifake", DatasetSpec(read_cifake, ENV_VAR, LAYOUT, SOURCE))
