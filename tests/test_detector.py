"""Contract tests of the detector over every registered backbone x feature set, the feature sets
themselves (Table 4's rows, parsing, labels), frozen mode, and loading the authors' released
Lightning checkpoints."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from bnn import Detector, create_detector, list_backbones
from bnn.__main__ import main as bnn_main
from bnn.backbones.binary import BinaryActivation, BinaryConv2d
from bnn.detector import parse_features
from bnn.feature_sets import all_feature_sets, display_label, feature_set_sort_key
from bnn.inference import for_inference
from studies.schema import Powerset

# Lanzino et al., CVPRW 2024, Table 4: the rows of the feature ablation, top to bottom.
TABLE_4_ROWS = ["RGB (baseline)", "+Mag.", "+FFT", "+LBP", "+Mag.+FFT", "+Mag.+LBP", "+FFT+LBP", "+Mag.+FFT+LBP"]
FEATURE_SETS = all_feature_sets()


_BACKBONES: dict[str, torch.nn.Module] = {}


def _backbone(name: str):
    """One backbone per name for the module (building BNext-L takes seconds)."""
    if name not in _BACKBONES:
        torch.manual_seed(0)
        _BACKBONES[name] = create_detector(name, "rgb").backbone
    return _BACKBONES[name]


@pytest.fixture(scope="module", autouse=True)
def _free_backbones():
    yield
    _BACKBONES.clear()


def _unused_in_official_bnext(detector: Detector, name: str) -> bool:
    """The stem's PReLU and the feed-forward units' activation1 exist in checkpoints, unused."""
    if name == "backbone.feature.0.prelu.weight":
        return True
    if name.endswith(".activation1.weight"):
        unit = detector.get_submodule(name.removesuffix(".activation1.weight"))
        return not unit.elm_attention
    return False


def test_all_feature_sets_are_table_4_rows_in_order():
    assert [display_label(s, added=True) for s in all_feature_sets()] == TABLE_4_ROWS
    assert all_feature_sets() == [
        "rgb", "rgb+sobel", "rgb+fft", "rgb+lbp", "rgb+sobel+fft", "rgb+sobel+lbp", "rgb+fft+lbp", "rgb+sobel+fft+lbp",
    ]
    assert all_feature_sets(["lbp", "magnitude"]) == ["rgb", "rgb+sobel", "rgb+lbp", "rgb+sobel+lbp"]
    assert sorted(reversed(all_feature_sets()), key=feature_set_sort_key) == all_feature_sets()
    assert sorted(["rgb+lbp+fft", "rgb+magnitude", "rgb"], key=feature_set_sort_key) == [
        "rgb", "rgb+magnitude", "rgb+lbp+fft"]


def test_a_study_powerset_gives_table_4_order():
    assert Powerset(powerset=["sobel", "fft", "lbp"]).values() == all_feature_sets()


def test_cost_features_all_is_every_feature_set(capsys):
    args = ["cost", "--backbones", "bnext_micro", "--features", "all", "--frozen", "trainable", "--size", "32",
            "--format", "csv"]
    assert bnn_main(args) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table["features"].tolist() == all_feature_sets()


@pytest.mark.parametrize(("features", "full", "added"), [
    ("rgb", "RGB", "RGB (baseline)"),
    ("rgb+sobel+fft", "RGB+Mag.+FFT", "+Mag.+FFT"),
    ("rgb+lbp+magnitude", "RGB+Mag.+LBP", "+Mag.+LBP"),  # alias resolved, canonical order
    ("rgb+sobel+fft+lbp", "RGB+Mag.+FFT+LBP", "+Mag.+FFT+LBP"),
])
def test_display_label_is_the_papers_name(features, full, added):
    assert display_label(features) == full and display_label(features, added=True) == added


# Building and running BNext-M and BNext-L takes 10-40 s per test on 2 cores: their contract
# tests run in the integration tier, every other backbone's in the default one.
_HEAVY_BACKBONES = frozenset({"bnext_middle", "bnext_large"})


def _tier(backbone: str, *, light: bool = True) -> tuple:
    return () if light and backbone not in _HEAVY_BACKBONES else (pytest.mark.integration,)


def _grid():
    """Every backbone with no extra channel and with all of them in the default tier (BNext-M and
    BNext-L in the integration tier); the other feature sets (the same adapter with fewer inputs)
    in the integration tier."""
    for backbone in list_backbones():
        for features in FEATURE_SETS:
            marks = _tier(backbone, light=features in (FEATURE_SETS[0], FEATURE_SETS[-1]))
            yield pytest.param(backbone, features, marks=marks, id=f"{backbone}-{features}")


@pytest.mark.parametrize(("backbone", "features"), list(_grid()))
def test_contract_forward_backward(backbone, features):
    # 64 px, batch 2: the deepest stage is 2x2, so training-mode BatchNorm sees 8 values per
    # channel. (At 1x1 it would see 2, and its gradients can explode by construction.)
    detector = Detector(_backbone(backbone), parse_features(features)).train()
    # The default head's Linear starts at zero (no gradient reaches the backbone at step 0 by
    # design); a random one lets this test see the gradient of every layer below it.
    torch.nn.init.normal_(detector.fc.weight, std=0.01)
    detector.zero_grad(set_to_none=True)
    images = torch.rand(2, 3, 64, 64)
    logits = detector(images)
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for name, param in detector.named_parameters():
        if param.grad is None:  # only the parameters the official BNext forward never applies
            assert _unused_in_official_bnext(detector, name), name
        else:
            assert torch.isfinite(param.grad).all(), name
    if features != "rgb":
        assert detector.adapter.weight.grad.abs().sum() > 0
    detector.zero_grad(set_to_none=True)  # the backbone is shared with the next test


@pytest.mark.parametrize("backbone", [pytest.param(b, marks=_tier(b)) for b in list_backbones()])
def test_contract_inference_form_is_identical(backbone):
    """``for_inference`` (sign(w) computed once, plain sign) changes no output bit in eval mode."""
    detector = Detector(_backbone(backbone), parse_features("rgb+fft")).eval()
    fast = for_inference(detector)
    assert not any(isinstance(m, (BinaryConv2d, BinaryActivation)) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fast(images), detector(images))
    assert any(p.requires_grad for p in detector.parameters())  # the original is untouched


def test_adapter_shape_and_absence():
    assert create_detector("bnext_micro", "rgb").adapter.__class__.__name__ == "Identity"
    adapter = create_detector("bnext_micro", ["rgb", "lbp", "magnitude"]).adapter
    assert tuple(adapter.weight.shape) == (3, 5, 3, 3) and adapter.padding == (1, 1)


def test_feature_order_is_canonical_and_aliases_resolve():
    assert parse_features(["rgb", "lbp", "fft", "magnitude"]) == ("sobel", "fft", "lbp")
    assert parse_features("rgb+lbp+fft") == ("fft", "lbp") and parse_features("rgb") == ()
    assert create_detector("bnext_micro", "rgb+lbp+fft").features_label == "rgb+fft+lbp"


@pytest.mark.parametrize(("features", "error", "message"), [
    (["fft"], ValueError, "must include 'rgb'"),
    ("fft+lbp", ValueError, "must include 'rgb'"),
    ("rgb+fft+rgb", ValueError, "lists 'rgb' more than once"),
    ("rgb+sobel+magnitude", ValueError, "duplicate features"),
    (["rgb", "fftt"], KeyError, "unknown feature 'fftt'"),
])
def test_parse_features_errors(features, error, message):
    with pytest.raises(error, match=message):
        parse_features(features)
    with pytest.raises(error, match=message):  # every consumer of a label raises the same
        display_label(features if isinstance(features, str) else "+".join(features))


def test_frozen_backbone_does_not_train_and_keeps_batchnorm_statistics():
    detector = create_detector("bnext_micro", "rgb+fft+lbp", freeze_backbone=True).train()
    assert not detector.backbone.training and detector.adapter.training
    before = {k: v.clone() for k, v in detector.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(
            detector(torch.rand(4, 3, 32, 32)), torch.tensor([0.0, 1.0, 0.0, 1.0])
        ).backward()
        optimizer.step()
    after = detector.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in detector.backbone.parameters())
    assert detector.adapter.weight.grad is not None and detector.fc.weight.grad is not None


def test_normalisation_is_imagenet_after_the_adapter():
    detector = create_detector("bnext_micro", "rgb").eval()
    seen = {}
    detector.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.rand(1, 3, 32, 32)
    detector(images)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (images - mean) / std)


def _authors_checkpoint(detector: Detector, hyper_parameters: dict) -> dict:
    """A checkpoint in the layout of the authors' BNext4DFR Lightning module (predicts "real")."""
    state = {}
    for key, value in detector.state_dict().items():
        key = "base_model." + key.removeprefix("backbone.") if key.startswith("backbone.") else key
        state[key] = -value if key in ("fc.weight", "fc.bias") else value
    return {"state_dict": state, "hyper_parameters": hyper_parameters, "epoch": 4, "pytorch-lightning_version": "2.2.0"}


