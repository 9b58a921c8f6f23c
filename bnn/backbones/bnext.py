"""BNext binary backbones (Guo et al., arXiv 2211.12933; official code hpi-xnor/BNext), the
backbone of Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural
Networks", CVPRW 2024.

The module tree reproduces the official ImageNet checkpoints key for key (see
``tests/data/bnext_official_state_dict_keys.json``, checked by ``tests/test_backbones.py``), so they
load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnn.backbones._registry import BACKBONES, BackboneSpec
from bnn.backbones.binary import BinaryActivation, BinaryConv2d
from bnn.backbones.quantizers import DEFAULT_QUANTIZER

BNEXT_SOURCE = "https://github.com/hpi-xnor/BNext (README, ImageNet checkpoints)"

# Output channels of feature[0], feature[1], ... per size (BNext paper, Table 1 / official code).
CHANNELS: dict[str, list[int]] = {
    "tiny": [32, 64] + [128] * 2 + [256] * 2 + [512] * 6 + [1024] * 2,
    "small": [48, 96] + [192] * 2 + [384] * 2 + [768] * 6 + [1536] * 2,
    "middle": [48, 96] + [192] * 4 + [384] * 4 + [768] * 8 + [1536] * 4,
    "large": [64, 128] + [256] * 4 + [512] * 4 + [1024] * 16 + [2048] * 4,
    # Not a published size: every structural case (both unit modes, stride 2, FFN_1/FFN_2 split)
    # at a few thousand parameters, for fast tests.
    "micro": [8, 16] + [32] * 2 + [64] * 2,
}


class LearnableBias(nn.Module):
    """Per-channel learnable shift, stored as ``bias`` of shape (1, C, 1, 1) (official key)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class SqueezeExcite(nn.Module):
    """avgpool -> 1x1 conv (C -> C//8) -> ReLU -> 1x1 conv (C//8 -> C) -> sigmoid, keys ``se.1/3``."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = channels // reduction
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.se(x))  # (B, C, 1, 1)


class BinaryUnit(nn.Module):
    """One BNext unit: binary conv with information recoupling, as ELM attention or feed-forward.

    Feed-forward ("bias" mode and 1x1 units):
        r = pool(x); y = act2(norm1(bconv(sign(x + move))));
        m = scale * pool(x) + (1 - scale) * y; out = norm2(se(m) * y) + r
    ELM attention ("scale" mode):
        r = pool(act1(x)); y as above; out = norm2(se(m) * y * r) + r
    ``pool`` is AvgPool2d(2, 2) when stride is 2, identity otherwise. ``activation1`` exists in the
    feed-forward unit too (official checkpoints carry it) but is not applied there.

    ``scale`` is clamped in place to [0, 1] in training mode. The 1x1 units use it clamped to [0, 1]
    in every forward, eval included, as the official ``FFN_1x1`` does (it clamps ``scale.data`` in
    each call); the 3x3 units use the stored value in eval, as the official ``Attention`` and
    ``FFN_3x3`` do. Here the eval clamp is functional: the parameter itself is left unchanged.

    Args:
        channels: Input = output channels C.
        kernel_size: 3 or 1.
        stride: 1 or 2.
        elm_attention: Use the ELM attention form.
        input_quantizer: The binary activation's quantiser (``bnn.backbones.quantizers``).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, elm_attention: bool = False,
                 input_quantizer: str = DEFAULT_QUANTIZER) -> None:
        super().__init__()
        self.elm_attention = elm_attention
        self.stride = stride
        self.kernel_size = kernel_size
        # The official 1x1 unit (FFN_1x1) clamps scale in eval too; the 3x3 units only in training.
        self.clamp_scale_in_eval = kernel_size == 1
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.move = LearnableBias(channels)
        self.binary_activation = BinaryActivation(input_quantizer)
        self.binary_conv = BinaryConv2d(channels, channels, kernel_size, stride)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.activation1 = nn.PReLU(channels)
        self.activation2 = nn.PReLU(channels)
        self.se = SqueezeExcite(channels)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale
        if self.training:
            with torch.no_grad():
                self.scale.clamp_(0.0, 1.0)
        elif self.clamp_scale_in_eval:
            scale = scale.clamp(0.0, 1.0)
        residual = self.pool(self.activation1(x) if self.elm_attention else x)
        # (B, C, H, W) -> (B, C, H/stride, W/stride)
        y = self.activation2(self.norm1(self.binary_conv(self.binary_activation(self.move(x)))))
        mix = scale * self.pool(x) + (1.0 - scale) * y
        y = self.se(mix) * y
        if self.elm_attention:
            y = y * residual
        return self.norm2(y) + residual


