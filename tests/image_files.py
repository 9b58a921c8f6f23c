"""Image files for reader tests: small random images in any PIL mode and a tiny DFFD tree.

A helper module (not a test module) shared by ``test_data.py``, ``test_protocol.py`` and the
``dffd_root`` fixture of ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10), mode: str = "RGB"):
    """A small random image; ``mode`` "L", "I;16" or "CMYK" exercise the decoder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L")
    else:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mode="RGB")
        image = image.convert(mode)
    image.save(path)


def make_dffd_tree(root: Path) -> Path:
    """A tiny DFFD tree (CelebA list with its partition file, the 7 source folders with
    train/validation/test images, a CMYK and a 16-bit image) at ``root``; returns ``root``."""
    celeba = root / "img_align_celeba"
    lines = []
    for i in range(9):
        name = f"{i + 1:06d}.jpg"
        write_image(celeba / name, seed=i, mode="CMYK" if i == 0 else "RGB")
        lines.append(f"{name} {i % 3}")
    (celeba / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    sources = [
        "ffhq",
        "pggan_v1",
        "pggan_v2",
        "stylegan_ffhq",
        "stylegan_celeba",
        "faceapp",
        "stargan",
    ]
    for s, source in enumerate(sources):
        for folder in ("train", "validation", "test"):
            for i in range(2):
                write_image(root / source / folder / f"{source}_{i}.png", seed=10 * s + i)
    write_image(root / "stargan" / "test" / "deep16.png", mode="I;16")
    return root
