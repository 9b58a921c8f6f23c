"""Fused CPU kernels (Numba) for the extra channels: the CPU path of ``bnn.features.extract``.

``bnn.features`` computes each channel with batched torch ops, one pass over memory per op
(about 45 passes per image for grey + Sobel + FFT + LBP); on CPU those passes, not the
arithmetic, are the cost. These kernels do the same exact arithmetic image by image, in cache:
RGB -> grey levels -> Sobel, LBP and the FFT's input in one kernel (``channels``), then
``torch.fft.rfft2`` (MKL), the magnitude (``half_magnitude``), torch's vectorised log and the
mirror to the fftshifted full spectrum (``fftshift_log_magnitude``). The exactness arguments are
those of ``bnn.features`` (``_grey_into``, ``_sobel``, ``_fft``, ``_lbp``):

* grey: ``u = floor(clamp(255 x))`` (``authors``) or ``clamp(rint(255 x))`` (``exact``), in the
  input's precision as NumPy computes it, then OpenCV's fixed point ``Y = (w . u + 2**14) >> 15``
  in int32 (weights: ``bnn.features._GREY_WEIGHTS``).
* The scratch images are float32 holding integers: the grey levels (0..255), the Sobel
  box-binomial ``R = (1 + T_x)^5 (1 + T_y)^5 Y`` (|R| <= 255 * 32 * 32 < 2**24, every partial
  sum too) and its Roberts cross ``P``, ``M``, and the LBP sums ``3923 a + 16077 b`` and
  ``20000 c`` (< 2**23): all exact, and float32 vectorises better than int32 products.
* Sobel: ``sqrt(2 (P^2 + M^2)) / 255``: the two squares, their sum, the square root and the
  division round once each, < 2e-7 relative to OpenCV's float64 value (tests allow 3e-7).
* LBP: the three exact comparisons of ``bnn.features._lbp``: codes identical to scikit-image's,
  code / 255 in float32 as the torch path computes it.
* FFT: the centred (and for even sizes (-1)^(r + c) modulated) image in float64;
  ``re^2 + im^2`` in float64 rounded once to float32 before the square root (2**-25 relative),
  plus 1e-9, the DC bin set to the exact pixel sum; the mirror and the 20 / 255 scale are one
  float32 multiply per output pixel.

Parallelism: each kernel takes ``(worker, n_workers)`` and handles images ``worker``,
``worker + n_workers``, ...; its ``*_parallel`` twin runs the workers with ``prange`` on Numba's
OpenMP layer, which shares torch's libgomp threads (Python threads instead would compete with
torch's spinning OpenMP workers: 2x slower on 2 cores). Every image is computed by one worker
from start to end, so results do not depend on the thread count. GNU OpenMP is not fork-safe and
Numba terminates a forked child that launches a parallel region after its parent did; ``run``
takes the serial kernels there (``parallel_allowed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange

__all__ = [
    "channels",
    "scratch_for",
    "channels_parallel",
    "fftshift_log_magnitude",
    "fftshift_log_magnitude_parallel",
    "half_magnitude",
    "half_magnitude_parallel",
    "parallel_allowed",
    "run",
]

# OpenMP: the libgomp torch uses, so kernels and torch ops share one pool of threads. Numba's
# default would take TBB when some other library (OpenVINO) has loaded libtbb, whose fork
# handler warns on every fork from a non-main thread, and otherwise falls back to "workqueue",
# which aborts the process when two threads launch kernels at once. Without libgomp ``run``
# takes the serial kernels.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "omp"

_CACHE = {"cache": True, "nogil": True, "boundscheck": False}


_PARALLEL_PID: int | None = None  # the process that launched Numba's OpenMP layer, if any
_NO_THREADING_LAYER = False  # set when no thread-safe layer (TBB, OpenMP) could be loaded


def parallel_allowed() -> bool:
    """False in a process forked from one that ran a parallel kernel.

    GNU OpenMP is not fork-safe: Numba terminates a forked child that launches a parallel
    region after its parent did. Such a child runs the serial kernels instead.
    """
    return _PARALLEL_PID in (None, os.getpid())


def run(serial: Callable[..., None], parallel: Callable[..., None], *args: object,
        threads: int, batch: int) -> None:  # fmt: skip
    """Runs a kernel on ``n = min(threads, batch)`` workers: ``parallel(*args, n)``, or
    ``serial(*args, 0, 1)`` for one worker or where ``parallel_allowed()`` is false."""
    global _PARALLEL_PID, _NO_THREADING_LAYER
    n_workers = max(1, min(threads, batch, numba.config.NUMBA_NUM_THREADS))
    if n_workers > 1 and parallel_allowed() and not _NO_THREADING_LAYER:
        _PARALLEL_PID = os.getpid()
        try:
            parallel(*args, n_workers)
            return
        except ValueError as error:  # neither TBB nor OpenMP: serial from now on
            if "threading layer" not in str(error):
                raise
            _NO_THREADING_LAYER = True
    serial(*args, 0, 1)


@njit(**_CACHE)
def _grey(image, authors, w0, w1, w2, padded):  # pragma: no cover - compiled
    """Grey levels of (3, H, W) RGB into ``padded[6:6+H, 3:3+W]`` (float32); returns their sum."""
    _, height, width = image.shape
    top = image.dtype.type(255.0)
    zero = image.dtype.type(0.0)
    w0, w1, w2, half = np.int32(w0), np.int32(w1), np.int32(w2), np.int32(16384)
    total = 0
    for r in range(height):
        red, green, blue, row = image[0, r], image[1, r], image[2, r], padded[r + 6, 3:]
        row_total = np.int32(0)  # at most 255 * W
        if authors:  # truncation; clamping first makes it floor on [0, 255]
            for c in range(width):
                u0 = np.int32(min(max(red[c] * top, zero), top))
                u1 = np.int32(min(max(green[c] * top, zero), top))
                u2 = np.int32(min(max(blue[c] * top, zero), top))
                y = (w0 * u0 + w1 * u1 + w2 * u2 + half) >> np.int32(15)
                row[c] = np.float32(y)
                row_total += y
        else:  # rounding half to even, clamped
            for c in range(width):
                u0 = np.int32(min(max(np.rint(red[c] * top), zero), top))
                u1 = np.int32(min(max(np.rint(green[c] * top), zero), top))
                u2 = np.int32(min(max(np.rint(blue[c] * top), zero), top))
                y = (w0 * u0 + w1 * u1 + w2 * u2 + half) >> np.int32(15)
                row[c] = np.float32(y)
                row_total += y
        total += row_total
    return total


@njit(**_CACHE)
def _sobel(padded, reflected, rows, smoothed, out):  # pragma: no cover - compiled
    """Sobel magnitude (H, W) float32 of the grey levels in ``padded`` (see the module doc)."""
    height, width = out.shape
    five, ten = np.float32(5.0), np.float32(10.0)
    for pr in range(height + 6):  # reflect-101 padding by 3, then the row binomial
        source = pr - 3
        if source < 0:
            source = -source
        elif source >= height:
            source = 2 * height - 2 - source
        grey = padded[source + 6]
        line = reflected[pr]
        for c in range(width):
            line[c + 3] = grey[c + 3]
        for k in range(1, 4):
            line[3 - k] = grey[3 + k]
            line[width + 2 + k] = grey[width + 2 - k]
        target = rows[pr]
        for j in range(width + 1):
            target[j] = (
                (line[j] + line[j + 5])
                + five * (line[j + 1] + line[j + 4])
                + ten * (line[j + 2] + line[j + 3])
            )
    for i in range(height + 1):  # the column binomial: R (H + 1, W + 1)
        for j in range(width + 1):
            smoothed[i, j] = (
                (rows[i, j] + rows[i + 5, j])
                + five * (rows[i + 1, j] + rows[i + 4, j])
                + ten * (rows[i + 2, j] + rows[i + 3, j])
            )
    scale = np.float32(255.0)
    for i in range(height):
        for j in range(width):
            p = smoothed[i + 1, j + 1] - smoothed[i, j]  # exact: |P| < 2**24
            m = smoothed[i, j + 1] - smoothed[i + 1, j]
            out[i, j] = np.sqrt(np.float32(2.0) * (p * p + m * m)) / scale


@njit(**_CACHE)
def _lbp(padded, out):  # pragma: no cover - compiled
    """Uniform LBP (P=3, R=6) codes / 255 (H, W) float32 of the zero-padded grey levels."""
    height, width = out.shape
    scale = np.float32(255.0)
    w_near, w_far, w_centre = np.float32(16077.0), np.float32(3923.0), np.float32(20000.0)
    for r in range(height):
        for c in range(width):
            centre = padded[r + 6, c + 3]
            threshold = w_centre * centre
            code = np.float32(padded[r + 6, c + 9] >= centre)
            code += np.float32(w_far * padded[r, c] + w_near * padded[r + 1, c] >= threshold)
            code += np.float32(w_near * padded[r + 11, c] + w_far * padded[r + 12, c] >= threshold)
            out[r, c] = code / scale


@njit(**_CACHE)
def _fft_input(padded, total, out):  # pragma: no cover - compiled
    """The FFT's float64 input (H, W): grey minus its floored mean, modulated for even sizes."""
    height, width = out.shape
    mean = total // (height * width)
    flip = 1 if height % 2 == 0 and width % 2 == 0 else 0
    for r in range(height):
        for c in range(width):
            sign = np.float64(1 - 2 * ((r + c) & flip))
            out[r, c] = (np.float64(padded[r + 6, c + 3]) - mean) * sign


