"""``extract`` and ``input_channels``: the named channels of a batch, on the input's device, each
channel by the fused CPU kernel where it has one (``bnn.features.cpu``) and the batched torch ops
otherwise."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from bnn.features.api import FEATURES, Workspace, check_compat, check_images
from bnn.features.cpu import FUSED_MAX_ROWS, extract_fused, fusable
from bnn.features.grey import chunk_size, grey_into

BACKENDS = ("auto", "torch", "kernels")


def _fused_channels(images: Tensor, first: dict[str, int], backend: str) -> dict[str, int]:
    """The channels of ``first`` (name -> channel) that ``extract`` computes with the fused kernel."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid values: {', '.join(BACKENDS)}")
    height = images.shape[-2]
    on_cpu = images.device.type == "cpu"
    fused = {name: index for name, index in first.items() if on_cpu and fusable(name, height)}
    if backend == "kernels" and (not on_cpu or len(fused) != len(first)):
        raise ValueError(
            "backend 'kernels' needs CPU images, features among "
            f"{', '.join(sorted(FUSED_MAX_ROWS))} and at most {min(FUSED_MAX_ROWS.values())} rows"
        )
    return {} if backend == "torch" else fused


def extract(
    images: Tensor, names: Sequence[str], compat: str = "exact", backend: str = "auto", *,
    out: Tensor | None = None,
) -> Tensor:
    """Computes the named feature channels for a batch of RGB images.

    The grey levels are computed once and shared by all features. The result is not
    differentiable (computed under ``torch.no_grad()``, features are integer-quantised).

    Args:
        images: RGB in [0, 1], shape (B, 3, H, W), floating point, on any device.
        names: Feature names or aliases, e.g. ``["sobel", "fft", "lbp"]``; channels come out in
            this order. Empty gives (B, 0, H, W).
        compat: Grey-level convention, ``"exact"`` or ``"authors"`` (see the module docstring).
        backend: ``"auto"`` (on CPU the fused kernels of ``bnn.features.cpu`` for the channels
            they compute and batched torch ops for any other, channel by channel; torch ops on
            other devices), ``"torch"`` (batched torch ops on any device) or ``"kernels"`` (CPU,
            every channel fused). Both give the same LBP codes and agree with the reference
            libraries to the same tolerance.
        out: Where to write the result, as ``torch``'s ``out=``: a C-contiguous
            (B, len(names), H, W) tensor with the input's dtype and device, which a caller that
            extracts batch after batch reuses (a fresh output of a few tens of MB costs about
            0.3 ms per 224x224 image in page faults on CPU). None: a new tensor.

    Returns:
        (B, len(names), H, W) tensor with the input's dtype and device (``out`` when given).

    Raises:
        KeyError: For an unknown feature name.
        TypeError: For a non-floating-point input or a single string as ``names``.
        ValueError: For a bad ``compat`` or ``backend``, a wrongly shaped input, an image too
            small, or an ``out`` of another shape, dtype or device, or not contiguous.
    """
    check_compat(compat)
    check_images(images)
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
    first = {name: canonical.index(name) for name in canonical}  # each name's first channel
    fused = _fused_channels(images, first, backend)
    shape = (batch, len(canonical), height, width)
    if out is None:
        out = torch.empty(shape, dtype=images.dtype, device=images.device)
    else:
        _check_out(out, shape, images)
    if not canonical or batch == 0:
        return out.zero_()
    if fused:
        target = out if out.dtype == torch.float32 else torch.empty(out.shape)
        with torch.no_grad():
            extract_fused(images.detach(), fused, compat, target)
        if target is not out:
            out.copy_(target)  # the other channels are written below
    rest = {name: index for name, index in first.items() if name not in fused}
    if rest:
        _extract_torch(images, rest, compat, out)
    for index, name in enumerate(canonical):  # a repeated name: copy its first channel
        if first[name] != index:
            out[:, index] = out[:, first[name]]
    return out


def _check_out(out: Tensor, shape: tuple[int, ...], images: Tensor) -> None:
    wanted = (tuple(out.shape), out.dtype, out.device, out.is_contiguous())
    if wanted != (shape, images.dtype, images.device, True):
        raise ValueError(f"out must be a contiguous {images.dtype} tensor of shape {shape} on {images.device}, got "
                         f"{'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} {tuple(out.shape)} "
                         f"on {out.device}")


def _extract_torch(images: Tensor, first: dict[str, int], compat: str, out: Tensor) -> None:
    """The batched torch path of ``extract`` (any device): feature ``name`` into
    ``out[:, first[name]]``, chunk by chunk on CPU (see ``chunk_size``)."""
    batch, _, height, width = images.shape
    device_type = images.device.type
    if torch.amp.is_autocast_available(device_type):
        autocast_off = torch.autocast(device_type, enabled=False)
    else:
        autocast_off = contextlib.nullcontext()
    step, workspace = chunk_size(images), Workspace(images.device)
    with torch.no_grad(), autocast_off:
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            grey = workspace.empty("grey", (min(step, batch - start), height, width))
            grey_into(images[chunk], compat, grey, workspace)
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
    shape = (images.shape[0], len(names), *images.shape[2:])
    extra = extract(images, names, compat=compat, out=_scratch(shape, images))  # (B, k, H, W)
    return torch.cat([images, extra], dim=1)


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], images: Tensor) -> Tensor | None:
    """This thread's output for ``extract`` in ``input_channels`` on CPU (kept while batches keep
    their shape): ``torch.cat`` copies it into the result, so it never leaves ``input_channels``
    and the next call may overwrite it. Elsewhere None (a new tensor)."""
    if images.device.type != "cpu":
        return None
    kept = getattr(_SCRATCH, "out", None)
    if kept is None or tuple(kept.shape) != shape or kept.dtype != images.dtype:
        kept = _SCRATCH.out = torch.empty(shape, dtype=images.dtype)
    return kept
