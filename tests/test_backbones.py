"""BNext structure against the official checkpoints' keys, weight loading, and the registry."""

from __future__ import annotations

import pytest
import torch

from bnn import create_backbone, list_backbones, load_pretrained
from bnn.backbones import BACKBONES
from bnn.backbones.bnext import CHANNELS, BinaryUnit
from bnn.pretrained import PRETRAINED_ENV, CheckpointMismatchError

SIZES = ["tiny", "small", "middle", "large"]


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_matches_official_keys_and_shapes(size, bnext_key_spec):
    with torch.device("meta"):
        model = create_backbone(f"bnext_{size}")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == bnext_key_spec[size]


@pytest.mark.parametrize("size", SIZES)
def test_block_plan_follows_the_spec(size):
    with torch.device("meta"):
        model = create_backbone(f"bnext_{size}")
    channels = CHANNELS[size]
    for i, block in enumerate(model.feature[1:], start=1):
        unit: BinaryUnit = block.Attention
        expected_stride = 2 if channels[i - 1] != channels[i] and channels[i] != channels[1] else 1
        assert unit.stride == expected_stride
        assert unit.elm_attention == (i > 1 and i % 2 == 0)
        assert hasattr(block, "FFN") == (channels[i - 1] == channels[i])


def _official_state(model, nested: bool):
    flat = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    return {"state_dict": flat, "epoch": 123} if nested else flat


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "state_dict"])
@pytest.mark.integration
def test_official_checkpoint_round_trip(tmp_path, nested):
    source = create_backbone("bnext_tiny")
    with torch.no_grad():  # non-trivial BN statistics and biases, so a wrong mapping would show
        for name, tensor in source.state_dict().items():
            if tensor.is_floating_point() and "temperature" not in name:
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor))
    path = tmp_path / "tiny_checkpoint.pth.tar"
    torch.save(_official_state(source, nested), path)

    loaded = load_pretrained(create_backbone("bnext_tiny"), path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_load_pretrained_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    model = create_backbone("bnext_micro")
    state = _official_state(model, nested=False)
    del state["module.feature.1.FFN_1.scale"]
    state["module.feature.9.extra"] = torch.zeros(1)
    state["module.fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(create_backbone("bnext_micro"), path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing keys" in message and "feature.1.FFN_1.scale" in message
    assert "1 unexpected keys" in message and "feature.9.extra" in message
    assert "fc.weight: checkpoint (10, 64) vs model (1000, 64)" in message


def test_missing_official_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "weights"))
    with pytest.raises(FileNotFoundError) as info:
        create_backbone("bnext_small", pretrained=True)
    message = str(info.value)
    assert "small_checkpoint.pth.tar" in message and "hpi-xnor/BNext" in message
    assert str(tmp_path / "weights") in message and PRETRAINED_ENV in message


@pytest.mark.integration
def test_pretrained_true_reads_the_pretrained_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    source = create_backbone("bnext_tiny")
    torch.save(_official_state(source, nested=False), tmp_path / "tiny_checkpoint.pth.tar")
    model = create_backbone("bnext_tiny", pretrained=True, num_classes=0)
    assert torch.equal(model.feature[3].FFN.binary_conv.weight, source.feature[3].FFN.binary_conv.weight)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1024)


def test_timm_baseline_loads_a_local_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("resnet50")
    path = tmp_path / "resnet50.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_backbone("resnet50", pretrained=path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(source.eval()(x), model.eval()(x))


def test_registry_names_and_errors():
    assert {"bnext_tiny", "bnext_small", "bnext_middle", "bnext_large"} <= set(list_backbones(binary=True))
    assert {"resnet50", "resnet18", "vit_base_patch32_224", "vgg16", "densenet121", "xception"} == set(list_backbones(binary=False))
    with pytest.raises(KeyError, match="Did you mean 'bnext_tiny'"):
        create_backbone("bnext_tiyn")
    with pytest.raises(ValueError, match="already registered"):
        BACKBONES.add("bnext_tiny", BACKBONES.get("bnext_tiny"))
