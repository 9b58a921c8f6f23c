"""Binarisation primitives of BNext (Guo et al., "Join the High Accuracy Club on ImageNet with a
Binary Neural Network Ticket", arXiv 2211.12933), as used by Lanzino et al., CVPRW 2024.

Forward values are exactly -1 or +1 with sign(0) = +1 (equation 2 of the deepfake paper). Gradients
are straight-through: activations pass the gradient of clamp(x, -1.5, 1.5) by default (or another
registered quantiser's surrogate, ``bnn.backbones.quantizers``); latent weights pass it unchanged.
Every binary layer implements ``BinaryLayer``, the interface the rest of the package asks. The ``temperature`` buffers of the official code are kept so official checkpoints load;
the released checkpoints end with temperature ~ 0, i.e. pure sign, which is what inference always
computes. Training may binarise weights softly first, as BNext's training code does
(``set_weight_temperature``): forward ``clamp(w / T, -1, 1)`` in training mode while T >= 1e-7,
with T annealed towards 0 by the trainer; evaluation mode always uses the exact sign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn.backbones.quantizers import DEFAULT_QUANTIZER, QUANTIZERS, STE_SIGN, SteSign

ACTIVATION_CLIP = STE_SIGN.clip  # BNext's activation clip
WEIGHT_CLIP = 1.5
HARD_TEMPERATURE = 1e-7  # BNext's threshold: below it the weights are binarised with sign


_IDENTITY_STE = SteSign("identity_ste", float("inf"), "BNext: latent weights pass the gradient unchanged")


def binary_sign(x: Tensor, clip: float = ACTIVATION_CLIP) -> Tensor:
    """Exact +-1 sign of ``x`` with a straight-through gradient clipped to [-clip, clip]."""
    if clip == float("inf"):
        return _IDENTITY_STE(x)
    return (STE_SIGN if clip == STE_SIGN.clip else SteSign(f"ste_sign_{clip}", clip, ""))(x)


class BinaryLayer:
    """What the cost count, the inference form, the optimiser groups and the export ask of a binary
    layer (``bnn.cost``, ``bnn.inference``, ``bnn.optim``, ``bnn.export``), so a new binary layer
    is one class that implements it.

    Attributes:
        precision: Bits of the binarised operand (1).
    """

    precision: int = 1

    def latent_weight(self) -> nn.Parameter | None:
        """The real-valued weight training updates and that is binarised (``None``: no weight)."""
        return None

    def binarized_weight(self) -> Tensor | None:
        """The +-1 weight the forward pass uses (``None``: no weight)."""
        return None

    def binary_macs(self, output: Tensor) -> int:
        """Binary multiply-accumulates (BOPs) for one image producing ``output`` (B, ...)."""
        return 0

    def frozen(self) -> nn.Module:
        """The inference form: same outputs in eval mode, no autograd function, no latent weight."""
        raise NotImplementedError


class InferenceSign(nn.Module, BinaryLayer):
    """sign with sign(0) = +1 as ``where(x >= 0, 1, -1)`` (no autograd function)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    def frozen(self) -> nn.Module:
        return self


class BinaryActivation(nn.Module, BinaryLayer):
    """Binarises activations: forward sign(x) in {-1, +1}; backward the ``quantizer``'s surrogate
    (``bnn.backbones.quantizers``; default ``ste_sign``: grad of clamp(x, -1.5, 1.5), BNext's).

    Args:
        quantizer: A name in ``QUANTIZERS``.
    """

    def __init__(self, quantizer: str = DEFAULT_QUANTIZER) -> None:
        super().__init__()
        self.quantizer = QUANTIZERS.get(quantizer)
        self.register_buffer("temperature", torch.ones(1))  # kept for checkpoint compatibility

    def forward(self, x: Tensor) -> Tensor:
        return self.quantizer(x)

    def frozen(self) -> nn.Module:
        return InferenceSign()

    def extra_repr(self) -> str:
        return f"quantizer={self.quantizer.name}"


def _binary_conv_macs(layer: BinaryConv2d | FrozenBinaryConv2d, output: Tensor) -> int:
    """C_out * H_out * W_out outputs of one image, each C_in * k * k binary MACs."""
    return output[0].numel() * layer.in_channels * layer.kernel_size * layer.kernel_size


class BinaryConv2d(nn.Module, BinaryLayer):
    """Convolution with binarised weights sign(w) in {-1, +1} on (binary) inputs, zero padding k//2.

    The latent real weight is initialised N(0, 1) * 1e-3 and clamped in place to [-1.5, 1.5] in
    training mode; its gradient is straight-through (identity).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape) * 1e-3)
        self.register_buffer("temperature", torch.ones(1))  # official key; see set_weight_temperature
        self.soft = False  # set by set_weight_temperature; never on in evaluation mode

    def binary_weight(self) -> Tensor:
        """sign(w) in {-1, +1}, straight-through to the latent weight.

        In training mode with soft binarisation on (``set_weight_temperature``): ``clamp(w / T,
        -1, 1)`` in the forward pass, still straight-through (identity gradient) to ``w``, as in
        BNext's ``HardBinaryConv``.
        """
        if self.soft and self.training:
            soft = (self.weight / self.temperature).clamp(-1.0, 1.0)
            return (soft - self.weight).detach() + self.weight
        return binary_sign(self.weight, float("inf"))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.weight.clamp_(-WEIGHT_CLIP, WEIGHT_CLIP)
        # (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)
        return F.conv2d(x, self.binary_weight(), stride=self.stride, padding=self.padding)

    def latent_weight(self) -> nn.Parameter:
        return self.weight

    def binarized_weight(self) -> Tensor:
        return self.binary_weight()

    def binary_macs(self, output: Tensor) -> int:
        return _binary_conv_macs(self, output)

    def frozen(self) -> nn.Module:
        return FrozenBinaryConv2d(self)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class FrozenBinaryConv2d(nn.Module, BinaryLayer):
    """``BinaryConv2d`` with sign(w) computed once into a +-1 buffer (its inference form).

    Args:
        conv: The trained convolution.
    """

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        with torch.no_grad():
            self.register_buffer("weight", conv.binary_weight().detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)

    def binarized_weight(self) -> Tensor:
        return self.weight

    def binary_macs(self, output: Tensor) -> int:
        return _binary_conv_macs(self, output)

    def frozen(self) -> nn.Module:
        return self


def binary_layers(model: nn.Module) -> list[BinaryLayer]:
    """The modules of ``model`` that are binary layers (``BinaryLayer``), in module order."""
    return [m for m in model.modules() if isinstance(m, BinaryLayer)]


def set_weight_temperature(model: nn.Module, temperature: float) -> int:
    """Sets the binarisation temperature T of every ``BinaryConv2d`` in ``model``.

    T >= 1e-7 turns soft binarisation on for training mode (forward ``clamp(w / T, -1, 1)``);
    smaller T (0) is the exact sign. BNext's training code starts at T = 1 and multiplies T by 0.9
    after every epoch (``adjust_temperature`` in hpi-xnor/BNext ``train_assistant_group_amp.py``).

    Returns:
        The number of binary convolutions set.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, BinaryConv2d):
            module.temperature.fill_(temperature)
            module.soft = temperature >= HARD_TEMPERATURE
            n += 1
    return n
