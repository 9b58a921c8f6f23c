"""Binarisation primitives of BNext (Guo et al., "Join the High Accuracy Club on ImageNet with a
Binary Neural Network Ticket", arXiv 2211.12933), as used by Lanzino et al., CVPRW 2024.

Forward values are exactly -1 or +1 with sign(0) = +1 (equation 2 of the deepfake paper). Gradients
are straight-through: activations pass the gradient of clamp(x, -1.5, 1.5); latent weights pass it
unchanged. The ``temperature`` buffers of the official code are kept so official checkpoints load;
the released checkpoints end with temperature ~ 0, i.e. pure sign, which is what inference always
computes. Training may binarise weights softly first, as BNext's training code does
(``set_weight_temperature``): forward ``clamp(w / T, -1, 1)`` in training mode while T >= 1e-7,
with T annealed towards 0 by the trainer; evaluation mode always uses the exact sign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATION_CLIP = 1.5
WEIGHT_CLIP = 1.5
HARD_TEMPERATURE = 1e-7  # BNext's threshold: below it the weights are binarised with sign


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; backward passes ``grad * 1[|x| <= clip]`` (clip = inf: identity)."""

    @staticmethod
    def forward(ctx, x: Tensor, clip: float) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.clip = clip
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x >= 0, one, -one)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        if ctx.clip == float("inf"):
            return grad_output, None
        inside = (x >= -ctx.clip) & (x <= ctx.clip)
        return grad_output * inside.to(grad_output.dtype), None


def binary_sign(x: Tensor, clip: float = ACTIVATION_CLIP) -> Tensor:
    """Exact +-1 sign of ``x`` with a straight-through gradient clipped to [-clip, clip]."""
    return _SignSTE.apply(x, clip)


class BinaryActivation(nn.Module):
    """Binarises activations: forward sign(x) in {-1, +1}, backward grad of clamp(x, -1.5, 1.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(1))  # kept for checkpoint compatibility

    def forward(self, x: Tensor) -> Tensor:
        return binary_sign(x, ACTIVATION_CLIP)


class BinaryConv2d(nn.Module):
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

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


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
