"""Finding image files on disk: roots from arguments or environment variables, layout errors that
say what was expected, and deterministic hash splits.

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REAL, FAKE = 0, 1


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing or its folders do not match the expected layout."""


def layout_error(
    problem: str, *, layout: str, env_var: str | None, source: str
) -> DatasetLayoutError:
    """Builds a ``DatasetLayoutError`` whose message says what is wrong and how to fix it.

    Args:
        problem: What was found (or not), naming the path.
        layout: The expected folder layout.
        env_var: Environment variable that can point at the root, if any.
        source: Where the dataset comes from.
    """
    lines = [problem, f"expected layout: {layout}"]
    if env_var:
        lines.append(f"pass root=... or set {env_var} to the dataset folder")
    lines.append(f"dataset source: {source}")
    return DatasetLayoutError("\n  ".join(lines))


def check_split(split: str) -> str:
    """Returns ``split`` if it is in ``SPLITS``; raises ``ValueError`` listing them otherwise."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def resolve_root(
    root: str | os.PathLike | None, *, env_var: str, layout: str, source: str, what: str = "root"
) -> Path:
    """Returns the dataset folder: ``root`` if given, else ``$env_var``; it must be a directory.

    Args:
        root: Folder given by the caller, or ``None``.
        env_var: Environment variable read when ``root`` is ``None``.
        layout: Expected layout, for the error message.
        source: Where the dataset comes from, for the error message.
        what: Name of the argument (``root``, ``fake_root``), for the error message.

    Raises:
        DatasetLayoutError: No folder given and ``env_var`` unset, or the folder does not exist.
    """
    if root is None:
        value = os.environ.get(env_var)
        if not value:
            raise layout_error(
                f"no {what} given and {env_var} is not set",
                layout=layout,
                env_var=env_var,
                source=source,
            )
        root = value
    path = Path(root).expanduser()
    if not path.is_dir():
        raise layout_error(
            f"{what} '{path}' is not a directory", layout=layout, env_var=env_var, source=source
        )
    return path


def is_image(name: str) -> bool:
    """Whether a file name has one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (optionally in its sub-folders too), sorted by path."""
    if recursive:
        paths = [p for p in folder.rglob("*") if p.is_file() and is_image(p.name)]
    else:
        with os.scandir(folder) as entries:
            paths = [folder / e.name for e in entries if e.is_file() and is_image(e.name)]
    return sorted(paths)


def find_child(folder: Path, names: Sequence[str]) -> Path | None:
    """The first sub-folder of ``folder`` named one of ``names``, or ``None``."""
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    return None


def hash_unit(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` (same on every machine and run)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(key: str, seed: int, fractions: dict[str, float]) -> str:
    """Assigns ``key`` to one of ``fractions``' splits (in insertion order) by ``hash_unit``."""
    u = hash_unit(key, seed)
    total = 0.0
    for split, fraction in fractions.items():
        total += fraction
        if u < total:
            return split
    return list(fractions)[-1]