def _scratch_shapes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """Shapes of one worker's scratch images: zero-padded grey (6 rows above and below, 3
    columns left, 6 right, for LBP), reflect-101 padded grey, row binomial, column binomial."""
    return (height + 12, width + 9), (height + 6, width + 6), (height + 6, width + 1), (
        height + 1, width + 1)  # fmt: skip


def scratch_for(n_workers: int, height: int, width: int) -> np.ndarray:
    """Zero-filled (n_workers, n) float32 scratch for ``channels`` on H x W images."""
    size = sum(rows * cols for rows, cols in _scratch_shapes(height, width))
    return np.zeros((n_workers, size), dtype=np.float32)


@njit(**_CACHE)
def _split_scratch(row, height, width):  # pragma: no cover - compiled
    """One worker's scratch row as its four images (see ``_scratch_shapes``)."""
    shapes = ((height + 12, width + 9), (height + 6, width + 6), (height + 6, width + 1),
              (height + 1, width + 1))  # fmt: skip
    a = shapes[0][0] * shapes[0][1]
    b = a + shapes[1][0] * shapes[1][1]
    c = b + shapes[2][0] * shapes[2][1]
    d = c + shapes[3][0] * shapes[3][1]
    return (row[:a].reshape(shapes[0]), row[a:b].reshape(shapes[1]), row[b:c].reshape(shapes[2]),
            row[c:d].reshape(shapes[3]))  # fmt: skip


