"""Exact checks of the binary numerics: +-1 values, straight-through gradients, clamping."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bnn.backbones.binary import BinaryActivation, BinaryConv2d, binary_sign


def test_sign_values_are_exactly_plus_minus_one_and_sign_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 0.7, 3.0])
    y = binary_sign(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert y.dtype == x.dtype


def test_sign_keeps_half_precision_dtype():
    x = torch.randn(100).half()
    y = binary_sign(x)
    assert y.dtype == torch.float16
    assert set(y.unique().tolist()) <= {-1.0, 1.0}


def test_activation_gradient_is_straight_through_clipped_at_1_5():
    x = torch.tensor([-2.0, -1.5, -1.0, -0.2, 0.0, 0.3, 1.49, 1.5, 1.51, 4.0], requires_grad=True)
    upstream = torch.arange(1.0, 11.0)
    BinaryActivation()(x).backward(upstream)
    # Reference: d/dx clamp(x, -1.5, 1.5) = 1 inside [-1.5, 1.5], 0 outside.
    expected = torch.tensor([0, 2, 3, 4, 5, 6, 7, 8, 0, 0], dtype=torch.float32)
    assert torch.equal(x.grad, expected)


def test_binary_conv_uses_sign_of_weights_and_zero_padding():
    torch.manual_seed(1)
    conv = BinaryConv2d(5, 7, kernel_size=3, stride=1).eval()
    x = binary_sign(torch.randn(2, 5, 6, 6))
    y = conv(x)
    reference = F.conv2d(x, torch.where(conv.weight >= 0, 1.0, -1.0), padding=1)
    assert torch.equal(y, reference)
    # Interior outputs sum 45 products of +-1: odd integers in [-45, 45]. Corners see 4 of 9 taps
    # (zero padding adds 0): even integers in [-20, 20].
    interior = y[:, :, 1:-1, 1:-1]
    assert torch.equal(interior, interior.round()) and bool((interior.abs() <= 45).all())
    assert bool((interior.remainder(2) == 1).all())
    corner = y[:, :, 0, 0]
    assert bool((corner.remainder(2) == 0).all()) and bool((corner.abs() <= 20).all())


def test_binary_conv_weight_gradient_is_straight_through():
    conv = BinaryConv2d(3, 4, kernel_size=1).train()
    x = torch.randn(2, 3, 5, 5)
    upstream = torch.randn(2, 4, 5, 5)
    conv(x).backward(upstream)
    # d out / d sign(w) passed unchanged to w: grad = sum over batch/space of upstream * input.
    expected = torch.einsum("bohw,bihw->oi", upstream, x).view(4, 3, 1, 1)
    torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_binary_conv_clamps_latent_weights_in_training_only():
    conv = BinaryConv2d(2, 2, kernel_size=3)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-3, 3, conv.weight.numel()).view_as(conv.weight))
    conv.eval()(torch.ones(1, 2, 4, 4))
    assert conv.weight.abs().max().item() == 3.0
    conv.train()(torch.ones(1, 2, 4, 4))
    assert conv.weight.min().item() == -1.5 and conv.weight.max().item() == 1.5


def test_binary_conv_stride_two_shape():
    conv = BinaryConv2d(4, 4, kernel_size=3, stride=2)
    assert conv(torch.randn(1, 4, 9, 8)).shape == (1, 4, 5, 4)
