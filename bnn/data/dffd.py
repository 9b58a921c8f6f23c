"""Reader for DFFD, the Diverse Fake Face Dataset (Dang et al., "On the Detection of Digital Face
Manipulation", CVPR 2020), one of the benchmarks of Lanzino et al., "Faster Than Lies: Real-time
Deepfake Detection using Binary Neural Networks", CVPRW 2024.

Layout (the authors' ``dffd_dataset.py``)::

    <root>/img_align_celeba/list_eval_partition.txt     "<file> <0|1|2>" (0 train, 1 val, 2 test)
    <root>/img_align_celeba/<file>                      real (CelebA, aligned)
    <root>/ffhq/{train,validation,test}/<image>         real (FFHQ)
    <root>/<fake>/{train,validation,test}/<image>       fake, <fake> in pggan_v1, pggan_v2,
                                                        stylegan_ffhq, stylegan_celeba, faceapp,
                                                        stargan

Splits are DFFD's own: CelebA by its partition file, the other sources by their folders (``val``
reads ``validation``). Images are listed flat (no sub-folders), as in the authors' code; hidden
files (``.DS_Store``, macOS ``._<name>``) are never listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.dataset import Item
from bnn.data.layout import FAKE, REAL, check_split, layout_error, list_images, resolve_root

ENV_VAR = "BNN_DATA_DFFD"
CELEBA = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
REAL_SOURCES = ("ffhq",)
FAKE_SOURCES = ("pggan_v1", "pggan_v2", "stylegan_ffhq", "stylegan_celeba", "faceapp", "stargan")
SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}
CELEBA_PARTITION = {"train": 0, "val": 1, "test": 2}
LAYOUT = (
    f"<root>/{CELEBA}/{{{PARTITION_FILE},<images>}} and "
    f"<root>/{{{','.join(REAL_SOURCES + FAKE_SOURCES)}}}/{{train,validation,test}}/<images>"
)
SOURCE = (
    "DFFD (Dang et al., 'On the Detection of Digital Face Manipulation', CVPR 2020), "
    "http://cvlab.cse.msu.edu/dffd (CelebA img_align_celeba and list_eval_partition.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)"
)
_MISSING_SHOWN = 3


def read_dffd(split: str, root: str | os.PathLike | None) -> Listing:
    """Lists one DFFD split: CelebA and FFHQ reals, the six generator/editing sources as fakes.
    Each image's source is its folder (``celeba`` for ``img_align_celeba``, ``ffhq``, ``pggan_v1``,
    ..., ``stargan``).

    Args:
        split: ``train``, ``val`` or ``test`` (DFFD's own splits).
        root: DFFD folder; ``None`` reads ``$BNN_DATA_DFFD``.
    """
    check_split(split)
    root = resolve_root(root, env_var=ENV_VAR, layout=LAYOUT, source=SOURCE)
    items = _celeba_items(root, split)
    origins = ["celeba"] * len(items)
    for sources, label in ((REAL_SOURCES, REAL), (FAKE_SOURCES, FAKE)):
        for source in sources:
            folder = root / source / SPLIT_FOLDERS[split]
            if not folder.is_dir():
                raise _error(f"missing folder '{folder}'")
            paths = list_images(folder)
            if not paths:
                raise _error(f"no image files in '{folder}'")
            items.extend((str(p), label) for p in paths)
            origins.extend([source] * len(paths))
    fakes = "+".join(FAKE_SOURCES)
    return Listing(items, [root], f"DFFD {split} (celeba+ffhq real; {fakes} fake) at {root}", origins)


def _celeba_items(root: Path, split: str) -> list[Item]:
    """CelebA images of ``split`` according to ``list_eval_partition.txt``."""
    folder = root / CELEBA
    partition = folder / PARTITION_FILE
    if not partition.is_file():
        raise _error(f"missing file '{partition}'")
    wanted = CELEBA_PARTITION[split]
    names = []
    for number, line in enumerate(partition.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise _error(f"line {number} of '{partition}' is not '<file> <0|1|2>': {line!r}")
        if int(fields[1]) == wanted:
            names.append(fields[0])
    with os.scandir(folder) as entries:
        present = {e.name for e in entries if e.is_file()}
    missing = [n for n in names if n not in present]
    if missing:
        raise _error(
            f"{len(missing)} image(s) listed in '{partition}' are missing from '{folder}' "
            f"(e.g. {', '.join(missing[:_MISSING_SHOWN])})"
        )
    if not names:
        raise _error(f"'{partition}' lists no image for split {split} ({wanted})")
    return [(str(folder / name), REAL) for name in sorted(names)]


def _error(problem: str) -> Exception:
    return layout_error(problem, layout=LAYOUT, env_var=ENV_VAR, source=SOURCE)


DATASETS.add("dffd", DatasetSpec(read_dffd, ENV_VAR, LAYOUT, SOURCE))
