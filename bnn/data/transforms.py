"""Image decoding (``load_rgb``, the one decoder, and ``UnreadableImage``, the one definition of a
file that cannot be used) and preprocessing: the training augmentation as presets with typed knobs,
and the evaluation preprocessing of Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection
using Binary Neural Networks", CVPRW 2024 (``coco_fake_dataset.py``).

train, preset ``paper`` (the authors' recipe): Resize(shorter side -> R + R // 8, bilinear,
       antialias) -> random horizontal flip (p 0.5) -> random vertical flip (p 0.5) -> rotation by
       -90 or +90 degrees (ALWAYS one of the two: a training image is never upright, while
       evaluation images are) -> RandomCrop(R) -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> [0, 1] (3, R, R)
train, preset ``standard`` (default of ``bnn.config.AugmentConfig``): the same resize and random
       crop with horizontal flips only: no rotation and no colour jitter, which shifts hue and
       contrast, i.e. the colour statistics and high frequencies that carry generator traces
       (measured in ``docs/training.md``).
train, preset ``none``: the evaluation preprocessing.
train, any preset, degradations (off in every preset): before everything above, on the image as
       decoded, a Gaussian blur with probability ``blur_p`` (sigma ~ U[``blur_sigma``] pixels)
       then a JPEG re-encoding with probability ``jpeg_p`` (quality ~ U{``jpeg_quality``}):
       CNNDetection's training recipe (Wang et al., CVPR 2020: both at p 0.5, sigma in [0, 3],
       quality in 30..100), which degrades the full image before its crop (``bnn.data.perturb``).
eval:  Resize(shorter side -> R + R // 8) -> CenterCrop(R) -> float in [0, 1]       (3, R, R)

One deliberate difference: the authors rotate with ``RandomRotation`` inside the original canvas,
which for non-square images fills the corners with black; here the rotation is exact (``expand``)
so a crop never contains fill pixels. ImageNet normalisation is not done here: it lives inside the
detector (``bnn.detector``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch import Tensor

from bnn.data.perturb import RandomBlur, RandomJPEG

# Largest image decoded, in pixels: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (2**30 / 4 / 3,
# about 9459 x 9459; 268 MB as 8-bit RGB). Checked from the header here, so it holds even where
# ``Image.MAX_IMAGE_PIXELS`` was raised or set to ``None``, and images between 1x and 2x this size
# (which Pillow only warns about) are refused too.
MAX_PIXELS = 89_478_485
# Longest side over shortest side. The preprocessing resizes the shorter side to R + R // 8, so a
# 1 x 50,000 strip would become 252 x 12.6 million pixels (9.5 GB); no photograph comes close.
MAX_ASPECT_RATIO = 100

# What decoding a file can raise when the FILE is bad (not the code): the exceptions Pillow's own
# fuzz tests accept from open + load + convert (``Tests/oss-fuzz/test_fuzzers.py``: OSError,
# SyntaxError, MemoryError, ValueError, NotImplementedError, OverflowError, DecompressionBombError,
# DecompressionBombWarning; ``UnidentifiedImageError`` and ``FileNotFoundError`` are OSErrors),
# plus EOFError, which some plugins raise on a file that ends early.
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class UnreadableImage(OSError):
    """An image file that cannot be turned into an RGB image: the one definition every reader and
    ``python -m bnn detect`` use (``load_rgb`` raises it; nothing else decodes images).

    Attributes:
        path: The file, as given.
        reason: What went wrong, one line: the underlying error's type and message, or the limit
            (``MAX_PIXELS``, ``MAX_ASPECT_RATIO``) the image exceeds.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __reduce__(self):  # OSError would rebuild from the message alone (DataLoader workers pickle)
        return type(self), (self.path, self.reason)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decodes an image file fully into an 8-bit RGB PIL image.

    Grey (``1``, ``L``), palette (``P``), CMYK, YCbCr and other 8-bit modes are converted with PIL.
    Alpha (``RGBA``, ``LA``, ``P`` with transparency) is dropped: the stored colour values are kept
    as they are, not composited on a background, so generator pixels reach the detector unchanged.
    16-bit grey (``I;16*``) is scaled by 1/257; 32-bit ``I`` likewise when its values exceed 255;
    float ``F`` is taken as [0, 1] when its maximum is at most 1, else as [0, 255]. The size is
    checked from the header before any pixel is decoded (``MAX_PIXELS``, ``MAX_ASPECT_RATIO``).

    Raises:
        UnreadableImage: (an ``OSError``) The file is missing, not an image, truncated, corrupt,
            too large, too elongated, or in a mode PIL cannot convert; any ``UNREADABLE_ERRORS``
            raised while opening, decoding or converting is wrapped, with the path and reason.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit: refuse those images instead (the size
            # check below refuses them too, whatever the limit). Its UserWarnings (``Corrupt EXIF
            # data``) concern metadata nothing here reads; an unusable file is reported by its
            # error, so they would only be stray lines.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UnreadableImage(
                        path, f"{width}x{height} = {width * height} pixels exceeds the limit of "
                        f"{MAX_PIXELS} (decompression bomb guard)"
                    )
                if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                    raise UnreadableImage(
                        path, f"{width}x{height} pixels: aspect ratio beyond {MAX_ASPECT_RATIO}:1"
                    )
                return _decode_rgb(image)
    except UnreadableImage:
        raise
    except UNREADABLE_ERRORS as error:
        raise UnreadableImage(path, f"{type(error).__name__}: {error}") from error


