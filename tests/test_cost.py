"""The BNN-aware cost counter: published BNext-T figures, closed-form per-layer checks, refusal of
unknown parameterised modules, and the ``python -m bnn cost`` table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn import cost, create_backbone, create_detector
from bnn.__main__ import main
from bnn.backbones.binary import BinaryConv2d


def _on_meta(factory, *args, **kwargs):
    with torch.device("meta"):
        return factory(*args, **kwargs)


def test_bnext_tiny_figures_at_224():
    c = cost.count(_on_meta(create_backbone, "bnext_tiny"), (1, 3, 224, 224))
    assert c.bops == 4_816_896_000
    assert c.flops == 13_344_512
    assert c.ops == 88_608_512
    assert c.params == 30_862_236 and c.binary_params == 28_253_184
    assert c.storage_bytes == 28_253_184 // 8 + 4 * (30_862_236 - 28_253_184)


def test_meta_device_and_real_weights_count_the_same():
    real = cost.count(create_backbone("bnext_micro"), (1, 3, 64, 64))
    meta = cost.count(_on_meta(create_backbone, "bnext_micro"), (1, 3, 64, 64))
    assert real == meta


def test_closed_form_single_layers():
    binary = nn.Sequential(BinaryConv2d(16, 32, kernel_size=3, stride=2))
    c = cost.count(binary, (1, 16, 20, 20))
    assert (c.bops, c.flops, c.binary_params, c.params) == (10 * 10 * 32 * 16 * 9, 0, 32 * 16 * 9, 32 * 16 * 9)
    assert c.storage_bytes == 32 * 16 * 9 // 8

    conv = nn.Sequential(nn.Conv2d(6, 4, kernel_size=5, padding=2, groups=2), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    c = cost.count(conv, (1, 6, 8, 8))
    assert c.flops == 8 * 8 * 4 * 3 * 25 + 4 * 8 * 8 * 3
    assert c.bops == 0 and c.ops == c.flops and c.storage_bytes == 4 * c.params


def test_batch_size_does_not_change_per_image_cost():
    model = _on_meta(create_backbone, "bnext_micro")
    assert cost.count(model, (1, 3, 32, 32)) == cost.count(model, (8, 3, 32, 32))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.integration
def test_adapter_and_head_add_their_macs(k):
    features = ["rgb", "sobel", "fft", "lbp"][: k + 1]
    backbone = cost.count(_on_meta(create_backbone, "bnext_tiny", num_classes=0), (1, 3, 64, 64))
    detector = cost.count(_on_meta(create_detector, "bnext_tiny", features), (1, 3, 64, 64))
    adapter = 64 * 64 * 3 * (3 + k) * 9 if k else 0
    assert detector.flops == backbone.flops + adapter + 1024
    assert detector.bops == backbone.bops
    assert detector.feature_flops > 0 if k else detector.feature_flops == 0


def test_frozen_backbone_changes_trainable_params_only():
    trainable = cost.count(_on_meta(create_detector, "bnext_tiny", "rgb+fft+lbp"))
    frozen = cost.count(_on_meta(create_detector, "bnext_tiny", "rgb+fft+lbp", freeze_backbone=True))
    assert trainable.ops == frozen.ops and trainable.params == frozen.params
    assert frozen.trainable_params == 3 * 5 * 9 + 3 + 1024 + 1


@pytest.mark.integration
def test_paper_flops_column_is_ops_in_units_of_1e8():
    # Lanzino et al. Table 1: "FLOPs (G)" 0.89 / 1.91 / 3.39 for BNext-T/S/M (RGB + FFT + LBP).
    for name, published in [("bnext_tiny", 0.89), ("bnext_small", 1.91), ("bnext_middle", 3.39)]:
        c = cost.count(_on_meta(create_detector, name, "rgb+fft+lbp"))
        assert abs(c.ops / 1e8 - published) < 0.06


def test_vit_attention_matmuls_are_counted():
    vit = _on_meta(create_backbone, "vit_base_patch32_224")
    c = cost.count(vit, (1, 3, 224, 224))
    tokens, dim, depth = 50, 768, 12
    linear = depth * (tokens * dim * 3 * dim + tokens * dim * dim + 2 * tokens * dim * 4 * dim)
    patch = 49 * dim * 3 * 32 * 32
    assert c.flops == linear + patch + depth * 2 * tokens * tokens * dim + dim * 1000


def test_unknown_module_with_parameters_is_refused():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.gain

    with pytest.raises(TypeError, match="does not know .*Mystery"):
        cost.count(nn.Sequential(nn.Conv2d(3, 3, 1), Mystery()), (1, 3, 8, 8))


@pytest.mark.parametrize("fmt", ["text", "markdown", "latex", "csv"])
@pytest.mark.integration
def test_cost_cli_formats(fmt, capsys):
    assert main(["cost", "--backbones", "bnext_tiny", "resnet50", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "BNext-T" in out and "ResNet-50" in out and "rgb+fft+lbp" in out
    if fmt == "latex":
        assert "\\toprule" in out and "\\bottomrule" in out
    if fmt == "csv":
        assert out.splitlines()[0].startswith("model,backbone,features,frozen,params_M")
        assert len(out.strip().splitlines()) == 1 + 2 * 2 * 2


def test_cost_cli_rejects_unknown_feature(capsys):
    assert main(["cost", "--backbones", "bnext_tiny", "--features", "rgb+fourier"]) == 2
    assert "unknown feature 'fourier'" in capsys.readouterr().err


def test_detector_cost_on_the_meta_device_equals_the_count_of_a_real_detector():
    """``cost.detector_cost`` (``studies plan``, ``python -m bnn cost``) builds on the meta device."""
    real = cost.count(create_detector("bnext_micro", "rgb+fft+lbp", freeze_backbone=True), (1, 3, 32, 32))
    assert cost.detector_cost("bnext_micro", "rgb+fft+lbp", True, (32, 32)) == real
