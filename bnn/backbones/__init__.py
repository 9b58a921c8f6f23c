"""Backbones: BNext binary networks and full-precision timm baselines, behind one registry."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from bnn.backbones import bnext, timm_baselines  # noqa: F401  (fills the registry)
from bnn.backbones._registry import BACKBONES, BackboneSpec
from bnn.pretrained import load_pretrained, resolve_weights


def create_backbone(
    name: str,
    pretrained: str | os.PathLike | bool | None = None,
    num_classes: int = 1000,
    **kwargs,
) -> nn.Module:
    """Builds a registered backbone.

    Args:
        name: ``bnext_tiny|small|middle|large`` (``bnext_micro`` for tests) or a baseline
            (``resnet50``, ``resnet18``, ``vit_base_patch32_224``, ``vgg16``, ``densenet121``, ``xception``).
        pretrained: ``None``/``False`` for random init; a path to a local weights file; ``True``
            for the official file in the pretrained folder (see ``bnn.pretrained``).
        num_classes: Classifier size; the weights are loaded into the 1000-class ImageNet head
            first, then the head is replaced when ``num_classes`` differs.
        **kwargs: Passed to the factory.

    Returns:
        A module with timm's classifier API (``num_features``, ``reset_classifier``, ...).
    """
    spec = BACKBONES.get(name)
    if not pretrained:
        return spec.factory(num_classes=num_classes, **kwargs)
    path = weights_path(name, pretrained)
    model = spec.factory(num_classes=1000, **kwargs)
    load_pretrained(model, path)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def weights_path(name: str, pretrained: str | os.PathLike | bool) -> Path:
    """The ImageNet weights file of a registered backbone (see ``bnn.pretrained.resolve_weights``).

    Args:
        name: Registered backbone name or alias.
        pretrained: A path, or ``True`` for the official file in the pretrained folder.

    Raises:
        KeyError: Unknown backbone.
        ValueError, FileNotFoundError: As ``resolve_weights`` (what to download and where).
    """
    return resolve_weights(BACKBONES.canonical(name), BACKBONES.get(name), pretrained)


def list_backbones(binary: bool | None = None) -> list[str]:
    """Registered backbone names, optionally only binary or only full-precision ones."""
    return [n for n in BACKBONES.names() if binary is None or BACKBONES.get(n).binary == binary]


__all__ = ["BACKBONES", "BackboneSpec", "create_backbone", "list_backbones", "weights_path"]
