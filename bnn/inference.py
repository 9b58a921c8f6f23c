"""Inference form of a trained detector in PyTorch: binary weights computed once, plain sign.

In training, every forward re-binarises the latent weights and runs the sign through a
straight-through autograd function. For inference neither is needed: ``for_inference`` returns a
copy whose ``BinaryConv2d`` hold sign(w) as a fixed +-1 buffer and whose ``BinaryActivation`` are a
plain ``where(x >= 0, 1, -1)``. Outputs are identical to the original in eval mode (tested); this
is the "optimised PyTorch eval path" of ``benchmarks/inference.py``, what ``python -m bnn detect
--engine torch`` runs, and the starting point of the OpenVINO export (``bnn.export``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn.backbones.binary import BinaryActivation, BinaryConv2d


class InferenceSign(nn.Module):
    """sign with sign(0) = +1 as ``where(x >= 0, 1, -1)`` (no autograd function)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class FrozenBinaryConv2d(nn.Module):
    """``BinaryConv2d`` with sign(w) computed once into a +-1 buffer.

    Args:
        conv: The trained convolution.
    """

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        self.stride = conv.stride
        self.padding = conv.padding
        with torch.no_grad():
            self.register_buffer("weight", conv.binary_weight().detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)


def for_inference(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with binary activations and convolutions in their inference form.

    Args:
        module: A detector, backbone or any module containing ``BinaryActivation``/``BinaryConv2d``.

    Returns:
        The copy, without gradients; the original module is untouched.
    """
    module = copy.deepcopy(module).eval()
    if isinstance(module, BinaryConv2d):
        return FrozenBinaryConv2d(module)
    if isinstance(module, BinaryActivation):
        return InferenceSign()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BinaryConv2d):
                setattr(parent, name, FrozenBinaryConv2d(child))
            elif isinstance(child, BinaryActivation):
                setattr(parent, name, InferenceSign())
    return module.requires_grad_(False)
