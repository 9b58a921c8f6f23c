"""Grey levels of RGB images as OpenCV computes them on uint8 data (the input of every channel).

The two conventions (``compat``) and the fixed-point derivation are in the package docstring
(``bnn.features``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnn.features.api import Workspace, check_compat, check_images

# Pixels per chunk when ``extract`` runs on CPU (about 10 images of 224x224).
CPU_CHUNK_PIXELS = 1 << 19

# OpenCV's 8-bit RGB -> grey weights in 15-bit fixed point (sum 32768).
GREY_SHIFT = 15
GREY_WEIGHTS = {
    "exact": (9798.0, 19235.0, 3735.0),  # COLOR_RGB2GRAY on (R, G, B)
    "authors": (3735.0, 19235.0, 9798.0),  # COLOR_BGR2GRAY applied to (R, G, B) data
}
# A 0-dim CPU tensor acts as a scalar on any device (``torch.add(_HALF, x, alpha=w)``).
_HALF = torch.tensor(0.5)


def chunk_size(images: Tensor) -> int:
    """Images per chunk: the whole batch off CPU; on CPU about ``CPU_CHUNK_PIXELS`` pixels.

    On CPU every elementwise pass over a whole batch streams through memory; chunks of a few
    images keep the intermediates in cache (about 1.7x faster for 64 images of 224x224).
    """
    batch, _, height, width = images.shape
    if images.device.type != "cpu":
        return max(batch, 1)
    return max(1, min(batch, CPU_CHUNK_PIXELS // (height * width)))


def grey_into(images: Tensor, compat: str, out: Tensor, workspace: Workspace) -> None:
    """Writes the grey levels (B, H, W) of ``images`` (B, 3, H, W) into float32 ``out``."""
    # Quantise in the input's precision as NumPy would (float64 stays float64), else float32.
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    levels = workspace.empty("levels", tuple(images.shape), dtype)  # (B, 3, H, W)
    torch.mul(images.to(dtype), 255.0, out=levels)
    if compat == "exact":
        levels.round_().clamp_(0.0, 255.0)
    else:
        # Truncation: on [0, 255] trunc equals floor, and clamping to the integers 0 and 255
        # commutes with floor, so clamp-then-floor equals trunc-then-clamp for every input
        # (negative values go to 0 either way). torch's floor is vectorised, trunc is not (CPU).
        levels.clamp_(0.0, 255.0).floor_()
    # OpenCV's fixed point (w . u + 2**14) >> 15, with the weights pre-scaled by 2**-15: every
    # product and partial sum has at most 8 integer and 15 fraction bits, so it is exact in
    # float32 and ">> 15" becomes floor(. + 0.5). The 0.5 comes in with the first product.
    w_r, w_g, w_b = (w * 2.0**-GREY_SHIFT for w in GREY_WEIGHTS[compat])
    torch.add(_HALF, levels[:, 0], alpha=w_r, out=out)  # (B, H, W)
    out.add_(levels[:, 1], alpha=w_g).add_(levels[:, 2], alpha=w_b).floor_()


def grey_levels(images: Tensor, compat: str = "exact") -> Tensor:
    """Quantised grey levels of RGB images, as OpenCV computes them on uint8 data.

    Args:
        images: RGB in [0, 1], shape (B, 3, H, W), any floating dtype and device.
        compat: ``"exact"`` (round, RGB2GRAY) or ``"authors"`` (truncate, BGR2GRAY on RGB data);
            see the module docstring.

    Returns:
        (B, H, W) float32 tensor with integer values in 0..255, on the input's device.
    """
    check_compat(compat)
    check_images(images)
    batch, _, height, width = images.shape
    out = torch.empty((batch, height, width), dtype=torch.float32, device=images.device)
    step, workspace = chunk_size(images), Workspace(images.device)
    with torch.no_grad():
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            grey_into(images[chunk], compat, out[chunk], workspace)
    return out


