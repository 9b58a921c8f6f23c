"""Image decoding and preprocessing, as in the training code of Lanzino et al., "Faster Than Lies:
Real-time Deepfake Detection using Binary Neural Networks", CVPRW 2024 (``coco_fake_dataset.py``).

train: Resize(shorter side -> R + R // 8, bilinear, antialias) -> random horizontal flip -> random
       vertical flip -> rotation by -90 or +90 degrees (always one of the two) -> RandomCrop(R)
       -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> float in [0, 1]                        (3, R, R)
eval:  Resize(shorter side -> R + R // 8) -> CenterCrop(R) -> float in [0, 1]       (3, R, R)

One deliberate difference: the authors rotate with ``RandomRotation`` inside the original canvas,
which for non-square images fills the corners with black; here the rotation is exact (``expand``)
so a crop never contains fill pixels. ImageNet normalisation is not done here: it lives inside the
detector (``bnn.detector``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch import Tensor


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decodes an image file fully into an 8-bit RGB PIL image.

    Grey (``1``, ``L``), palette (``P``), CMYK, YCbCr and other 8-bit modes are converted with PIL.
    Alpha (``RGBA``, ``LA``, ``P`` with transparency) is dropped: the stored colour values are kept
    as they are, not composited on a background, so generator pixels reach the detector unchanged.
    16-bit grey (``I;16*``) is scaled by 1/257; 32-bit ``I`` likewise when its values exceed 255;
    float ``F`` is taken as [0, 1] when its maximum is at most 1, else as [0, 255].

    Raises:
        OSError: Unreadable or truncated file (``PIL.UnidentifiedImageError`` is an ``OSError``).
        ValueError: A mode PIL cannot convert.
    """
    with Image.open(path) as image:
        image.load()  # decode now: truncated files raise here, not later in the transform
        mode = image.mode
        if mode == "RGB":
            return image.copy()
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _high_depth_to_rgb(image)
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey image -> 8-bit RGB (see ``load_rgb``)."""
    values = np.asarray(image).astype(np.float64)  # (H, W)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        values = values * 255.0 if peak <= 1.0 else values
    elif image.mode.startswith("I;16") or peak > 255:
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def resize_size(resolution: int) -> int:
    """Shorter side after the resize: ``resolution + resolution // 8`` (224 -> 252)."""
    return resolution + resolution // 8


def build_transform(resolution: int, train: bool) -> Callable[[Image.Image], Tensor]:
    """The training (augmenting) or evaluation preprocessing; see the module docstring.

    Args:
        resolution: Output side R; images of any size (also smaller than R) are resized first.
        train: Random augmentation (``True``) or deterministic centre crop (``False``).

    Returns:
        A callable mapping an RGB PIL image to a float tensor (3, R, R) in [0, 1].
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    resize = T.Resize(
        resize_size(resolution), interpolation=T.InterpolationMode.BILINEAR, antialias=True
    )
    to_float = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if not train:
        return T.Compose([resize, T.CenterCrop(resolution), *to_float])
    rotate = T.RandomChoice(
        [T.RandomRotation((-90, -90), expand=True), T.RandomRotation((90, 90), expand=True)],
        p=[0.5, 0.5],
    )
    return T.Compose(
        [
            resize,
            T.RandomHorizontalFlip(p=0.5),
            T.RandomVerticalFlip(p=0.5),
            rotate,
            T.RandomCrop(resolution),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2),
            *to_float,
        ]
    )
