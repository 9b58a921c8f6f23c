"""The Sobel-magnitude channel (``sobel``, alias ``magnitude``; the paper's "Mag."):
``sqrt(Gx^2 + Gy^2) / 255`` with OpenCV's 7x7 Sobel derivatives, border reflect-101."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bnn.features.api import FEATURES, Feature, Workspace

_ZERO = torch.tensor(0.0)  # a 0-dim CPU tensor acts as a scalar on any device


def _binomial5(x: Tensor, dim: int, buffers: tuple[Tensor, Tensor]) -> Tensor:
    """Convolution (valid part) with (1 + T)^5 = [1, 5, 10, 10, 5, 1] along ``dim``.

    Five pair sums x[i] + x[i + 1], each written into the flat ``buffers`` in turn (the length
    shrinks by one per sum); returns a view of the buffer holding the last one.
    """
    for k in range(5):
        n = x.shape[dim] - 1
        shape = list(x.shape)
        shape[dim] = n
        target = buffers[k % 2][: math.prod(shape)].view(shape)
        torch.add(x.narrow(dim, 0, n), x.narrow(dim, 1, n), out=target)
        x = target
    return x


def _sobel(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """``sqrt(Gx^2 + Gy^2) / 255`` with OpenCV's ksize=7 Sobel and reflect-101 border.

    OpenCV's 7-tap kernels factor through the binomial: smoothing [1, 6, 15, 20, 15, 6, 1] =
    (1 + T)^6 and derivative [-1, -4, -5, 0, 5, 4, 1] = (1 + T)^4 (T^2 - 1) = (1 + T)^5 (T - 1),
    with T the shift by one pixel (correlation, as OpenCV applies it). With R the 6x6 box-binomial
    smoothing (1 + T_x)^5 (1 + T_y)^5 Y,

        Gx = (T_x - 1)(1 + T_y) R,    Gy = (T_y - 1)(1 + T_x) R,

    so Gx + Gy = 2 (T_x T_y - 1) R = 2 P and Gx - Gy = 2 (T_x - T_y) R = 2 M: a Roberts cross
    on R, P[i, j] = R[i + 1, j + 1] - R[i, j], M[i, j] = R[i, j + 1] - R[i + 1, j], and
    Gx^2 + Gy^2 = 2 (P^2 + M^2). That is 10 pair sums and 2 differences (no separate Gx, Gy).

    Exactness: R, P and M are integers with |.| <= 255 * 32 * 32 = 261120 < 2**24 (every
    partial sum too), hence exact in float32. Only the tail rounds: P^2, M^2, their sum, the
    square root and the product with float32(sqrt(2) / 255), at most 2**-24 relative each,
    so the result is within ~3e-7 relative of OpenCV's float64 value (1e-4 is required).
    """
    height, width = grey.shape[-2:]
    if min(height, width) < 4:
        raise ValueError(f"sobel needs images of at least 4x4 pixels, got {height}x{width}")
    batch = grey.shape[0]
    # torch 'reflect' padding == OpenCV BORDER_REFLECT_101 (edge pixel not repeated).
    padded = F.pad(grey.unsqueeze(1), (3, 3, 3, 3), mode="reflect").squeeze(1)
    # padded: (B, H + 6, W + 6); the pair sums alternate between two flat buffers.
    size = batch * (height + 6) * (width + 6)
    buffers = (workspace.empty("sobel_a", (size,)), workspace.empty("sobel_b", (size,)))
    rows = _binomial5(padded, 2, buffers)  # (B, H + 6, W + 1), in buffers[0]
    r = _binomial5(rows, 1, buffers[::-1])  # R: (B, H + 1, W + 1), in buffers[1]
    m = buffers[0][: batch * height * width].view(batch, height, width)
    torch.sub(r[:, 1:, 1:], r[:, :-1, :-1], out=out)  # P (B, H, W)
    torch.sub(r[:, :-1, 1:], r[:, 1:, :-1], out=m)  # M (B, H, W)
    # c^2 (M^2 + P^2) with c = sqrt(2) / 255, then the square root.
    torch.addcmul(_ZERO, m, m, value=_TWO_OVER_255_SQUARED, out=m)
    torch.addcmul(m, out, out, value=_TWO_OVER_255_SQUARED, out=out).sqrt_()


# sqrt(Gx^2 + Gy^2) / 255 = sqrt(2 (P^2 + M^2) / 255^2).
_TWO_OVER_255_SQUARED = 2.0 / 255.0**2



def _sobel_flops(height: int, width: int) -> int:
    # Four separable 7-tap passes (x and y for Gx and Gy), 7 mul + 6 add each = 52 flops/pixel,
    # plus Gx^2 + Gy^2, sqrt and the 1/255 scale = 5 flops/pixel.
    return (4 * 13 + 5) * height * width



FEATURES.add("sobel", Feature(_sobel, _sobel_flops, "Mag.", min_size=4), aliases=("magnitude",))
