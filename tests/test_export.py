"""OpenVINO export with 1-bit BinaryConvolution (bnn.export): exactness against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

ov = pytest.importorskip("openvino")

from bnn.backbones.binary import BinaryActivation, BinaryConv2d  # noqa: E402
from bnn.detector import create_detector  # noqa: E402
from bnn.export import (  # noqa: E402
    OpenVINODetector,
    convert_openvino,
    export,
    export_openvino,
    pack_bits,
    runtime_layer_types,
)


class SignConv(nn.Module):
    """sign -> BinaryConv2d, as inside a BNext unit."""

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        self.binary_activation = BinaryActivation()
        self.binary_conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.binary_conv(self.binary_activation(x))


def _compile(model):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled, runtime_layer_types(compiled)


def _randomise(detector: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and binary weights, logits of moderate size."""
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales too
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, BinaryConv2d):
                m.weight.normal_()
        detector.fc.weight.mul_(0.05)
    return detector.eval()


def test_pack_bits_is_lsb_first():
    w = np.array([1, -1, -1, -1, -1, -1, -1, -1, -1, 1], np.float32)
    assert pack_bits(w).tolist() == [0b00000001, 0b00000010]


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride"),
    [(8, 7, 3, 1), (16, 5, 3, 2), (8, 8, 1, 1), (24, 9, 1, 2), (5, 7, 3, 1), (5, 7, 1, 2)],
)
@pytest.mark.integration
def test_binary_conv_is_exact(c_in, c_out, kernel, stride):
    conv = BinaryConv2d(c_in, c_out, kernel, stride)
    with torch.no_grad():
        conv.weight.normal_()
    module = SignConv(conv).eval()
    x = torch.randn(2, c_in, 9, 11)
    x[:, :, ::3, ::2] = 0.0  # sign(0) = +1
    x[0, 0, 1] = -0.0
    x[1, 0, 2, :4] = torch.tensor([1e-40, -1e-40, 1.4e-45, -1.4e-45])  # subnormals keep their sign
    x[1, 0, 4, :2] = torch.tensor([1.2e-38, -1.2e-38])  # the smallest normals
    model, counts = convert_openvino(module, x, dynamic_batch=False)
    compiled, types = _compile(model)
    packed = c_in % 8 == 0
    assert counts == {"binary": int(packed), "float_fallback": int(not packed)}
    assert types["BinaryConvolution"] == int(packed)
    pm1 = torch.where(torch.rand_like(x) < 0.5, -1.0, 1.0)
    for inputs in (x, pm1):
        with torch.no_grad():
            expected = module(inputs).numpy()
        got = compiled(inputs.numpy())[0]
        np.testing.assert_array_equal(got, expected)  # integers, identical
        assert np.all(got == np.round(got))


@pytest.mark.integration
def test_detector_round_trip(tmp_path):
    torch.manual_seed(1)
    detector = _randomise(create_detector("bnext_micro", "rgb+fft+lbp"))
    path = export_openvino(detector, tmp_path, input_size=(64, 64))
    assert path.name == "model.xml" and path.with_suffix(".bin").exists()
    engine = OpenVINODetector(tmp_path)
    n_binary = sum(isinstance(m, BinaryConv2d) for m in detector.modules())
    assert engine.meta["binary_convolutions"] == n_binary == 13
    assert engine.runtime_layer_types(batch_size=3)["BinaryConvolution"] == n_binary
    runtime = engine.compiled_for(3)[0].get_runtime_model().get_ordered_ops()
    def layer_type(op):
        return op.get_rt_info()["layerType"].astype(str)

    packing = [op for op in runtime if layer_type(op) == "Reorder" and op.get_output_element_type(0) == ov.Type.u1
               and layer_type(op.input(0).get_source_output().get_node()) != "Const"]  # weights: once
    assert not packing, "the binarisation should write packed bits itself, not through a reorder"
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits = detector(images)
    assert logits.abs().max() < 20  # probabilities are not saturated
    torch.testing.assert_close(engine(images), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(engine.predict_proba(images), detector.predict_proba(images), atol=1e-4, rtol=0)
    single = engine.predict_proba(images[:1])  # another batch size: compiled on demand
    torch.testing.assert_close(single, detector.predict_proba(images[:1]), atol=1e-4, rtol=0)


@pytest.mark.integration
def test_export_from_checkpoint(tmp_path):
    from bnn.config import FitConfig

    detector = _randomise(create_detector("bnext_micro", "rgb+fft"))
    config = FitConfig(backbone="bnext_micro", features="rgb+fft", resolution=32)
    torch.save({"model": detector.state_dict(), "config": config.model_dump()}, tmp_path / "best.pt")
    path = export(tmp_path / "best.pt", tmp_path / "ov")
    engine = OpenVINODetector(path)
    assert engine.input_size == (32, 32) and engine.extra_features == ("fft",)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(engine.predict_proba(images), detector.predict_proba(images), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="format"):
        export(tmp_path / "best.pt", tmp_path / "x", fmt="onnx")


@pytest.mark.integration
def test_export_and_detect_cli_with_each_engine(tmp_path, monkeypatch, capsys):
    import json

    from PIL import Image

    from bnn.__main__ import main
    from bnn.config import FitConfig
    from bnn.train import fit

    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    config = FitConfig(
        backbone="bnext_micro", features="rgb+fft+lbp", dataset="synthetic", resolution=32, epochs=1,
        batch_size=32, data_params={"count": 64, "image_size": 36}, output_dir=str(tmp_path / "run"),
    )
    checkpoint = fit(config).checkpoint
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    capsys.readouterr()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 40), (60 * i, 100, 200 - 50 * i)).save(images / f"img{i}.png")
    probs = {}
    for engine, source in (("torch", checkpoint), ("openvino", tmp_path / "exported")):
        assert main(["detect", str(images), "--checkpoint", str(source), "--engine", engine, "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        probs[engine] = [row["prob_fake"] for row in rows]
    assert len(probs["torch"]) == 3
    assert max(abs(a - b) for a, b in zip(probs["torch"], probs["openvino"], strict=True)) < 1e-4