@njit(**_CACHE)
def channels(
    images, authors, w0, w1, w2, out, sobel_index, lbp_index, fft_input, totals, scratch,
    worker, n_workers,
):  # pragma: no cover - compiled  # fmt: skip
    """Grey levels, Sobel and LBP channels and the FFT's input of images ``worker::n_workers``.

    Args:
        images: (B, 3, H, W) float32 or float64 RGB in [0, 1], C-contiguous.
        authors: Truncating (``True``) or rounding (``False``) quantisation.
        w0, w1, w2: OpenCV's 15-bit grey weights of the R, G and B planes.
        out: (B, K, H, W) float32: Sobel goes to channel ``sobel_index`` and LBP to
            ``lbp_index`` (-1: not wanted).
        fft_input: (B, H, W) float64 for the FFT's input, or (0, 0, 0) when not wanted.
        totals: (B,) int64, receives each image's pixel sum (the exact DC term).
        scratch: (n_workers, SCRATCH_ROWS(H, W)) float32 from ``scratch_for``, zero-filled when
            made (each worker's row; the grey image's zero border is never written).
        worker, n_workers: This call's share of the batch (see ``run``).
    """
    batch, _, height, width = images.shape
    # Integer-valued float32 scratch (every value and partial sum below 2**24 is exact, see the
    # module docstring), which vectorises better than int32 products.
    padded, reflected, rows, smoothed = _split_scratch(scratch[worker], height, width)
    for i in range(worker, batch, n_workers):
        total = _grey(images[i], authors, w0, w1, w2, padded)
        totals[i] = total
        if sobel_index >= 0:
            _sobel(padded, reflected, rows, smoothed, out[i, sobel_index])
        if lbp_index >= 0:
            _lbp(padded, out[i, lbp_index])
        if fft_input.shape[0] > 0:
            _fft_input(padded, total, fft_input[i])


