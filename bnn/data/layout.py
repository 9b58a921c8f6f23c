"""Finding image files on disk: roots from arguments or environment variables, the one image
listing (hidden files, macOS ``._*`` / ``__MACOSX`` and other clutter left out), case-insensitive
folder matching, layout errors that say what was expected, and deterministic hash splits.

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from bnn.errors import DatasetLayoutError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Folders that tools write next to the data (compared case-insensitively, lower case here).
CACHE_ENV = "BNN_CACHE_DIR"  # where generated data and audit results are cached
DEFAULT_CACHE_DIR = "~/.cache/bnn"
JUNK_FOLDERS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information"})
REAL, FAKE = 0, 1
log = logging.getLogger(__name__)
_WARNED: set[str] = set()
_WARNED_CAP = 1000


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


def is_hidden(name: str) -> bool:
    """Whether a file or folder is system clutter that never holds dataset images.

    Hidden names (a leading ``.``: macOS ``._<name>`` AppleDouble companions and ``.DS_Store``,
    ``.ipynb_checkpoints``, ``.git``, ...) and the folders in ``JUNK_FOLDERS`` (``__MACOSX`` of
    zips made on a Mac, Synology ``@eaDir`` thumbnails, Windows ``$RECYCLE.BIN`` and ``System
    Volume Information``), in any capitalisation.
    """
    return name.startswith(".") or name.casefold() in JUNK_FOLDERS


def is_image(name: str) -> bool:
    """Whether a file name is listed as an image: one of ``IMAGE_EXTENSIONS`` (case-insensitive)
    and not hidden (``is_hidden``: ``._photo.png`` is an 82-byte macOS AppleDouble header)."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (``is_image``) in ``folder``, optionally in its sub-folders too, sorted by path.

    The one listing every reader and ``python -m bnn detect`` use, so counts, class weights, hash
    splits and data digests only ever see these files. Sub-folders that are hidden or in
    ``JUNK_FOLDERS`` are not entered; symbolic links to folders are not followed (as ``rglob``).
    """
    paths: list[Path] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_hidden(d)] if recursive else []
        base = Path(current)
        found = [base / f for f in files if is_image(f) and (base / f).is_file()]
        odd = [p.name for p in found if not is_utf8(p.name)]
        if odd:
            warn_once(log, f"{len(odd)} image file name(s) in '{display_path(base)}' are not valid UTF-8 (e.g. "
                           f"'{display_path(odd[0])}'); they are read, and hashed by their bytes")
        paths.extend(found)
    return sorted(paths)


def is_utf8(name: str) -> bool:
    """Whether a file name decoded by the OS (``surrogateescape``) was valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_bytes(name: str | os.PathLike) -> bytes:
    """A path's bytes as the file system holds them: UTF-8, and the original bytes of a name that
    was not UTF-8 (Python gives those as lone surrogates), so every name can be hashed."""
    return os.fspath(name).encode("utf-8", "surrogateescape")


def display_path(name: str | os.PathLike) -> str:
    """A path printable on any stream: bytes that are not UTF-8 shown as ``\\xe9``."""
    return path_bytes(name).decode("utf-8", "backslashreplace")


def child_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that are not hidden or junk (``is_hidden``), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(folder / e.name for e in entries if e.is_dir() and not is_hidden(e.name))


def find_children(folder: Path, names: Sequence[str]) -> list[Path]:
    """Sub-folders of ``folder`` named one of ``names``, compared case-insensitively, sorted."""
    wanted = {name.casefold() for name in names}
    return [child for child in child_folders(folder) if child.name.casefold() in wanted]


def warn_once(logger: logging.Logger, message: str) -> None:
    """Logs ``message`` as a warning the first time it is seen in this process.

    Readers run once per split, so a layout remark would otherwise repeat three times. At most
    ``_WARNED_CAP`` distinct messages are remembered; later ones are always logged.
    """
    if message in _WARNED:
        return
    if len(_WARNED) < _WARNED_CAP:
        _WARNED.add(message)
    logger.warning(message)


def hash_unit(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` (same on every machine and run)."""
    digest = hashlib.sha256(f"{seed}:".encode() + path_bytes(key)).digest()
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


def cache_dir() -> Path:
    """``$BNN_CACHE_DIR`` if set, else ``~/.cache/bnn``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
