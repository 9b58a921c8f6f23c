"""Feature sets: which extra channels sit beside RGB, their canonical labels and the paper's names.

A feature set is RGB plus any subset of the registered channels (``bnn.features.FEATURES``), written
``rgb+fft+lbp``. Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary
Neural Networks", CVPRW 2024, Table 4, ablates all 8 subsets of {Mag. (Sobel), FFT, LBP}; their
row order is by number of extra channels, then by the order the authors concatenate them
(magnitude, fft, lbp), which is the registry's order. This module is the one home of parsing
(aliases such as ``magnitude`` resolved), the canonical ``+``-joined label, that ordering, the
enumeration of all subsets and the paper's display names (``RGB+Mag.+FFT``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from bnn.features import FEATURES, canonical_order

__all__ = [
    "RGB",
    "all_feature_sets",
    "display_label",
    "feature_set_label",
    "feature_set_sort_key",
    "parse_features",
]

RGB = "rgb"


def parse_features(features: Sequence[str] | str) -> tuple[str, ...]:
    """Validates a feature set and returns its extra channels in canonical order.

    Args:
        features: Names including ``"rgb"`` (e.g. ``("rgb", "fft", "lbp")``) or a ``+``-joined
            string (``"rgb+fft+lbp"``). ``magnitude`` is accepted for ``sobel``.

    Returns:
        The extra channel names without ``rgb``, in registry order (sobel, fft, lbp: the
        authors' concatenation order).

    Raises:
        ValueError: If ``rgb`` is missing or listed twice, or a channel is listed twice.
        KeyError: For an unknown channel (the message lists the registered ones).
    """
    names = features.split("+") if isinstance(features, str) else list(features)
    if RGB not in names:
        raise ValueError(f"feature set {names} must include 'rgb' (the detector's input image)")
    extra = [n for n in names if n != RGB]
    if len(extra) + 1 != len(names):
        raise ValueError(f"feature set {names} lists 'rgb' more than once")
    return canonical_order(extra)


def feature_set_label(extra: Sequence[str]) -> str:
    """``("fft", "lbp") -> "rgb+fft+lbp"``: the label used in params, tables and plots.

    ``extra`` must already be canonical (as ``parse_features`` returns it).
    """
    return "+".join([RGB, *extra])


def all_feature_sets(channels: Sequence[str] | None = None) -> list[str]:
    """Every subset of ``channels`` on top of RGB, as labels, in Table 4's row order.

    Args:
        channels: Channel names or aliases; default every registered channel.

    Returns:
        ``2 ** len(channels)`` labels, e.g. for (sobel, fft, lbp): rgb, rgb+sobel, rgb+fft,
        rgb+lbp, rgb+sobel+fft, rgb+sobel+lbp, rgb+fft+lbp, rgb+sobel+fft+lbp.
    """
    ordered = canonical_order(FEATURES.names() if channels is None else channels)
    return [
        feature_set_label(subset)
        for size in range(len(ordered) + 1)
        for subset in itertools.combinations(ordered, size)
    ]


def feature_set_sort_key(features: str) -> tuple[int, tuple[int, ...]]:
    """Sort key giving Table 4's row order (``all_feature_sets``) for any feature-set label.

    Raises:
        ValueError, KeyError: As ``parse_features``.
    """
    rank = {name: i for i, name in enumerate(FEATURES.names())}
    extra = parse_features(features)
    return len(extra), tuple(rank[name] for name in extra)


def display_label(features: str, added: bool = False) -> str:
    """The paper's name of a feature set: ``"rgb+sobel+fft" -> "RGB+Mag.+FFT"``.

    Args:
        features: A feature-set label (aliases accepted).
        added: Ablation style, naming only what is added to RGB: ``"+Mag.+FFT"``, and
            ``"RGB (baseline)"`` for RGB alone (Table 4's first row).

    Raises:
        ValueError, KeyError: As ``parse_features``.
    """
    names = [FEATURES.get(name).paper_name for name in parse_features(features)]
    if added:
        return "".join(f"+{name}" for name in names) or "RGB (baseline)"
    return "+".join(["RGB", *names])