def test_load_authors_lightning_checkpoint(tmp_path):
    from bnn import load_authors_checkpoint

    source = create_detector("bnext_tiny", "rgb+sobel+fft+lbp", compat="authors", head="linear").eval()
    hp = {
        "num_classes": 2, "backbone": "BNext-T", "freeze_backbone": True,
        "add_magnitude_channel": True, "add_fft_channel": True, "add_lbp_channel": True,
    }
    path = tmp_path / "authors.ckpt"
    torch.save(_authors_checkpoint(source, hp), path)
    loaded = load_authors_checkpoint(path)
    assert loaded.extra_features == ("sobel", "fft", "lbp") and loaded.compat == "authors"
    assert loaded.freeze_backbone and loaded.backbone_name == "bnext_tiny"
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(images), source(images))


def test_authors_checkpoint_without_hyper_parameters_needs_arguments(tmp_path):
    from bnn import load_authors_checkpoint

    source = create_detector("bnext_micro", "rgb+fft", head="linear").eval()
    path = tmp_path / "bare.ckpt"
    torch.save(_authors_checkpoint(source, {}), path)
    with pytest.raises(ValueError, match="pass backbone="):
        load_authors_checkpoint(path)
    loaded = load_authors_checkpoint(path, backbone="bnext_micro", features="rgb+fft", freeze_backbone=False)
    images = torch.rand(1, 3, 32, 32)
    # compat differs (authors vs exact grey levels), so compare on the channel path only.
    x = torch.rand(1, 4, 32, 32)
    assert torch.equal(loaded.forward_channels(x), source.forward_channels(x))
    assert loaded(images).shape == (1,)
