"""Hand-crafted input channels (Sobel magnitude, FFT log-magnitude, LBP) as batched torch ops.

Reproduces the extra input channels of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024, which the authors compute per image with
OpenCV, NumPy and scikit-image and concatenate to the RGB input in the order magnitude, fft, lbp.
Here every feature is a batched torch function that runs on the input's device (CPU or CUDA) with
no per-image Python loop and no NumPy round trip, and reproduces the reference libraries:

* ``sobel`` (alias ``magnitude``): ``sqrt(Gx^2 + Gy^2) / 255`` with ``Gx``, ``Gy`` the 7x7 Sobel
  derivatives of ``cv2.Sobel(Y, cv2.CV_64F, 1, 0, ksize=7)`` / ``(0, 1)``, border reflect-101.
  ``Y`` is integer-valued, so ``Gx + Gy`` and ``Gx - Gy`` (a Roberts cross on the binomially
  smoothed image, at most 2 * 255 * 32 * 32 in magnitude, every partial sum < 2**24) are
  computed exactly in float32; only the tail (squares, sum, square root, scale) rounds
  (relative error < 3e-7, see ``_sobel``).
* ``fft``: ``20 * ln(|fftshift(fft2(Y))| + 1e-9) / 255`` as in NumPy. The spectrum is computed in
  float64 with a real-input ``rfft2`` (the other half is rebuilt by Hermitian symmetry), on the
  image minus its mean (an integer), modulated by (-1)^(i + j) for even sizes so that it comes
  out already fftshifted, with the DC term set to the exact pixel sum; float32 FFTs are too
  imprecise for the small coefficients. Everything after the transform (magnitude, log) is
  float32, within ~2e-8 absolute of the float64 values (see ``_fft``).
* ``lbp``: ``skimage.feature.local_binary_pattern(Y, P=3, R=6, method="uniform") / 255`` with
  identical codes (see ``_lbp`` for the derivation).

Grey levels (``grey_levels``), selected by ``compat``:

* ``"exact"``: ``u = round(255 x)`` per channel (half to even, clamped to [0, 255]) and ``Y`` equal
  to ``cv2.cvtColor(u, cv2.COLOR_RGB2GRAY)``. OpenCV does *not* compute
  ``round(0.299 R + 0.587 G + 0.114 B)`` (22906 of the 256**3 colours differ) nor the 14-bit
  ``(4899 R + 9617 G + 1868 B + 8192) >> 14`` (43864 differ): its 8-bit path (4.x and 5.x) uses
  15-bit fixed point, ``Y = (9798 R + 19235 G + 3735 B + 16384) >> 15``, which matches
  ``cv2.cvtColor`` on all 256**3 colours (checked against the installed OpenCV, and in the tests).
  With the weights pre-scaled by 2**-15 every partial sum fits float32's 24-bit mantissa, so it is
  evaluated exactly in float32 as ``floor(w . u + 0.5)`` on any device.
* ``"authors"``: the authors' released pipeline, ``(x * 255).astype(np.uint8)`` (truncation, not
  rounding) followed by ``cv2.cvtColor(u, cv2.COLOR_BGR2GRAY)`` applied to RGB data, so the
  0.114 weight lands on red and 0.299 on blue: ``Y = (3735 R + 19235 G + 9798 B + 16384) >> 15``.
  Use it to evaluate their checkpoints with the preprocessing they were trained with. Values
  outside [0, 1] are clamped (the authors' uint8 cast would wrap around).

All features are non-differentiable (grey levels are quantised): ``extract`` runs under
``torch.no_grad()`` and with autocast disabled, and computes internally in float32/float64
whatever the input dtype. Two implementations, chosen by ``extract``'s ``backend``:

* On CPU (``"auto"``, or ``"kernels"``): the fused Numba kernels of ``bnn.feature_kernels``, one
  pass per image from RGB to the Sobel and LBP channels and the FFT's input, the FFT itself
  with ``torch.fft.rfft2``. About 2x faster than the torch ops on 2 cores (see
  ``benchmarks/features.py``); LBP codes identical, Sobel and FFT within float32 rounding.
* Everywhere else (``"auto"`` off CPU, or ``"torch"``): the batched torch ops below, on the
  input's device with no host round trip (the CUDA path). On CPU they work through the batch in
  chunks of a few 224x224 images (cache locality), take their intermediates from a reused
  ``Workspace`` and write each feature straight into its output channel.

This file is longer than 400 lines on purpose: it is one concern (the extra channels), and
most of its length is the exactness derivation of each channel next to the code it justifies.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bnn import feature_kernels
from bnn.registry import Registry

__all__ = [
    "BACKENDS",
    "COMPAT_MODES",
    "FEATURES",
    "Feature",
    "canonical_order",
    "extract",
    "feature_flops",
    "feature_flops_by_name",
    "grey_levels",
    "input_channels",
    "Workspace",
]

COMPAT_MODES = ("exact", "authors")

# Pixels per chunk when ``extract`` runs on CPU (about 10 images of 224x224).
_CPU_CHUNK_PIXELS = 1 << 19

# OpenCV's 8-bit RGB -> grey weights in 15-bit fixed point (sum 32768).
_GREY_SHIFT = 15
_GREY_WEIGHTS = {
    "exact": (9798.0, 19235.0, 3735.0),  # COLOR_RGB2GRAY on (R, G, B)
    "authors": (3735.0, 19235.0, 9798.0),  # COLOR_BGR2GRAY applied to (R, G, B) data
}
# A 0-dim CPU tensor acts as a scalar on any device (``torch.add(_HALF, x, alpha=w)``).
_HALF = torch.tensor(0.5)
_ZERO = torch.tensor(0.0)


class Workspace:
    """Scratch buffers that ``extract`` reuses from chunk to chunk.

    A fresh large tensor per intermediate costs more than the arithmetic on CPU: every one is a
    new allocation whose pages the kernel maps and zeroes again (about a fifth of the features'
    time for 224x224 chunks). Each buffer is allocated once per call for the largest chunk and
    sliced to the current chunk's batch size; ``zeros`` buffers are zero-filled once, so their
    borders (never written) stay zero.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[tuple[str, torch.dtype], Tensor] = {}

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, zero: bool) -> Tensor:
        batch, rest = shape[0], tuple(shape[1:])
        buffer = self._buffers.get((key, dtype))
        if buffer is None or buffer.shape[0] < batch or tuple(buffer.shape[1:]) != rest:
            make = torch.zeros if zero else torch.empty
            buffer = make((batch, *rest), dtype=dtype, device=self.device)
            self._buffers[(key, dtype)] = buffer
        return buffer[:batch]

    def empty(self, key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """An uninitialised (B, ...) buffer named ``key``, reused across calls of the same shape."""
        return self._buffer(key, shape, dtype, zero=False)

    def zeros(self, key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A (B, ...) buffer zero-filled when first allocated (callers keep its borders zero)."""
        return self._buffer(key, shape, dtype, zero=True)


@dataclass(frozen=True)
class Feature:
    """One registered input channel.

    Attributes:
        fn: ``fn(grey, out, workspace)`` writes the feature of grey levels (B, H, W) float32
            with integer values 0..255 into ``out`` ((B, H, W) float32, possibly a strided
            view), taking its intermediates from ``workspace`` (a ``Workspace``).
        flops: ``flops(height, width)``: arithmetic cost per image (see ``feature_flops``).
        paper_name: The paper's name of the channel in its tables (e.g. ``Mag.`` for Sobel).
        min_size: Smallest height and width the feature supports.
    """

    fn: Callable[[Tensor, Tensor, Workspace], None]
    flops: Callable[[int, int], int]
    paper_name: str
    min_size: int = 1

    def __call__(
        self, grey: Tensor, out: Tensor | None = None, workspace: Workspace | None = None
    ) -> Tensor:
        """Returns the feature (B, H, W) float32 of grey levels (B, H, W), written to ``out``.

        ``workspace`` lends the intermediates (a new one when omitted); pass the same one to
        repeated calls on same-sized batches to allocate them once.
        """
        if out is None:
            out = torch.empty(grey.shape, dtype=torch.float32, device=grey.device)
        with torch.no_grad():
            self.fn(grey.float(), out, workspace or Workspace(grey.device))
        return out


FEATURES: Registry[Feature] = Registry("feature")


# --------------------------------------------------------------------------------------------
# Grey levels
# --------------------------------------------------------------------------------------------


def _check_compat(compat: str) -> None:
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat {compat!r}; valid values: {', '.join(COMPAT_MODES)}")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point RGB in [0, 1], got {images.dtype}")


def _chunk_size(images: Tensor) -> int:
    """Images per chunk: the whole batch off CPU; on CPU about ``_CPU_CHUNK_PIXELS`` pixels.

    On CPU every elementwise pass over a whole batch streams through memory; chunks of a few
    images keep the intermediates in cache (about 1.7x faster for 64 images of 224x224).
    """
    batch, _, height, width = images.shape
    if images.device.type != "cpu":
        return max(batch, 1)
    return max(1, min(batch, _CPU_CHUNK_PIXELS // (height * width)))


def _grey_into(images: Tensor, compat: str, out: Tensor, workspace: Workspace) -> None:
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
    w_r, w_g, w_b = (w * 2.0**-_GREY_SHIFT for w in _GREY_WEIGHTS[compat])
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
    _check_compat(compat)
    _check_images(images)
    batch, _, height, width = images.shape
    out = torch.empty((batch, height, width), dtype=torch.float32, device=images.device)
    step, workspace = _chunk_size(images), Workspace(images.device)
    with torch.no_grad():
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            _grey_into(images[chunk], compat, out[chunk], workspace)
    return out


# --------------------------------------------------------------------------------------------
# Sobel magnitude
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# FFT log-magnitude
# --------------------------------------------------------------------------------------------


def _fftshift_from_half(half: Tensor, scale: float, out: Tensor) -> None:
    """Writes ``scale`` times the fftshifted full spectrum (B, H, W) of a real image into ``out``.

    ``half`` (B, H, W // 2 + 1) holds the rfft2 bins k2 <= W // 2. Output pixel (i, j) shows
    frequency (k1, k2) = ((i - H // 2) mod H, (j - W // 2) mod W); bins with k2 > W // 2 follow
    from the real input's Hermitian symmetry, |F[k1, k2]| = |F[-k1, W - k2]|. Built from slice
    copies (no gather), which also apply ``scale``.
    """
    _, height, width = out.shape
    hs, ws = height // 2, width // 2

    def put_rolled(columns: slice, src: Tensor, shift: int) -> None:
        # out[:, i, columns] = scale * src[:, (i - shift) mod H]
        shift %= height
        torch.mul(src[:, : height - shift], scale, out=out[:, shift:, columns])
        torch.mul(src[:, height - shift :], scale, out=out[:, :shift, columns])

    # Columns j >= W // 2: k2 = j - W // 2, stored directly.
    put_rolled(slice(ws, width), half[:, :, : width - ws], hs)
    # Columns j < W // 2: k2 = W - W // 2 + j, stored only for j == 0 with W even (k2 = W // 2).
    first = 1 if width % 2 == 0 else 0
    if first:
        put_rolled(slice(0, 1), half[:, :, ws : ws + 1], hs)
    if ws > first:
        # Mirrored: out[:, i, j] = half[:, (H // 2 - i) mod H, W // 2 - j] for first <= j < W // 2;
        # with rows and columns flipped that is a roll of the rows by H // 2 + 1.
        mirrored = half[:, :, 1 : ws - first + 1].flip((1, 2))
        put_rolled(slice(first, ws), mirrored, hs + 1)


def _shifted_from_half(half: Tensor, scale: float, out: Tensor) -> None:
    """Writes ``scale`` times the full spectrum (B, H, W) into ``out`` from its rfft2 half.

    For even H and W with the input modulated by (-1)^(n1 + n2) (see ``_fft``): ``half``
    (B, H, W // 2 + 1) then already holds the fftshifted columns j <= W // 2, and the rest
    follows from Hermitian symmetry, out[i, j] = half[(H - i) mod H, W - j] for j > W // 2:
    one flip of half[:, :, 1 : W // 2] in both axes, rows rolled by one.
    """
    _, height, width = out.shape
    ws = width // 2
    torch.mul(half, scale, out=out[:, :, : ws + 1])
    if ws > 1:
        # Flip the whole (contiguous) half: a flip of the column slice is several times slower.
        mirrored = half.flip((1, 2))[:, :, 1:ws]  # [r, t] = half[H - 1 - r, W // 2 - 1 - t]
        torch.mul(mirrored[:, : height - 1], scale, out=out[:, 1:, ws + 1 :])
        torch.mul(mirrored[:, height - 1 :], scale, out=out[:, :1, ws + 1 :])


@functools.lru_cache(maxsize=8)
def _checkerboard(height: int, width: int, device: torch.device) -> Tensor:
    """(H, W) float32 (-1)^(i + j)."""
    rows = 1 - 2 * (torch.arange(height, device=device) % 2)
    cols = 1 - 2 * (torch.arange(width, device=device) % 2)
    return (rows[:, None] * cols[None, :]).float()


def _fft(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """``20 * ln(|fftshift(fft2(Y))| + 1e-9) / 255`` (NumPy's definition), float32 output.

    The spectrum is computed in float64 (float32 FFTs have an absolute error ~1e-7 of the largest
    coefficients, too much for the small ones) on the image minus its (floored) mean: the input
    stays exact, round-off shrinks, and a flat image gets exactly zero AC terms; the DC term is
    the exact pixel sum. For even H and W the input is also multiplied by (-1)^(n1 + n2), which
    shifts the spectrum by (H / 2, W / 2), i.e. the transform comes out already fftshifted (the
    half-spectrum bins land on output columns 0..W/2 without a roll). Centring and modulation
    are exact in float32 (integers of magnitude <= 255); the cast to float64 is exact.

    After the transform only float32 is needed: the spectrum is rounded to complex64 and
    ``|z| = sqrt(re^2 + im^2)`` and ``ln(|z| + 1e-9)`` are evaluated in float32. Each of these
    steps rounds by at most 2**-24 relative (|z|^2 <= (255 H W)^2 is far from float32's
    overflow), so ``|z| + 1e-9`` is within ~2e-7 relative of its float64 value, i.e. the log
    within ~2e-7 absolute and the output within ~2e-8 absolute (times 20 / 255), plus the
    float32 rounding of the log and the scale (~1e-7 relative to the output itself). That is far
    inside the 1e-4 relative tolerance, also near the zero crossing |z| = 1 (where the tests
    allow 1e-6 absolute); exact zeros (flat images) stay exact.
    """
    batch, height, width = grey.shape
    # Exact pixel sums (B,): float32 is exact while every partial sum (an integer) stays below
    # 2**24, i.e. 255 H W < 2**24 (224x224 and smaller); otherwise rows first, then float64.
    if 255 * height * width < 2**24:
        total = grey.sum(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    else:
        rows = grey.sum(dim=2) if 255 * width < 2**24 else grey.double().sum(dim=2)
        total = rows.double().sum(dim=1)[:, None, None]
    mean = torch.div(total, height * width, rounding_mode="floor").float()  # (B, 1, 1)
    centred = workspace.empty("fft_centred", (batch, height, width))
    torch.sub(grey, mean, out=centred)  # integers in [-255, 255]
    exact = workspace.empty("fft_in", (batch, height, width), torch.float64)
    modulated = height % 2 == 0 and width % 2 == 0
    if modulated:
        torch.mul(centred, _checkerboard(height, width, grey.device), out=exact)
    else:
        exact.copy_(centred)
    _log_spectrum(exact, total.reshape(batch), out, workspace)


def _log_spectrum(exact: Tensor, total: Tensor, out: Tensor, workspace: Workspace) -> None:
    """The FFT channel (B, H, W) from the centred, modulated float64 image (see ``_fft``).

    Args:
        exact: (B, H, W) float64: the grey levels minus their floored mean, times (-1)^(r + c)
            when H and W are even.
        total: (B,) the exact pixel sums (the DC term), any real dtype.
        out: (B, H, W) float32 target (possibly a strided view).
        workspace: Scratch buffers.
    """
    batch, height, width = exact.shape
    modulated = height % 2 == 0 and width % 2 == 0
    half = (batch, height, width // 2 + 1)
    spectrum = torch.fft.rfft2(exact)  # (B, H, W // 2 + 1) complex128 (out= is slower)
    parts = torch.view_as_real(workspace.empty("fft_spectrum32", half, torch.complex64))
    parts.copy_(torch.view_as_real(spectrum)).square_()  # (B, H, W // 2 + 1, 2) float32
    magnitude = workspace.empty("fft_magnitude", half)
    torch.add(parts[..., 0], parts[..., 1], out=magnitude).sqrt_()  # (B, H, W // 2 + 1)
    dc = (height // 2, width // 2) if modulated else (0, 0)
    magnitude[:, dc[0], dc[1]] = total.to(magnitude.dtype)
    log_mag = magnitude.add_(1e-9).log_()  # (B, H, W // 2 + 1)
    if modulated:
        _shifted_from_half(log_mag, 20.0 / 255.0, out)  # (B, H, W)
    else:
        _fftshift_from_half(log_mag, 20.0 / 255.0, out)  # (B, H, W)


# --------------------------------------------------------------------------------------------
# Local binary patterns
# --------------------------------------------------------------------------------------------

# skimage's sample offsets for P = 3, R = 6: (dr, dc)_p = (-R sin(2 pi p / P), R cos(2 pi p / P))
# rounded to 5 decimals with np.round, i.e. (0, 6), (-5.19615, -3), (5.19615, -3). Samples are
# bilinear with constant 0 outside the image ('C' mode, cval 0) and bit_p = sample_p >= centre.
_LBP_POINTS = 3
_LBP_RADIUS = 6
_LBP_OFFSETS = ((-0.0, 6.0), (-5.19615, -3.0), (5.19615, -3.0))
# The integer fast path (see _lbp) is exact on rows below this bound (checked exhaustively).
_LBP_EXACT_ROWS = 1 << 20


def _lbp(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """Uniform LBP codes (P=3, R=6) identical to scikit-image's, divided by 255.

    scikit-image counts 0/1 transitions along the P - 1 consecutive pairs only (not cyclically),
    so with P = 3 every pattern counts as uniform and the code is the number of set bits (0..3;
    the "non-uniform" code P + 1 = 4 never occurs).

    Bits, for a centre pixel c at (r, col) (neighbours outside the image read 0):
    * p0 = Y[r, col + 6] (integer offset, no interpolation);
    * p1 = 0.19615 Y[r - 6, col - 3] + 0.80385 Y[r - 5, col - 3] (column offset exact);
    * p2 = 0.80385 Y[r + 5, col - 3] + 0.19615 Y[r + 6, col - 3].
    For integer a, b, c with a != b, ``0.19615 a + 0.80385 b - c`` is a nonzero multiple of 5e-5
    (16077 and 20000 are coprime), far above the float64 round-off of skimage's evaluation, so
    ``p1 >= c`` iff ``3923 a + 16077 b >= 20000 c`` (exact in float32: < 2**24). When a == b == c,
    skimage's float64 ``(1 - d) a + d a`` is never below a for any row below ``_LBP_EXACT_ROWS``
    (checked for all 256 levels), so the same integer test applies; taller images fall back to a
    float64 replica of skimage's interpolation.
    """
    if grey.shape[-2] > _LBP_EXACT_ROWS:
        out.copy_(_lbp_codes_float64(grey))
    else:
        _lbp_codes_integer(grey, out, workspace)
    out.div_(255.0)


def _lbp_codes_integer(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """Writes the LBP codes (B, H, W) into ``out`` via exact integer comparisons (see ``_lbp``).

    Every comparison is ``d >= 0`` for an integer-valued d, evaluated as ``clamp(d, -1, 0) + 1``
    (cheaper than boolean tensors on CPU). The two interpolated bits share their weights (3923
    on the rows r -/+ 6, 16077 on the rows r -/+ 5, both at column c - 3), so they are computed
    together on (B, 2, H, W) strided views of the padded image.
    """
    batch, height, width = grey.shape
    # Zeros outside like skimage's cval: 6 rows above and below, 3 columns left, 6 right.
    padded = workspace.zeros("lbp_padded", (batch, height + 12, width + 9))  # borders stay 0
    padded[:, 6 : 6 + height, 3 : 3 + width].copy_(grey)  # padded[:, 6 + r, 3 + c] = Y[r, c]
    row = padded.stride(1)

    def rows_at_column_minus_3(first: int, step: int) -> Tensor:
        # (B, 2, H, W): [:, k, r, c] = padded[:, first + k * step + r, c] = Y[., c - 3]
        return padded.as_strided(
            (batch, 2, height, width),
            (padded.stride(0), step * row, row, 1),
            padded.storage_offset() + first * row,
        )

    # p0 = Y[r, c + 6]
    torch.sub(padded[:, 6 : 6 + height, 9 : 9 + width], grey, out=out).clamp_(-1.0, 0.0)
    # p1, p2: 3923 Y[r -/+ 6, c - 3] + 16077 Y[r -/+ 5, c - 3] - 20000 c
    centre = torch.mul(grey, -20000.0, out=workspace.empty("lbp_centre", (batch, height, width)))
    d = workspace.empty("lbp_bits", (batch, 2, height, width))
    torch.add(centre.unsqueeze(1), rows_at_column_minus_3(0, 12), alpha=3923.0, out=d)
    d.add_(rows_at_column_minus_3(1, 10), alpha=16077.0).clamp_(-1.0, 0.0)  # (B, 2, H, W)
    out.add_(d[:, 0]).add_(d[:, 1]).add_(float(_LBP_POINTS))  # number of set bits


def _lbp_codes_float64(grey: Tensor) -> Tensor:
    """LBP codes (B, H, W) float32 replicating skimage's float64 bilinear interpolation."""
    _, height, width = grey.shape
    y = grey.double()
    pad = _LBP_RADIUS + 1
    padded = F.pad(y, (pad, pad, pad, pad))  # (B, H + 2 pad, W + 2 pad)
    rows = torch.arange(height, device=grey.device, dtype=torch.float64)
    cols = torch.arange(width, device=grey.device, dtype=torch.float64)
    codes = torch.zeros_like(grey, dtype=torch.float32)
    for dr, dc in _LBP_OFFSETS:
        # The same float64 operations as skimage's bilinear_interpolation.
        r_pos, c_pos = rows + dr, cols + dc
        r_lo, c_lo = torch.floor(r_pos), torch.floor(c_pos)
        r_w, c_w = (r_pos - r_lo)[:, None], (c_pos - c_lo)[None, :]  # (H, 1), (1, W)
        r_0 = (r_lo.long() + pad)[:, None]
        c_0 = (c_lo.long() + pad)[None, :]
        r_1 = (torch.ceil(r_pos).long() + pad)[:, None]
        c_1 = (torch.ceil(c_pos).long() + pad)[None, :]
        top = (1 - c_w) * padded[:, r_0, c_0] + c_w * padded[:, r_0, c_1]  # (B, H, W)
        bottom = (1 - c_w) * padded[:, r_1, c_0] + c_w * padded[:, r_1, c_1]
        sample = (1 - r_w) * top + r_w * bottom
        codes += sample - y >= 0
    return codes


# --------------------------------------------------------------------------------------------
# Registry (canonical order = the authors' concatenation order: magnitude, fft, lbp)
# --------------------------------------------------------------------------------------------


def _sobel_flops(height: int, width: int) -> int:
    # Four separable 7-tap passes (x and y for Gx and Gy), 7 mul + 6 add each = 52 flops/pixel,
    # plus Gx^2 + Gy^2, sqrt and the 1/255 scale = 5 flops/pixel.
    return (4 * 13 + 5) * height * width


def _fft_flops(height: int, width: int) -> int:
    # Real-input 2-D FFT ~ 2.5 N log2 N real flops for N = H * W (half of a complex FFT's
    # 5 N log2 N), mean removal 1 flop/pixel, and per half-spectrum bin H * (W // 2 + 1):
    # |z| (2 mul, 1 add, 1 sqrt), + 1e-9, log, * 20/255 = 7 flops (the mirror is a copy).
    n = height * width
    rfft = 2.5 * n * math.log2(n) if n > 1 else 0.0
    return round(rfft) + n + 7 * height * (width // 2 + 1)


def _lbp_flops(height: int, width: int) -> int:
    # P = 3 bilinear samples per pixel (4 taps: 4 mul + 3 add), a comparison each, P - 1
    # transition checks, P - 1 adds for the code and the 1/255 scale: 8 P + 2 (P - 1) + 1.
    p = _LBP_POINTS
    return (8 * p + 2 * (p - 1) + 1) * height * width


FEATURES.add("sobel", Feature(_sobel, _sobel_flops, "Mag.", min_size=4), aliases=("magnitude",))
FEATURES.add("fft", Feature(_fft, _fft_flops, "FFT"))
FEATURES.add("lbp", Feature(_lbp, _lbp_flops, "LBP"))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def canonical_order(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical feature names (aliases resolved) in registry order (sobel, fft, lbp).

    Args:
        names: Feature names or aliases; ``"rgb"`` is not a feature (callers strip it).

    Returns:
        The canonical names sorted into registry order.

    Raises:
        KeyError: For an unknown name (the message lists the registered ones).
        ValueError: If a feature is named twice (directly or through an alias).
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of feature names, not a single string")
    canonical = [FEATURES.canonical(name) for name in names]
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"duplicate features in {list(names)} (canonical: {canonical})")
    order = {name: i for i, name in enumerate(FEATURES.names())}
    return tuple(sorted(canonical, key=order.__getitem__))


def feature_flops_by_name(names: Sequence[str], height: int, width: int) -> dict[str, int]:
    """Estimated arithmetic cost per image of each feature (formulas in the ``_*_flops``).

    The shared grey conversion (about a dozen flops per pixel) is not included.

    Args:
        names: Feature names or aliases (no duplicates).
        height: Image height.
        width: Image width.

    Returns:
        Canonical name -> flops per image, in registry order.
    """
    return {name: FEATURES.get(name).flops(height, width) for name in canonical_order(names)}


def feature_flops(names: Sequence[str], height: int, width: int) -> int:
    """Sum of ``feature_flops_by_name`` over ``names``: flops per image for these channels."""
    return sum(feature_flops_by_name(names, height, width).values())


BACKENDS = ("auto", "torch", "kernels")
_KERNEL_FEATURES = frozenset({"sobel", "fft", "lbp"})
# Pixels per chunk of the kernel path (about 10 images of 224x224): bounds the FFT's float64
# and complex128 intermediates whatever the batch size, and keeps them in cache.
_KERNEL_CHUNK_PIXELS = 1 << 19


def _use_kernels(images: Tensor, canonical: Sequence[str], backend: str) -> bool:
    """Whether ``extract`` takes the fused CPU kernels (``bnn.feature_kernels``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid values: {', '.join(BACKENDS)}")
    supported = (
        images.device.type == "cpu"
        and set(canonical) <= _KERNEL_FEATURES
        and images.shape[-2] <= _LBP_EXACT_ROWS
    )
    if backend == "kernels" and not supported:
        raise ValueError(
            "backend 'kernels' needs CPU images, features among "
            f"{', '.join(sorted(_KERNEL_FEATURES))} and at most {_LBP_EXACT_ROWS} rows"
        )
    return supported and backend != "torch"


def _extract_kernels(images: Tensor, canonical: Sequence[str], compat: str, out: Tensor) -> None:
    """The fused CPU path of ``extract``: writes each feature into its first channel of ``out``.

    Works through the batch in chunks of about ``_KERNEL_CHUNK_PIXELS`` pixels (the FFT's float64
    input and spectrum stay in cache), with this thread's buffers (``_kernel_buffers``).

    Args:
        images: (B, 3, H, W) CPU RGB, any floating dtype (quantised in float64 if float64,
            else float32, as the torch path does).
        canonical: Canonical feature names, all in ``_KERNEL_FEATURES``.
        compat: Grey-level convention.
        out: (B, len(canonical), H, W) float32, C-contiguous.
    """
    batch, _, height, width = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    rgb, out_np = images.to(dtype).contiguous().numpy(), out.numpy()
    threads = torch.get_num_threads()
    first = {name: canonical.index(name) for name in canonical}
    weights = [int(w) for w in _GREY_WEIGHTS[compat]]
    step = max(1, min(batch, _KERNEL_CHUNK_PIXELS // (height * width)))
    fft = "fft" in first
    buffers = _kernel_buffers(step, height, width, max(1, min(threads, step)), fft)
    modulated = height % 2 == 0 and width % 2 == 0
    dc = (height // 2, width // 2) if modulated else (0, 0)
    kernels = feature_kernels
    for start in range(0, batch, step):
        stop = min(batch, start + step)
        size = stop - start
        fft_input, totals = buffers.fft_input[:size], buffers.totals[:size]
        kernels.run(
            kernels.channels, kernels.channels_parallel, rgb[start:stop], compat == "authors",
            *weights, out_np[start:stop], first.get("sobel", -1), first.get("lbp", -1),
            fft_input, totals, buffers.scratch, threads=threads, batch=size,
        )  # fmt: skip
        if not fft:
            continue
        spectrum = buffers.spectrum[:size]  # (b, H, W // 2 + 1) complex128
        torch.fft.rfft2(torch.from_numpy(fft_input), out=spectrum)
        half = buffers.magnitude[:size]  # (b, H, W // 2 + 1) float32
        kernels.run(
            kernels.half_magnitude, kernels.half_magnitude_parallel, spectrum.numpy(), totals,
            *dc, half, threads=threads, batch=size,
        )  # fmt: skip
        torch.from_numpy(half).log_()  # torch's vectorised log
        kernels.run(
            kernels.fftshift_log_magnitude, kernels.fftshift_log_magnitude_parallel, half,
            np.float32(20.0 / 255.0), modulated, out_np[start:stop], first["fft"],
            threads=threads, batch=size,
        )  # fmt: skip


def _recycled_output(shape: tuple[int, int, int, int]) -> Tensor:
    """A float32 CPU tensor of ``shape`` whose memory this thread returned before and nobody uses.

    A fresh output of a few tens of MB is mapped by the kernel page by page on first write (about
    0.3 ms per 224x224 image of three channels here: a third of the whole kernel path), and
    glibc gives blocks above 32 MB back to the kernel on free. So the kernel path returns tensors
    on NumPy arrays that this thread keeps: ``torch.from_numpy`` holds a reference to its array
    for as long as any tensor (or view) on it lives, so an array whose only reference is the
    cache's own is free to hand out again. At most two arrays are kept per thread.
    """
    pool: list[np.ndarray] = getattr(_KERNEL_BUFFERS, "outputs", [])
    _KERNEL_BUFFERS.outputs = pool
    for array in pool:
        # References: the list's and getrefcount's argument; any other is a live tensor or view.
        if array.shape == shape and sys.getrefcount(array) == 2:
            return torch.from_numpy(array)
    array = np.empty(shape, dtype=np.float32)
    pool.insert(0, array)
    del pool[2:]
    return torch.from_numpy(array)


class _KernelBuffers(NamedTuple):
    """Intermediates of the kernel path for chunks of ``step`` images (see ``_kernel_buffers``)."""

    key: tuple[int, ...]
    scratch: np.ndarray  # (n_workers, n) float32, ``feature_kernels.scratch_for``
    fft_input: np.ndarray  # (step, H, W) float64, or (0, 0, 0)
    totals: np.ndarray  # (step,) int64
    spectrum: Tensor  # (step, H, W // 2 + 1) complex128
    magnitude: np.ndarray  # (step, H, W // 2 + 1) float32


_KERNEL_BUFFERS = threading.local()


def _kernel_buffers(step: int, height: int, width: int, n_workers: int, fft: bool) -> _KernelBuffers:
    """This thread's intermediates for the kernel path, kept from the last call of that shape.

    Fresh pages cost more than the kernels' arithmetic (the kernel zeroes each 4 KiB page on
    first touch: about 0.1 ms per 224x224 image here), so a thread keeps its latest buffers
    (about 11 MB for chunks of ten 224x224 images) instead of allocating them per call.
    """
    key = (step, height, width, n_workers, int(fft))
    cached = getattr(_KERNEL_BUFFERS, "buffers", None)
    if cached is not None and cached.key == key:
        return cached
    half, fft_shape = (step, height, width // 2 + 1), (step, height, width)
    buffers = _KernelBuffers(
        key,
        feature_kernels.scratch_for(n_workers, height, width),
        np.empty(fft_shape if fft else (0, 0, 0)),
        np.empty(step, dtype=np.int64),
        torch.empty(half if fft else (0, 0, 0), dtype=torch.complex128),
        np.empty(half if fft else (0, 0, 0), dtype=np.float32),
    )
    _KERNEL_BUFFERS.buffers = buffers
    return buffers


def extract(
    images: Tensor, names: Sequence[str], compat: str = "exact", backend: str = "auto"
) -> Tensor:
    """Computes the named feature channels for a batch of RGB images.

    The grey levels are computed once and shared by all features. The result is not
    differentiable (computed under ``torch.no_grad()``, features are integer-quantised).

    Args:
        images: RGB in [0, 1], shape (B, 3, H, W), floating point, on any device.
        names: Feature names or aliases, e.g. ``["sobel", "fft", "lbp"]``; channels come out in
            this order. Empty gives (B, 0, H, W).
        compat: Grey-level convention, ``"exact"`` or ``"authors"`` (see the module docstring).
        backend: ``"auto"`` (the fused CPU kernels of ``bnn.feature_kernels`` for CPU images,
            batched torch ops on other devices), ``"torch"`` (batched torch ops on any device)
            or ``"kernels"`` (CPU only). Both give the same LBP codes and agree with the
            reference libraries to the same tolerance.

    Returns:
        (B, len(names), H, W) tensor with the input's dtype and device.

    Raises:
        KeyError: For an unknown feature name.
        TypeError: For a non-floating-point input or a single string as ``names``.
        ValueError: For a bad ``compat`` or ``backend``, a wrongly shaped input or an image too
            small.
    """
    _check_compat(compat)
    _check_images(images)
    if isinstance(names, str):
        raise TypeError("names must be a sequence of feature names, not a single string")
    canonical = [FEATURES.canonical(name) for name in names]
    batch, _, height, width = images.shape
    for name in dict.fromkeys(canonical):
        min_size = FEATURES.get(name).min_size
        if min(height, width) < min_size:
            raise ValueError(
                f"feature {name!r} needs images of at least {min_size}x{min_size} pixels, "
                f"got {height}x{width}"
            )
    use_kernels = _use_kernels(images, canonical, backend)
    shape = (batch, len(canonical), height, width)
    if not canonical or batch == 0:
        return torch.zeros(shape, dtype=images.dtype, device=images.device)
    first = {name: canonical.index(name) for name in canonical}  # each name's first channel
    if use_kernels and images.dtype == torch.float32:
        out = _recycled_output(shape)
    else:
        out = torch.empty(shape, dtype=images.dtype, device=images.device)
    if use_kernels:
        target = out if out.dtype == torch.float32 else torch.empty(out.shape)
        with torch.no_grad():
            _extract_kernels(images.detach(), canonical, compat, target)
        if target is not out:
            out.copy_(target)
    else:
        _extract_torch(images, first, compat, out)
    for index, name in enumerate(canonical):  # a repeated name: copy its first channel
        if first[name] != index:
            out[:, index] = out[:, first[name]]
    return out


def _extract_torch(images: Tensor, first: dict[str, int], compat: str, out: Tensor) -> None:
    """The batched torch path of ``extract`` (any device): feature ``name`` into
    ``out[:, first[name]]``, chunk by chunk on CPU (see ``_chunk_size``)."""
    batch, _, height, width = images.shape
    device_type = images.device.type
    if torch.amp.is_autocast_available(device_type):
        autocast_off = torch.autocast(device_type, enabled=False)
    else:
        autocast_off = contextlib.nullcontext()
    step, workspace = _chunk_size(images), Workspace(images.device)
    with torch.no_grad(), autocast_off:
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            grey = workspace.empty("grey", (min(step, batch - start), height, width))
            _grey_into(images[chunk], compat, grey, workspace)
            for name, index in first.items():
                feature = FEATURES.get(name)
                if out.dtype == torch.float32:  # write straight into the output
                    feature(grey, out[chunk, index], workspace)  # (b, H, W)
                else:
                    out[chunk, index] = feature(grey, workspace=workspace)


def input_channels(images: Tensor, names: Sequence[str], compat: str = "exact") -> Tensor:
    """A detector's input: RGB followed by the named extra channels.

    The one place both detectors (``bnn.detector.Detector`` in PyTorch and
    ``bnn.export.OpenVINODetector``) build their network input from RGB images.

    Args:
        images: RGB in [0, 1], shape (B, 3, H, W), floating point, on any device.
        names: Extra channels in canonical order (``bnn.feature_sets.parse_features``); empty for
            RGB alone.
        compat: Grey-level convention (see the module docstring).

    Returns:
        (B, 3 + len(names), H, W) with the input's dtype and device (``images`` itself when
        ``names`` is empty).

    Raises:
        As ``extract``.
    """
    if not names:
        return images
    extra = extract(images, names, compat=compat)  # (B, k, H, W)
    return torch.cat([images, extra.to(images.dtype)], dim=1)
