"""The extra channels' registry and what every implementation shares: ``Feature`` (one channel:
its function, cost formula, paper name), ``FEATURES``, the scratch ``Workspace``, canonical order,
cost (``feature_flops``) and the input checks.

A new channel is one module beside ``sobel.py``, ``fft.py`` and ``lbp.py`` that registers a
``Feature`` (its function on grey levels, its flops formula, its derivation in the docstrings),
imported in ``bnn/features/__init__.py``. Without a fused CPU kernel (``bnn.features.cpu``) it
takes the torch ops on every device while the channels that have one keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bnn.registry import Registry

COMPAT_MODES = ("exact", "authors")


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



def check_compat(compat: str) -> None:
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat {compat!r}; valid values: {', '.join(COMPAT_MODES)}")


def check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point RGB in [0, 1], got {images.dtype}")



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
    """Estimated arithmetic cost per image of each feature (each channel module's ``flops``).

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


