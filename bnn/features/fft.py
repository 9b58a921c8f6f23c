"""The FFT log-magnitude channel (``fft``): ``20 * ln(|fftshift(fft2(Y))| + 1e-9) / 255`` as in
NumPy, from a float64 real-input transform."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from bnn.features.api import FEATURES, Feature, Workspace


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



def _fft_flops(height: int, width: int) -> int:
    # Real-input 2-D FFT ~ 2.5 N log2 N real flops for N = H * W (half of a complex FFT's
    # 5 N log2 N), mean removal 1 flop/pixel, and per half-spectrum bin H * (W // 2 + 1):
    # |z| (2 mul, 1 add, 1 sqrt), + 1e-9, log, * 20/255 = 7 flops (the mirror is a copy).
    n = height * width
    rfft = 2.5 * n * math.log2(n) if n > 1 else 0.0
    return round(rfft) + n + 7 * height * (width // 2 + 1)



FEATURES.add("fft", Feature(_fft, _fft_flops, "FFT"))
