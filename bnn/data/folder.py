"""Reader for any real/fake folder tree, and the helpers the CIFAKE and synthetic readers share.

Accepted layouts::

    <root>/<split>/<class>/**/<image>     splits as given; a missing val folder is carved out of
                                          train (seeded hash)
    <root>/<class>/**/<image>             split by a seeded hash of the relative path
                                          (default 80% train, 10% val, 10% test)

Folder names are matched in any capitalisation (``REAL``, ``Real``, ``real``):

    split  train: ``train``, ``training``; val: ``val``, ``validation``, ``valid``, ``dev``;
           test: ``test``, ``testing``
    class  real (label 0): ``real``, ``0_real`` (CNNDetection / ForenSynths), ``nature`` (GenImage);
           fake (label 1): ``fake``, ``1_fake`` (CNNDetection / ForenSynths), ``ai`` (GenImage)

Two folders naming the same split or class (``real`` and ``REAL`` side by side) are a layout
error. Other folders where a split or class folder is expected, and images lying directly there,
are logged as warnings and not read. Hidden files and folders (``.DS_Store``, macOS ``._<name>``
AppleDouble files), ``__MACOSX`` and the other ``layout.JUNK_FOLDERS`` are never listed
(``layout.list_images``). A tree (or split) may hold one class only, e.g. a set of fakes from one
generator: it can be evaluated (accuracy and the class's recall; AUC, EER and AP are not defined
and come out NaN), but training needs both classes (``bnn.train.fit`` refuses).

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.dataset import Item
from bnn.data.layout import (
    FAKE,
    REAL,
    check_split,
    child_folders,
    find_children,
    hash_split,
    layout_error,
    list_images,
    resolve_root,
    warn_once,
)

log = logging.getLogger(__name__)

ENV_VAR = "BNN_DATA_FOLDER"
LAYOUT = "<root>/{train,val,test}/{REAL,FAKE}/<images> or <root>/{REAL,FAKE}/<images>"
SOURCE = "your own images (any real/fake folder tree)"

# Accepted names, compared case-insensitively (see the module docstring for their sources).
REAL_NAMES = ("real", "0_real", "nature")
FAKE_NAMES = ("fake", "1_fake", "ai")
CLASS_FOLDERS = {"REAL": REAL_NAMES, "FAKE": FAKE_NAMES}  # label 0, label 1
SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid", "dev"),
    "test": ("test", "testing"),
}


def find_folder(
    folder: Path, names: tuple[str, ...], what: str, *, layout: str, env_var: str | None, source: str
) -> Path | None:
    """The one sub-folder of ``folder`` named one of ``names`` (any case), or ``None``.

    Raises:
        DatasetLayoutError: Two sub-folders match (``what`` names the split or class).
    """
    found = find_children(folder, names)
    if len(found) > 1:
        raise layout_error(
            f"{' and '.join(repr(f.name) for f in found)} in '{folder}' both name {what}; "
            "keep one",
            layout=layout,
            env_var=env_var,
            source=source,
        )
    return found[0] if found else None


def class_items(
    folder: Path,
    *,
    recursive: bool,
    layout: str,
    env_var: str | None,
    source: str,
    one_class: bool = False,
) -> list[Item]:
    """Images of ``folder``'s real class folder (label 0) then its fake one (label 1), each sorted
    by path; folder names as in the module docstring. Other sub-folders and images lying directly
    in ``folder`` are logged as warnings and left out.

    Args:
        folder: The folder holding the class folders.
        recursive: Also list images in sub-folders of the class folders.
        layout, env_var, source: For the error message (``layout_error``).
        one_class: Accept a missing or image-less class folder (logged as a warning) as long as
            the other class has images.

    Raises:
        DatasetLayoutError: A class folder is missing or holds no image (with ``one_class``: both
            are), or two folders name the same class.
    """
    errors = {"layout": layout, "env_var": env_var, "source": source}
    report_unknown(folder, CLASS_FOLDERS, "class")
    items: list[Item] = []
    problems: list[tuple[str, str]] = []  # (class, what is wrong)
    for (label_name, names), label in zip(CLASS_FOLDERS.items(), (REAL, FAKE), strict=True):
        child = find_folder(folder, names, f"the {label_name} class", **errors)
        if child is None:
            problems.append((label_name, f"no {label_name} folder ({', '.join(names)}; any case) in '{folder}'"))
            continue
        paths = list_images(child, recursive=recursive)
        if not paths:
            problems.append((label_name, f"no image files in '{child}'"))
            continue
        items.extend((str(p), label) for p in paths)
    if problems and (not one_class or not items):
        raise layout_error("; ".join(problem for _, problem in problems), **errors)
    for label_name, problem in problems:
        warn_once(
            log,
            f"{problem}: reading one class only. Evaluation gives accuracy and the "
            f"{'fake' if label_name == 'REAL' else 'real'} recall (AUC, EER, AP are not defined); "
            "training needs both classes",
        )
    return items


def report_unknown(folder: Path, groups: dict[str, tuple[str, ...]], what: str) -> None:
    """Logs a warning for each sub-folder of ``folder`` that names none of ``groups`` (any case),
    and one for images lying directly in ``folder``: the readers do not read either.

    Args:
        folder: Where ``what`` folders are expected.
        groups: Accepted names per role, e.g. ``CLASS_FOLDERS``; listed in the message.
        what: ``"class"`` or ``"split"``.
    """
    known = {name.casefold() for names in groups.values() for name in names}
    for child in child_folders(folder):
        if child.name.casefold() not in known:
            warn_once(
                log,
                f"ignoring folder '{child}': not a {what} folder (expected {names_text(groups)}; "
                "any case)",
            )
    loose = list_images(folder)
    if loose:
        warn_once(
            log,
            f"ignoring {len(loose)} image file(s) lying directly in '{folder}' "
            f"(e.g. '{loose[0].name}'): images are read from {what} folders only",
        )


def names_text(groups: dict[str, tuple[str, ...]]) -> str:
    """``"REAL: real, 0_real, nature; FAKE: fake, 1_fake, ai"``, for messages."""
    return "; ".join(f"{role}: {', '.join(names)}" for role, names in groups.items())


def item_sources(items: list[Item]) -> list[str]:
    """Per item, its source: the first sub-folder under its class folder (``FAKE/stylegan2/x.png``
    -> ``stylegan2``), or ``real`` / ``fake`` for an image lying directly in the class folder.

    The class folder is the nearest ancestor named like a class (``CLASS_FOLDERS``, any case).
    """
    class_names = {name.casefold() for names in CLASS_FOLDERS.values() for name in names}
    sources = []
    for path, label in items:
        parents = Path(path).parents
        below = None  # the folder just below the class folder
        for parent in parents:
            if parent.name.casefold() in class_names:
                break
            below = parent
        else:
            below = None
        sources.append(below.name if below is not None else ("fake" if label == FAKE else "real"))
    return sources


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
    """Lists one split of a real/fake folder tree (see the module docstring); an image's source is
    the first sub-folder under its class folder (``item_sources``).

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
    split_dirs = {
        name: find_folder(root, names, f"the {name} split", **errors)
        for name, names in SPLIT_NAMES.items()
    }

    if any(split_dirs.values()):
        report_unknown(root, SPLIT_NAMES, "split")
        folder = split_dirs[split]
        if folder is not None:
            items = class_items(folder, recursive=True, one_class=True, **errors)
            if split == "train" and split_dirs["val"] is None:
                items = carve(items, folder, seed, _held_out(val_fraction), "train")
                return _listing(
                    items,
                    root,
                    f"folder tree train (minus {val_fraction:.0%} held out as val, "
                    f"seeded hash, seed={seed}) at {root}",
                )
            return _listing(items, root, f"folder tree {split} at {root}")
        if split == "val" and split_dirs["train"] is not None:
            items = class_items(split_dirs["train"], recursive=True, one_class=True, **errors)
            items = carve(items, split_dirs["train"], seed, _held_out(val_fraction), "val")
            return _listing(
                items,
                root,
                f"folder tree val ({val_fraction:.0%} of train held out by seeded "
                f"hash, seed={seed}) at {root}",
            )
        raise layout_error(f"no {'/'.join(SPLIT_NAMES[split])} folder in '{root}'", **errors)

    if not find_children(root, REAL_NAMES + FAKE_NAMES):
        raise layout_error(
            f"neither split folders ({names_text(SPLIT_NAMES)}) nor REAL/FAKE folders "
            f"({names_text(CLASS_FOLDERS)}) in '{root}' (names in any case)",
            **errors,
        )
    if train_fraction + val_fraction > 1.0:
        raise ValueError(
            f"train_fraction + val_fraction must be <= 1, got {train_fraction + val_fraction}"
        )
    items = class_items(root, recursive=True, one_class=True, **errors)
    fractions = {
        "train": train_fraction,
        "val": val_fraction,
        "test": 1.0 - train_fraction - val_fraction,
    }
    items = carve(items, root, seed, fractions, split)
    shares = "/".join(f"{f:.0%}" for f in fractions.values())
    return _listing(
        items,
        root,
        f"folder tree {split} (train/val/test {shares} by seeded hash, seed={seed}) at {root}",
    )


def _listing(items: list[Item], root: Path, description: str) -> Listing:
    return Listing(items, [root], description, item_sources(items))


def _held_out(val_fraction: float) -> dict[str, float]:
    return {"val": val_fraction, "train": 1.0 - val_fraction}


DATASETS.add("folder", DatasetSpec(read_folder, ENV_VAR, LAYOUT, SOURCE))
