"""Reader for any real/fake folder tree, and the helpers the CIFAKE and synthetic readers share.

Accepted layouts (class folders ``REAL``/``FAKE``, also ``real``/``fake``; ``val`` may be named
``validation`` or ``valid``):

    <root>/{train,val,test}/{REAL,FAKE}/**/<image>     splits as given; a missing val folder is
                                                       carved out of train (seeded hash)
    <root>/{REAL,FAKE}/**/<image>                      split by a seeded hash of the relative path
                                                       (default 80% train, 10% val, 10% test)

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.dataset import Item
from bnn.data.layout import (
    FAKE,
    REAL,
    check_split,
    find_child,
    hash_split,
    layout_error,
    list_images,
    resolve_root,
)

ENV_VAR = "BNN_DATA_FOLDER"
LAYOUT = "<root>/{train,val,test}/{REAL,FAKE}/<images> or <root>/{REAL,FAKE}/<images>"
SOURCE = "your own images (any real/fake folder tree)"

REAL_NAMES = ("REAL", "real", "Real")
FAKE_NAMES = ("FAKE", "fake", "Fake")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


def class_items(
    folder: Path, *, recursive: bool, layout: str, env_var: str | None, source: str
) -> list[Item]:
    """Images of ``folder/REAL`` (label 0) then ``folder/FAKE`` (label 1), each sorted by path.

    Raises:
        DatasetLayoutError: A class folder is missing or holds no image.
    """
    items: list[Item] = []
    for names, label in ((REAL_NAMES, REAL), (FAKE_NAMES, FAKE)):
        child = find_child(folder, names)
        if child is None:
            raise layout_error(
                f"no {names[0]} folder in '{folder}'", layout=layout, env_var=env_var, source=source
            )
        paths = list_images(child, recursive=recursive)
        if not paths:
            raise layout_error(
                f"no image files in '{child}'", layout=layout, env_var=env_var, source=source
            )
        items.extend((str(p), label) for p in paths)
    return items


def carve(
    items: list[Item], base: Path, seed: int, fractions: dict[str, float], split: str
) -> list[Item]:
    """The items whose path relative to ``base`` hashes (with ``seed``) into ``split``."""
    return [
        (path, label)
        for path, label in items
        if hash_split(Path(path).relative_to(base).as_posix(), seed, fractions) == split
    ]


def check_fraction(name: str, value: float) -> float:
    """Returns ``value`` if it lies in [0, 1]; raises ``ValueError`` otherwise."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def read_folder(
    split: str,
    root: str | os.PathLike | None,
    *,
    seed: int = 0,
    train_fraction: float = 0.8,
    val_fraction: float = 0.1,
) -> Listing:
    """Lists one split of a real/fake folder tree (see the module docstring).

    Args:
        split: ``train``, ``val`` or ``test``.
        root: Tree root; ``None`` reads ``$BNN_DATA_FOLDER``.
        seed: Seed of the hash splits.
        train_fraction: Share of train in a bare ``{REAL,FAKE}`` tree.
        val_fraction: Share of val in a bare tree, or of train held out as val when a split tree
            has no val folder. The test share of a bare tree is the rest.
    """
    check_split(split)
    train_fraction = check_fraction("train_fraction", train_fraction)
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = resolve_root(root, env_var=ENV_VAR, layout=LAYOUT, source=SOURCE)
    errors = {"layout": LAYOUT, "env_var": ENV_VAR, "source": SOURCE}
    split_dirs = {name: find_child(root, names) for name, names in SPLIT_NAMES.items()}

    if any(split_dirs.values()):
        folder = split_dirs[split]
        if folder is not None:
            items = class_items(folder, recursive=True, **errors)
            if split == "train" and split_dirs["val"] is None:
                items = carve(items, folder, seed, _held_out(val_fraction), "train")
                return Listing(
                    items,
                    [root],
                    f"folder tree train (minus {val_fraction:.0%} held out as val, "
                    f"seeded hash, seed={seed}) at {root}",
                )
            return Listing(items, [root], f"folder tree {split} at {root}")
        if split == "val" and split_dirs["train"] is not None:
            items = class_items(split_dirs["train"], recursive=True, **errors)
            items = carve(items, split_dirs["train"], seed, _held_out(val_fraction), "val")
            return Listing(
                items,
                [root],
                f"folder tree val ({val_fraction:.0%} of train held out by seeded "
                f"hash, seed={seed}) at {root}",
            )
        raise layout_error(f"no {'/'.join(SPLIT_NAMES[split])} folder in '{root}'", **errors)

    if find_child(root, REAL_NAMES) is None and find_child(root, FAKE_NAMES) is None:
        raise layout_error(f"neither split folders nor REAL/FAKE folders in '{root}'", **errors)
    if train_fraction + val_fraction > 1.0:
        raise ValueError(
            f"train_fraction + val_fraction must be <= 1, got {train_fraction + val_fraction}"
        )
    items = class_items(root, recursive=True, **errors)
    fractions = {
        "train": train_fraction,
        "val": val_fraction,
        "test": 1.0 - train_fraction - val_fraction,
    }
    items = carve(items, root, seed, fractions, split)
    shares = "/".join(f"{f:.0%}" for f in fractions.values())
    return Listing(
        items,
        [root],
        f"folder tree {split} (train/val/test {shares} by seeded hash, seed={seed}) at {root}",
    )


def _held_out(val_fraction: float) -> dict[str, float]:
    return {"val": val_fraction, "train": 1.0 - val_fraction}


DATASETS.add("folder", DatasetSpec(read_folder, ENV_VAR, LAYOUT, SOURCE))