def _decode_rgb(image: Image.Image) -> Image.Image:
    """The decoding and mode conversion of ``load_rgb`` on an open image."""
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


# The training degradations (CNNDetection's blur and JPEG), off in every preset: each probability
# with the knob of its range. ``bnn.config.FitConfig.content_id`` leaves out a degradation whose
# probability is 0, so configurations written before these knobs existed keep their ids.
DEGRADATIONS: dict[str, str] = {"blur_p": "blur_sigma", "jpeg_p": "jpeg_quality"}
_DEGRADATIONS_OFF: dict[str, Any] = {"blur_p": 0.0, "blur_sigma": (0.0, 3.0), "jpeg_p": 0.0, "jpeg_quality": (30, 100)}

# The knobs of a training augmentation; a preset gives every knob a value (see the module docstring).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hflip_p": 0.5, "vflip_p": 0.5, "rotate90_p": 1.0, "color_jitter": 0.2, "random_crop": True,
              **_DEGRADATIONS_OFF},
    "standard": {"hflip_p": 0.5, "vflip_p": 0.0, "rotate90_p": 0.0, "color_jitter": 0.0, "random_crop": True,
                 **_DEGRADATIONS_OFF},
    "none": {"hflip_p": 0.0, "vflip_p": 0.0, "rotate90_p": 0.0, "color_jitter": 0.0, "random_crop": False,
             **_DEGRADATIONS_OFF},
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
            brightness/contrast/saturation/hue jitter, ``random_crop``, ``blur_p`` and
            ``blur_sigma`` = probability and (low, high) sigma range in pixels of a Gaussian blur,
            ``jpeg_p`` and ``jpeg_quality`` = probability and (low, high) inclusive quality range
            of a JPEG re-encoding); ``None`` is the ``paper`` preset. Ignored when ``train`` is
            false. ``bnn.config.AugmentConfig.resolved()`` gives it.

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
    # Each random step is left out at probability 0, so a preset draws the same random numbers as
    # the pipeline it names (the ``paper`` preset is the authors' pipeline draw for draw).
    steps: list[Callable] = []
    if knobs["blur_p"] > 0:  # degradations first, on the full decoded image (CNNDetection)
        steps.append(RandomBlur(knobs["blur_p"], sigma=tuple(knobs["blur_sigma"])))
    if knobs["jpeg_p"] > 0:
        steps.append(RandomJPEG(knobs["jpeg_p"], quality=tuple(knobs["jpeg_quality"])))
    steps.append(resize)
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
