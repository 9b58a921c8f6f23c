"""The fused CPU path of ``extract``: the Numba kernels of ``bnn.features.kernels`` (grey levels,
Sobel, LBP and the FFT's input in one pass per image, then ``torch.fft.rfft2``), with this thread's
reused buffers.
"""

from __future__ import annotations

import sys
import threading
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bnn.features import kernels
from bnn.features.grey import GREY_WEIGHTS
from bnn.features.lbp import LBP_EXACT_ROWS

# The channels the fused kernel computes, and the tallest image it computes each one exactly for
# (LBP's integer comparisons, ``bnn.features.lbp``); other channels, or taller images, take the
# torch ops, channel by channel.
FUSED_MAX_ROWS = {"sobel": sys.maxsize, "fft": sys.maxsize, "lbp": LBP_EXACT_ROWS}


def fusable(name: str, height: int) -> bool:
    """Whether the fused kernel computes channel ``name`` (canonical) for images of ``height`` rows."""
    return height <= FUSED_MAX_ROWS.get(name, -1)
# Pixels per chunk of the kernel path (about 10 images of 224x224): bounds the FFT's float64
# and complex128 intermediates whatever the batch size, and keeps them in cache.
_KERNEL_CHUNK_PIXELS = 1 << 19


def extract_fused(images: Tensor, first: dict[str, int], compat: str, out: Tensor) -> None:
    """Writes each channel ``name`` of ``first`` into ``out[:, first[name]]`` (other channels of
    ``out`` are left as they are).

    Works through the batch in chunks of about ``_KERNEL_CHUNK_PIXELS`` pixels (the FFT's float64
    input and spectrum stay in cache), with this thread's buffers (``_kernel_buffers``).

    Args:
        images: (B, 3, H, W) CPU RGB, any floating dtype (quantised in float64 if float64,
            else float32, as the torch path does).
        first: Canonical channel name -> its channel in ``out``; names ``fusable`` at this height.
        compat: Grey-level convention.
        out: (B, C, H, W) float32, C-contiguous.
    """
    batch, _, height, width = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    rgb, out_np = images.to(dtype).contiguous().numpy(), out.numpy()
    threads = torch.get_num_threads()
    weights = [int(w) for w in GREY_WEIGHTS[compat]]
    step = max(1, min(batch, _KERNEL_CHUNK_PIXELS // (height * width)))
    fft = "fft" in first
    buffers = _kernel_buffers(step, height, width, max(1, min(threads, step)), fft)
    modulated = height % 2 == 0 and width % 2 == 0
    dc = (height // 2, width // 2) if modulated else (0, 0)
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



class _KernelBuffers(NamedTuple):
    """Intermediates of the kernel path for chunks of ``step`` images (see ``_kernel_buffers``)."""

    key: tuple[int, ...]
    scratch: np.ndarray  # (n_workers, n) float32, ``kernels.scratch_for``
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
        kernels.scratch_for(n_workers, height, width),
        np.empty(fft_shape if fft else (0, 0, 0)),
        np.empty(step, dtype=np.int64),
        torch.empty(half if fft else (0, 0, 0), dtype=torch.complex128),
        np.empty(half if fft else (0, 0, 0), dtype=np.float32),
    )
    _KERNEL_BUFFERS.buffers = buffers
    return buffers


