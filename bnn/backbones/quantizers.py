"""Activation quantisers of binary layers, registered by name: one forward, several gradients.

Every quantiser computes the same forward value, sign(x) in {-1, +1} with sign(0) = +1 (equation 2
of Lanzino et al., CVPRW 2024), so inference, the OpenVINO 1-bit export and the cost count never
depend on which one a network trained with. They differ in the surrogate derivative d sign / dx the
backward pass uses in place of sign's (zero almost everywhere), as larq's quantisers do
(``larq.quantizers``: ``ste_sign``, ``approx_sign``, ``swish_sign``):

- ``ste_sign``: the straight-through estimator 1[|x| <= clip] (Hubara et al., "Binarized Neural
  Networks", NeurIPS 2016), clip 1.5 as BNext trains (hpi-xnor/BNext ``BinaryActivation``:
  ``clamp(x, -1.5, 1.5)``'s gradient). The default, and what every recorded run used.
- ``approx_sign``: the piecewise-polynomial derivative 2 - 2|x| on |x| <= 1, else 0 (Liu et al.,
  "Bi-Real Net", ECCV 2018, Eq. 7; larq ``approx_sign``).
- ``swish_sign``: the derivative of 2 sigmoid(beta x)(1 + beta x (1 - sigmoid(beta x))) - 1 with
  beta = 5 (Darabi et al., "BNN+", 2018; larq ``swish_sign``).

A new quantiser is one ``Quantizer`` subclass with ``surrogate`` (and a test in
``tests/test_binary.py``); ``FitConfig.input_quantizer`` names it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnn.registry import Registry


class Quantizer:
    """sign(x) forward; ``surrogate(x)`` is the derivative the backward pass multiplies by.

    Attributes:
        name: Registered name (``FitConfig.input_quantizer``).
        source: Paper or library the surrogate comes from.
    """

    name: str = ""
    source: str = ""

    def surrogate(self, x: Tensor) -> Tensor:
        """d q(x) / dx used in backward, same shape and dtype as ``x``."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        """sign(x) in {-1, +1} (sign(0) = +1), dtype of ``x``; backward ``grad * surrogate(x)``."""
        return _Quantize.apply(x, self)

    def __repr__(self) -> str:
        return self.name


class _Quantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, quantizer: Quantizer) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.quantizer = quantizer
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x >= 0, one, -one)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad_output * ctx.quantizer.surrogate(x).to(grad_output.dtype), None


QUANTIZERS: Registry[Quantizer] = Registry("input quantizer")


def _registered(quantizer: Quantizer) -> Quantizer:
    QUANTIZERS.add(quantizer.name, quantizer)
    return quantizer


class SteSign(Quantizer):
    """Straight-through estimator: surrogate 1 on [-clip, clip], 0 outside (ends included)."""

    def __init__(self, name: str, clip: float, source: str) -> None:
        self.name, self.clip, self.source = name, clip, source

    def surrogate(self, x: Tensor) -> Tensor:
        return ((x >= -self.clip) & (x <= self.clip)).to(x.dtype)


class ApproxSign(Quantizer):
    """Bi-Real Net's surrogate: 2 - 2|x| on |x| <= 1, else 0."""

    name = "approx_sign"
    source = "Liu et al., Bi-Real Net, ECCV 2018, Eq. 7; larq.quantizers.approx_sign"

    def surrogate(self, x: Tensor) -> Tensor:
        return torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))


class SwishSign(Quantizer):
    """BNN+'s surrogate: beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)), beta = 5."""

    name = "swish_sign"
    source = "Darabi et al., BNN+, arXiv:1812.11800; larq.quantizers.swish_sign (beta 5)"
    beta = 5.0

    def surrogate(self, x: Tensor) -> Tensor:
        bx = self.beta * x
        return self.beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


STE_SIGN = _registered(SteSign("ste_sign", 1.5, "Hubara et al., NeurIPS 2016; clip 1.5 as hpi-xnor/BNext"))
_registered(ApproxSign())
_registered(SwishSign())
DEFAULT_QUANTIZER = STE_SIGN.name

__all__ = ("DEFAULT_QUANTIZER", "QUANTIZERS", "Quantizer", "STE_SIGN")
