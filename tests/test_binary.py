"""Exact checks of the binary numerics: +-1 values, straight-through gradients, clamping; every
registered quantiser and every binary layer against their contracts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnn.backbones.binary import (
    BinaryActivation,
    BinaryConv2d,
    BinaryLayer,
    binary_layers,
    binary_sign,
)
from bnn.backbones.quantizers import QUANTIZERS
from bnn.checkpoint import load_detector, save_best
from bnn.config import FitConfig, create_detector_from_config


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


# ------------------------------------------------------------------ quantisers (registered by name)

@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_contract_every_quantizer_is_the_exact_sign_forward_and_its_surrogate_backward(name):
    quantizer = QUANTIZERS.get(name)
    assert quantizer.name == name and quantizer.source
    x = torch.tensor([-3.0, -1.0, -0.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 1.0, 3.0], requires_grad=True)
    y = quantizer(x)
    assert y.tolist() == [-1.0] * 4 + [1.0] * 6 and y.dtype == x.dtype
    upstream = torch.linspace(0.5, 5.0, 10)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream * quantizer.surrogate(x.detach()))
    half = quantizer(torch.randn(50).half())
    assert half.dtype == torch.float16 and set(half.unique().tolist()) <= {-1.0, 1.0}
    # Every registered activation binarises the same way, so the inference form does not depend on it.
    act = BinaryActivation(name).eval()
    z = torch.randn(2, 3, 4, 4)
    assert torch.equal(act(z), act.frozen()(z))


def test_ste_sign_is_bnexts_clipped_straight_through_estimator():
    x = torch.tensor([-1.51, -1.5, -0.3, 0.0, 1.5, 1.51])
    assert QUANTIZERS.get("ste_sign").surrogate(x).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert BinaryActivation().quantizer is QUANTIZERS.get("ste_sign")  # the default


def test_approx_sign_is_bi_real_nets_piecewise_polynomial():
    x = torch.tensor([-2.0, -1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 1.0, 1.25])
    # 2 - 2|x| on |x| <= 1 (Bi-Real Net, Eq. 7), 0 outside: exact in float32 at these points.
    assert QUANTIZERS.get("approx_sign").surrogate(x).tolist() == [0.0, 0.0, 0.5, 1.0, 2.0, 1.5, 1.0, 0.0, 0.0]


def test_swish_sign_surrogate_is_the_derivative_of_bnn_plus_smooth_sign():
    x = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    beta = 5.0
    smooth = 2 * torch.sigmoid(beta * x) * (1 + beta * x * (1 - torch.sigmoid(beta * x))) - 1
    (derivative,) = torch.autograd.grad(smooth.sum(), x)
    torch.testing.assert_close(QUANTIZERS.get("swish_sign").surrogate(x.detach()), derivative, rtol=1e-12, atol=1e-12)


def test_the_input_quantizer_reaches_every_binary_activation_and_survives_a_checkpoint(tmp_path):
    config = FitConfig(backbone="bnext_micro", features="rgb+lbp", head="linear", input_quantizer="approx_sign")
    detector = create_detector_from_config(config)
    activations = [m for m in detector.modules() if isinstance(m, BinaryActivation)]
    assert activations and {m.quantizer.name for m in activations} == {"approx_sign"}
    save_best(tmp_path / "best.pt", config, 0, detector)
    loaded, loaded_config = load_detector(tmp_path / "best.pt", device="cpu")
    assert loaded_config.input_quantizer == "approx_sign"
    assert {m.quantizer.name for m in loaded.modules() if isinstance(m, BinaryActivation)} == {"approx_sign"}
    # Same forward in eval mode as the default quantiser with the same weights; other gradients.
    default = create_detector_from_config(FitConfig(backbone="bnext_micro", features="rgb+lbp", head="linear"))
    default.load_state_dict(detector.state_dict())
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(detector.eval()(images), default.eval()(images))
    grads = []
    for model in (detector.train(), default.train()):
        model.zero_grad()
        model(images).sum().backward()
        grads.append(model.backbone.feature[1].Attention.move.bias.grad.clone())
    assert not torch.equal(grads[0], grads[1])


def test_input_quantizer_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"input_quantizer.*unknown input quantizer 'aprox_sign'.*Did you mean 'approx_sign'"):
        FitConfig.from_mapping({"backbone": "bnext_micro", "input_quantizer": "aprox_sign"}, "run.yaml")
    with pytest.raises(ValueError, match="resnet18 has no binary activations"):
        FitConfig.from_mapping({"backbone": "resnet18", "input_quantizer": "approx_sign"}, "run.yaml")
    assert FitConfig(backbone="resnet18").input_quantizer == "ste_sign"  # the default is fine everywhere


# ------------------------------------------------------------------ the binary-layer interface

def _layers() -> dict[str, tuple[BinaryLayer, torch.Tensor]]:
    torch.manual_seed(0)
    conv = BinaryConv2d(8, 16, kernel_size=3, stride=2)
    return {
        "BinaryConv2d": (conv, binary_sign(torch.randn(2, 8, 6, 6))),
        "FrozenBinaryConv2d": (conv.frozen(), binary_sign(torch.randn(2, 8, 6, 6))),
        **{f"BinaryActivation[{n}]": (BinaryActivation(n), torch.randn(2, 8, 6, 6)) for n in QUANTIZERS.names()},
        "InferenceSign": (BinaryActivation().frozen(), torch.randn(2, 8, 6, 6)),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_contract_every_binary_layer_describes_itself(name):
    layer, x = _layers()[name]
    layer.eval()
    frozen = layer.frozen()
    assert isinstance(frozen, BinaryLayer) and frozen.latent_weight() is None
    out = layer(x)
    assert torch.equal(frozen(x), out)  # the inference form computes the same
    assert layer.precision == 1
    weight = layer.binarized_weight()
    if weight is not None:
        assert set(weight.unique().tolist()) <= {-1.0, 1.0}
        assert layer.binary_macs(out) == out[0].numel() * weight[0].numel()  # C_in * k * k per output
    else:
        assert layer.binary_macs(out) == 0
    latent = layer.latent_weight()
    assert latent is None or (isinstance(latent, torch.nn.Parameter) and torch.equal(torch.where(latent >= 0, 1.0, -1.0), weight))
    assert binary_layers(torch.nn.Sequential(layer)) == [layer]
