"""Image decoding and preprocessing: the training augmentation as presets with typed knobs, and the
evaluation preprocessing of Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using
Binary Neural Networks", CVPRW 2024 (``coco_fake_dataset.py``).

train, preset ``paper`` (the authors' recipe): Resize(shorter side -> R + R // 8, bilinear,
       antialias) -> random horizontal flip (p 0.5) -> random vertical flip (p 0.5) -> rotation by
       -90 or +90 degrees (ALWAYS one of the two: a training image is never upright, while
       evaluation images are) -> RandomCrop(R) -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> [0, 1] (3, R, R)
train, preset ``standard`` (default of ``bnn.config.AugmentConfig``): the same resize and random
       crop with horizontal flips only: no rotation and no colour jitter, which shifts hue and
       contrast, i.e. the colour statistics and high frequencies that carry generator traces
       (measured in ``docs/training.md``).
train, preset ``none``: the evaluation preprocessing.
eval:  Resize(shorter side -> R + R // 8) -> CenterCrop(R) -> float in [0, 1]       (3, R, R)

One deliberate difference: the authors rotate with ``RandomRotation`` inside the original canvas,
which for non-square images fills the corners with black; here the rotation is exact (``expand``)
so a crop never contains fill pixels. ImageNet normalisation is not done here: it lives inside the
detector (``bnn.detector``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

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


# The knobs of a training augmentation; a preset gives every knob a value (see the module docstring).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hflip_p": 0.5, "vflip_p": 0.5, "rotate90_p": 1.0, "color_jitter": 0.2, "random_crop": True},
    "standard": {"hflip_p": 0.5, "vflip_p": 0.0, "rotate90_p": 0.0, "color_jitter": 0.0, "random_crop": True},
    "none": {"hflip_p": 0.0, "vflip_p": 0.0, "rotate90_p": 0.0, "color_jitter": 0.0, "random_crop": False},
}


def build_transform(
    resolution: int, train: bool, augment: Mapping[str, Any] | None = None
) -> Callable[[Image.Image], Tensor]:
    """The training (augmenting) or evaluation preprocessing; see the module docstring.

    Args:
        resolution: Output side R; images of any size (also smaller than R) are resized first.
        train: Random augmentation (``True``) or deterministic centre crop (``False``).
        augment: The training knobs (``AUGMENT_PRESETS`` keys: ``hflip_p``, ``vflip_p``,
            ``rotate90_p`` = probability of a +-90 degree rotation, ``color_jitter`` = strength of
            brightness/contrast/saturation/hue jitter, ``random_crop``); ``None`` is the ``paper``
            preset. Ignored when ``train`` is false. ``bnn.config.AugmentConfig.resolved()`` gives it.

    Returns:
        A callable mapping an RGB PIL image to a float tensor (3, R, R) in [0, 1].

    Raises:
        ValueError: A bad resolution or an unknown/missing augmentation knob.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    resize = T.Resize(
        resize_size(resolution), interpolation=T.InterpolationMode.BILINEAR, antialias=True
    )
    to_float = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if not train:
        return T.Compose([resize, T.CenterCrop(resolution), *to_float])
    knobs = dict(AUGMENT_PRESETS["paper"] if augment is None else augment)
    if set(knobs) != set(AUGMENT_PRESETS["paper"]):
        raise ValueError(f"augment needs exactly the keys {sorted(AUGMENT_PRESETS['paper'])}, got {sorted(knobs)}")
    steps: list[Callable] = [resize]
    # Each random step is left out at probability 0, so a preset draws the same random numbers as
    # the pipeline it names (the ``paper`` preset is the authors' pipeline draw for draw).
    if knobs["hflip_p"] > 0:
        steps.append(T.RandomHorizontalFlip(p=knobs["hflip_p"]))
    if knobs["vflip_p"] > 0:
        steps.append(T.RandomVerticalFlip(p=knobs["vflip_p"]))
    if knobs["rotate90_p"] > 0:
        rotate = T.RandomChoice(
            [T.RandomRotation((-90, -90), expand=True), T.RandomRotation((90, 90), expand=True)],
            p=[0.5, 0.5],
        )
        steps.append(rotate if knobs["rotate90_p"] >= 1 else T.RandomApply([rotate], p=knobs["rotate90_p"]))
    steps.append(T.RandomCrop(resolution) if knobs["random_crop"] else T.CenterCrop(resolution))
    if knobs["color_jitter"] > 0:
        j = knobs["color_jitter"]
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j, 0.5)))
    return T.Compose([*steps, *to_float])