@njit(**_CACHE)
def half_magnitude(spectrum, totals, dc_row, dc_col, out, worker, n_workers):  # pragma: no cover
    """``|z| + 1e-9`` (B, H, W // 2 + 1) float32 of the rfft2 half spectrum, DC = ``totals``."""
    batch, height, half = spectrum.shape
    for i in range(worker, batch, n_workers):
        for r in range(height):
            for j in range(half):
                z = spectrum[i, r, j]
                power = np.float32(z.real * z.real + z.imag * z.imag)
                out[i, r, j] = np.sqrt(power) + np.float32(1e-9)
        out[i, dc_row, dc_col] = np.float32(totals[i]) + np.float32(1e-9)


@njit(**_CACHE)
def fftshift_log_magnitude(
    log_half, scale, modulated, out, index, worker, n_workers
):  # pragma: no cover - compiled
    """Writes ``scale`` times the fftshifted full spectrum into ``out[:, index]`` (B, H, W).

    ``log_half`` (B, H, W // 2 + 1) holds the half spectrum's bins; the other half follows from
    the real input's Hermitian symmetry, |F[k1, k2]| = |F[-k1, W - k2]|. ``modulated``: the
    input was multiplied by (-1)^(r + c), so the half spectrum is already shifted.
    """
    batch, height, _ = log_half.shape
    width = out.shape[3]
    shift = 0 if modulated else width // 2
    for i in range(worker, batch, n_workers):
        source, target = log_half[i], out[i, index]
        for r in range(height):
            row = r if modulated else (r - height // 2) % height  # k1 of output row r
            mirror_row = (height - row) % height  # -k1
            for j in range(width):
                k2 = j - shift  # (j - shift) mod W
                if k2 < 0:
                    k2 += width
                if k2 <= width // 2:
                    target[r, j] = source[row, k2] * scale
                else:
                    target[r, j] = source[mirror_row, width - k2] * scale


@njit(parallel=True, **_CACHE)
def channels_parallel(
    images, authors, w0, w1, w2, out, sobel_index, lbp_index, fft_input, totals, scratch,
    n_workers,
):  # pragma: no cover - compiled  # fmt: skip
    """``channels`` on ``n_workers`` threads (Numba's OpenMP layer)."""
    for worker in prange(n_workers):
        channels(images, authors, w0, w1, w2, out, sobel_index, lbp_index, fft_input, totals,
                 scratch, worker, n_workers)  # fmt: skip


@njit(parallel=True, **_CACHE)
def half_magnitude_parallel(spectrum, totals, dc_row, dc_col, out, n_workers):  # pragma: no cover
    """``half_magnitude`` on ``n_workers`` threads."""
    for worker in prange(n_workers):
        half_magnitude(spectrum, totals, dc_row, dc_col, out, worker, n_workers)


@njit(parallel=True, **_CACHE)
def fftshift_log_magnitude_parallel(
    log_half, scale, modulated, out, index, n_workers
):  # pragma: no cover - compiled
    """``fftshift_log_magnitude`` on ``n_workers`` threads."""
    for worker in prange(n_workers):
        fftshift_log_magnitude(log_half, scale, modulated, out, index, worker, n_workers)