class Stem(nn.Module):
    """feature[0]: 3x3 conv stride 2 + BatchNorm. ``prelu`` is in the checkpoints but not applied."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv1(x))  # (B, 3, H, W) -> (B, C0, H/2, W/2)


class Block(nn.Module):
    """feature[i], i >= 1: a 3x3 unit (``Attention``) then 1x1 unit(s) ``FFN`` or ``FFN_1|FFN_2``.

    When the width doubles, two 1x1 units run on the same input and are concatenated.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, elm_attention: bool,
                 input_quantizer: str = DEFAULT_QUANTIZER) -> None:
        super().__init__()
        q = input_quantizer
        self.Attention = BinaryUnit(in_channels, 3, stride, elm_attention=elm_attention, input_quantizer=q)
        self.widens = in_channels != out_channels
        if self.widens:
            if out_channels != 2 * in_channels:
                raise ValueError(f"a BNext block widens by 2x only, got {in_channels} -> {out_channels}")
            self.FFN_1 = BinaryUnit(in_channels, 1, input_quantizer=q)
            self.FFN_2 = BinaryUnit(in_channels, 1, input_quantizer=q)
        else:
            self.FFN = BinaryUnit(in_channels, 1, input_quantizer=q)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Attention(x)
        if self.widens:
            return torch.cat([self.FFN_1(x), self.FFN_2(x)], dim=1)  # (B, 2C, H, W)
        return self.FFN(x)


class BNext(nn.Module):
    """BNext backbone with timm's classifier API.

    Args:
        channels: Output channels of ``feature[0..n]`` (see ``CHANNELS``).
        num_classes: Classes of the ``fc`` head; 0 replaces it by identity (pooled features out).
        input_quantizer: Quantiser of every binary activation (``bnn.backbones.quantizers``).
    """

    def __init__(self, channels: Sequence[int], num_classes: int = 1000, input_quantizer: str = DEFAULT_QUANTIZER) -> None:
        super().__init__()
        channels = list(channels)
        self.channels = channels
        self.feature = nn.ModuleList([Stem(channels[0])])
        for i in range(1, len(channels)):
            c_in, c_out = channels[i - 1], channels[i]
            stride = 2 if (c_in != c_out and c_out != channels[1]) else 1
            elm_attention = i > 1 and i % 2 == 0  # block 1 and odd blocks: "bias"; even: "scale"
            self.feature.append(Block(c_in, c_out, stride, elm_attention, input_quantizer))
        self.num_features = self.head_hidden_size = channels[-1]
        self.prelu = nn.PReLU(self.num_features)
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the head: a new Linear for ``num_classes`` > 0, identity for 0."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        for block in self.feature:
            x = block(x)
        return x  # (B, C_last, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool1(self.prelu(x)).flatten(1)  # (B, C_last)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _bnext_factory(size: str):
    def factory(num_classes: int = 1000, input_quantizer: str = DEFAULT_QUANTIZER) -> BNext:
        return BNext(CHANNELS[size], num_classes=num_classes, input_quantizer=input_quantizer)

    factory.__name__ = f"bnext_{size}"
    factory.__doc__ = f"BNext-{size} ({CHANNELS[size][-1]} output features)."
    return factory


for _size, _display in [("tiny", "BNext-T"), ("small", "BNext-S"), ("middle", "BNext-M"), ("large", "BNext-L")]:
    BACKBONES.add(
        f"bnext_{_size}",
        BackboneSpec(
            factory=_bnext_factory(_size),
            family="BNext",
            display_name=_display,
            binary=True,
            weights_file=f"{_size}_checkpoint.pth.tar",
            weights_source=BNEXT_SOURCE,
        ),
    )

BACKBONES.add(
    "bnext_micro",
    BackboneSpec(
        factory=_bnext_factory("micro"),
        family="BNext",
        display_name="BNext-micro",
        binary=True,
        weights_file=None,
        weights_source="none: a test-only variant without published weights",
    ),
)
