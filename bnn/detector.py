"""The deepfake detector of Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using
Binary Neural Networks", CVPRW 2024 (their ``BNext4DFR``), with features computed batched on device.

    RGB in [0, 1] (B, 3, H, W)
      -> concat extra channels (sobel | fft | lbp)          (B, 3 + k, H, W)
      -> adapter Conv2d(3 + k -> 3, 3x3, pad 1)  (k > 0)    (B, 3, H, W)
      -> ImageNet mean/std normalisation
      -> backbone without classifier                        (B, C)
      -> [head "bn_linear": BatchNorm1d(C, no affine)]      (B, C)
      -> fc Linear(C, 1)                                    (B,)  logit, fake = 1

Heads: ``linear`` is the authors' (a default-initialised Linear on the pooled features); ``bn_linear``
normalises the pooled features per channel and starts the Linear at zero, so a fresh detector
outputs logit 0 (loss ln 2) and the first optimiser steps cannot blow the logits up; a trained
``linear`` BNext head from scratch reaches logit std ~30 within 3 steps (``docs/training.md``).
In evaluation mode the normalisation is a fixed affine map, foldable into ``fc``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnn import features as feats
from bnn.backbones import BACKBONES, create_backbone
from bnn.feature_sets import feature_set_label, parse_features
from bnn.pretrained import check_state_dict
from bnn.safe_load import load_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("linear", "bn_linear")


class Detector(nn.Module):
    """Adapter + backbone + one-logit head; see the module docstring for the data flow.

    Args:
        backbone: A backbone with timm's classifier API; its classifier is removed.
        extra_features: Extra channels, canonical order (see ``parse_features``).
        freeze_backbone: Backbone parameters do not train and its BatchNorm statistics stay fixed.
        compat: Grey-level convention of the features ("exact" or "authors").
        backbone_name: Registered name, kept for reports and export.
        head: ``bn_linear`` (default, as ``FitConfig``) or ``linear`` (the authors'; see the module docstring).
    """

    def __init__(
        self,
        backbone: nn.Module,
        extra_features: Sequence[str] = ("fft", "lbp"),
        freeze_backbone: bool = False,
        compat: str = "exact",
        backbone_name: str | None = None,
        head: str = "bn_linear",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head = head
        self.extra_features = tuple(extra_features)
        self.compat = compat
        self.backbone_name = backbone_name
        k = len(self.extra_features)
        self.adapter: nn.Module = nn.Conv2d(3 + k, 3, kernel_size=3, padding=1) if k else nn.Identity()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        backbone.reset_classifier(0)
        self.backbone = backbone
        # timm: pooled features have ``head_hidden_size`` channels (VGG's pre-logits MLP: 4096).
        width = getattr(backbone, "head_hidden_size", backbone.num_features)
        self.head_norm: nn.Module = nn.Identity()
        self.fc = nn.Linear(width, 1)
        if head == "bn_linear":
            self.head_norm = nn.BatchNorm1d(width, affine=False)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @property
    def features_label(self) -> str:
        return feature_set_label(self.extra_features)

    def train(self, mode: bool = True) -> Detector:
        """Sets training mode; a frozen backbone always stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def input_channels(self, images: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> RGB + extra channels (B, 3 + k, H, W), on its device."""
        return feats.input_channels(images, self.extra_features, self.compat)

    def forward_channels(self, x: Tensor) -> Tensor:
        """(B, 3 + k, H, W) input channels -> (B,) logits (used by ``forward`` and the cost counter)."""
        x = self.adapter(x)  # (B, 3, H, W)
        x = (x - self.mean) / self.std
        x = self.head_norm(self.backbone(x))  # (B, C)
        return self.fc(x).squeeze(1)  # (B,)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_channels(self.input_channels(images))

    @torch.no_grad()
    def predict_proba(self, images: Tensor) -> Tensor:
        """Probability of "fake" per image, (B,)."""
        return torch.sigmoid(self.forward(images).float())


def create_detector(
    backbone: str = "bnext_tiny",
    features: Sequence[str] | str = ("rgb", "fft", "lbp"),
    freeze_backbone: bool = False,
    pretrained: str | os.PathLike | bool | None = None,
    compat: str = "exact",
    head: str = "bn_linear",
    **backbone_kwargs,
) -> Detector:
    """Builds a detector.

    Args:
        backbone: Registered backbone name (``bnext_tiny`` ... or a timm baseline).
        features: Feature set including ``rgb``, e.g. ``("rgb", "fft", "lbp")`` or ``"rgb+sobel"``.
        freeze_backbone: Train only adapter and head; backbone BatchNorm statistics stay fixed.
        pretrained: Backbone ImageNet weights: a path, ``True`` for the official file in the
            pretrained folder, or ``None`` for random initialisation.
        compat: "exact" grey levels (OpenCV RGB2GRAY) or "authors" (their BGR/truncation quirk).
        head: ``bn_linear`` (default, as ``FitConfig``: normalised features, zero-initialised Linear)
            or ``linear`` (the authors', needed for their checkpoints and ``recipe: paper``).
        **backbone_kwargs: Passed to the backbone factory.

    Returns:
        A ``Detector`` mapping RGB in [0, 1] (B, 3, H, W) to one logit per image (fake = 1).
    """
    name = BACKBONES.canonical(backbone)
    model = create_backbone(name, pretrained=pretrained, **backbone_kwargs)
    return Detector(model, parse_features(features), freeze_backbone, compat=compat, backbone_name=name, head=head)


# The authors' BNext4DFR names its backbones "BNext-T/S/M/L" and stores the feature flags separately.
_AUTHORS_BACKBONES = {"BNext-T": "bnext_tiny", "BNext-S": "bnext_small", "BNext-M": "bnext_middle", "BNext-L": "bnext_large"}
_AUTHORS_FLAGS = (("add_magnitude_channel", "sobel"), ("add_fft_channel", "fft"), ("add_lbp_channel", "lbp"))


def load_authors_checkpoint(
    path: str | os.PathLike,
    backbone: str | None = None,
    features: Sequence[str] | str | None = None,
    freeze_backbone: bool | None = None,
) -> Detector:
    """Loads a released Lightning checkpoint of the authors' ``BNext4DFR`` into a ``Detector``.

    Their keys ``base_model.*``, ``adapter.*``, ``fc.*`` map to ``backbone.*``, ``adapter.*``,
    ``fc.*``. Their head predicts "real" (their label is ``is_real``), ours predicts "fake", so the
    head's weight and bias are negated: our logit equals minus theirs. The detector uses
    ``compat="authors"`` grey levels, the preprocessing their checkpoints were trained with.

    Args:
        path: The ``.ckpt`` file.
        backbone, features, freeze_backbone: Override or supply what the checkpoint's
            ``hyper_parameters`` say (needed when they are absent).

    Returns:
        The detector in eval mode.
    """
    raw = load_torch_file(path)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"'{path}' is not a Lightning checkpoint (no 'state_dict' entry)")
    hp = raw.get("hyper_parameters", {})
    if backbone is None:
        if hp.get("backbone") not in _AUTHORS_BACKBONES:
            raise ValueError(
                f"'{path}': hyper_parameters.backbone is {hp.get('backbone')!r}; pass backbone= one of "
                f"{sorted(_AUTHORS_BACKBONES.values())}"
            )
        backbone = _AUTHORS_BACKBONES[hp["backbone"]]
    if features is None:
        missing = [flag for flag, _ in _AUTHORS_FLAGS if flag not in hp]
        if missing:
            raise ValueError(f"'{path}': hyper_parameters lack {missing}; pass features=, e.g. 'rgb+fft+lbp'")
        features = ["rgb", *(name for flag, name in _AUTHORS_FLAGS if hp[flag])]
    if freeze_backbone is None:
        freeze_backbone = bool(hp.get("freeze_backbone", False))
    detector = create_detector(backbone, features, freeze_backbone=freeze_backbone, compat="authors", head="linear")

    state = {}
    for key, value in raw["state_dict"].items():
        if key.startswith("base_model."):
            key = "backbone." + key.removeprefix("base_model.")
        state[key] = value
    if "fc.weight" in state and "fc.bias" in state:
        state["fc.weight"], state["fc.bias"] = -state["fc.weight"], -state["fc.bias"]
    check_state_dict(detector, state, str(path))
    detector.load_state_dict(state, strict=True)
    return detector.eval()
