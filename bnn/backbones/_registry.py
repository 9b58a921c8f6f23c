"""The backbone registry: name -> BackboneSpec (factory plus metadata used by tables and cost)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bnn.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone and what to call it.

    Attributes:
        factory: ``factory(num_classes=1000, **kw) -> nn.Module`` with timm's classifier API
            (``num_features``, ``reset_classifier``, ``forward_features``, ``forward_head``).
        family: Architecture family for plots ("BNext", "ResNet", ...).
        display_name: Name in the paper's tables ("BNext-T", "ResNet-50", ...).
        binary: Whether the backbone has binary convolutions.
        weights_file: File name of the official ImageNet weights users bring (looked up in the
            pretrained folder); ``None`` for test-only variants.
        weights_source: Where users download ``weights_file`` from.
    """

    factory: Callable[..., nn.Module]
    family: str
    display_name: str
    binary: bool
    weights_file: str | None
    weights_source: str


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
