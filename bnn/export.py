"""Export of detectors to OpenVINO with every binary convolution run on 1-bit packed operands.

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, argue for binary backbones (BNext) because binary convolutions can be computed with
XNOR and popcount on bit-packed operands. PyTorch only simulates them in float; this module
exports ``Detector.forward_channels`` to OpenVINO and rewrites each binary convolution into an
opset1 ``BinaryConvolution`` (mode ``xnor-popcount``) whose weights are a ``u1`` constant, 1 bit
per weight, which the OpenVINO CPU plugin executes with its bit-packed JIT kernel.

Exactness (checked on the OpenVINO 2026 CPU plugin, see ``tests/test_export.py``):

* The CPU plugin binarises a real-valued BinaryConvolution input as ``x > 0 -> +1``, else ``-1``,
  i.e. sign(0) = -1, whereas BNext uses sign(0) = +1. Each sign is therefore rewritten into a
  2-level FakeQuantize with threshold ``-smallest_subnormal`` (``x > t`` is exactly ``x >= 0``,
  subnormals and -0.0 included) and outputs 0/1, which the plugin runs as a JIT binarisation
  writing packed bits, so no float +-1 tensor and no f32 -> u1 reorder is left in the graph.
  (Exact as long as the CPU does not treat subnormals as zero: OpenVINO's default.)
* ``pad_value=0`` reproduces the zero padding of the +-1 activations exactly.
* ``u1`` constants are packed least significant bit first (element ``i`` is bit ``i % 8`` of
  byte ``i // 8``, flattened in (O, I, kH, kW) order).
* The CPU plugin gives wrong results when the input channel count is not a multiple of 8, so
  such convolutions are left as float convolutions of +-1 operands (exact, not bit-packed). All
  BNext binary convolutions have multiples of 8 channels.

The features (sobel/fft/lbp) are computed beforehand in PyTorch by ``Detector.input_channels``;
the exported network maps the (B, 3 + k, H, W) channels to (B,) logits.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bnn.checkpoint import load_detector
from bnn.detector import Detector
from bnn.features import input_channels
from bnn.inference import for_inference

MODEL_FILE = "model.xml"
META_FILE = "detector.json"
FORMATS = ("openvino",)
# Input channels of a binary convolution must be a multiple of this for the CPU plugin's kernel.
PACK_CHANNELS = 8


def _openvino():
    try:
        import openvino
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("OpenVINO export needs the 'openvino' package: pip install openvino") from err
    return openvino


def _constant_values(node) -> np.ndarray | None:
    """Values of a Constant node (through a Convert), else None."""
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data()).astype(np.float32)


def _is_sign(node) -> bool:
    """True for Select(x >= 0, +1, -1) (possibly behind a Convert)."""
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Select":
        return False
    cond = node.input_value(0).get_node()
    if cond.get_type_name() != "GreaterEqual":
        return False
    threshold = _constant_values(cond.input_value(1).get_node())
    on_true = _constant_values(node.input_value(1).get_node())
    on_false = _constant_values(node.input_value(2).get_node())
    return (
        threshold is not None and on_true is not None and on_false is not None
        and np.all(threshold == 0) and np.all(on_true == 1) and np.all(on_false == -1)
    )


def pack_bits(weight: np.ndarray) -> np.ndarray:
    """+-1 weights -> bytes of a ``u1`` OpenVINO constant (bit 1 for +1, least significant first)."""
    bits = (np.asarray(weight).reshape(-1) > 0).astype(np.uint8)
    return np.packbits(bits, bitorder="little")


def _u1_constant(weight: np.ndarray):
    ov = _openvino()
    tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(weight.shape)))
    data = np.asarray(tensor.data).reshape(-1)
    packed = pack_bits(weight)
    if data.size != packed.size:
        raise RuntimeError(f"unexpected u1 tensor storage: {data.size} bytes for {packed.size} packed bytes")
    data[:] = packed
    return ov.op.Constant(tensor)


def _sign_input(sign_node):
    """The ``x`` of a ``Select(x >= 0, +1, -1)`` recognised by ``_is_sign``."""
    if sign_node.get_type_name() == "Convert":
        sign_node = sign_node.input_value(0).get_node()
    return sign_node.input_value(0).get_node().input_value(0)


def _binarization(sign_node):
    """sign(x) as the binarising FakeQuantize that the CPU plugin fuses into a packed 1-bit output.

    FakeQuantize with 2 levels, equal input bounds ``t`` and outputs 0/1 gives 1 where ``x > t``;
    BinaryConvolution reads 1 as +1 and 0 as -1. ``t`` is minus the smallest float32 subnormal,
    so ``x > t`` is exactly ``x >= 0`` (no float lies strictly between ``t`` and -0.0).
    """
    from openvino import opset1

    def scalar(value):
        return opset1.constant(np.full((1, 1, 1, 1), value, np.float32))

    threshold = scalar(-np.finfo(np.float32).smallest_subnormal)
    return opset1.fake_quantize(_sign_input(sign_node), threshold, threshold, scalar(0.0), scalar(1.0), 2).output(0)


def binarize_convolutions(model) -> dict[str, int]:
    """Rewrites Convolution(sign(x), +-1 constant) into BinaryConvolution (xnor-popcount), in place.

    Args:
        model: An ``openvino.Model`` converted from a module prepared by ``bnn.inference.for_inference``.

    Returns:
        ``{"binary": rewritten, "float_fallback": left as float}``; the fallback holds binary
        convolutions whose input channels are not a multiple of 8 (see the module docstring).
    """
    _openvino()
    from openvino import opset1

    counts = {"binary": 0, "float_fallback": 0}
    for node in list(model.get_ordered_ops()):
        if node.get_type_name() != "Convolution":
            continue
        data = node.input_value(0)
        weight = _constant_values(node.input_value(1).get_node())
        if weight is None or weight.ndim != 4 or not _is_sign(data.get_node()):
            continue
        # convert_model folds a following BatchNorm into the weights: w = scale[o] * (+-1).
        scale = np.abs(weight).max(axis=(1, 2, 3))
        if np.any(scale == 0) or not np.all(np.abs(weight) == scale[:, None, None, None]):
            continue
        if weight.shape[1] % PACK_CHANNELS:
            counts["float_fallback"] += 1
            continue
        attrs = node.get_attributes()
        data = _binarization(data.get_node())
        output = opset1.binary_convolution(
            data,
            _u1_constant(np.sign(weight)),
            attrs["strides"],
            attrs["pads_begin"],
            attrs["pads_end"],
            attrs["dilations"],
            "xnor-popcount",
            0.0,
            attrs.get("auto_pad", "explicit"),
        ).output(0)
        if not np.all(scale == 1):
            output = opset1.multiply(output, opset1.constant(scale.reshape(1, -1, 1, 1))).output(0)
        output.get_node().set_friendly_name(node.get_friendly_name())
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(output)
        counts["binary"] += 1
    model.validate_nodes_and_infer_types()
    return counts


def convert_openvino(
    module: nn.Module, example_input: Tensor, binary: bool = True, dynamic_batch: bool = True
):
    """Converts a module (single tensor in, single tensor out) to an ``openvino.Model``.

    Args:
        module: The module; binary layers are made exportable on a copy.
        example_input: An input of the shape to export (its batch size is made dynamic).
        binary: Rewrite binary convolutions into BinaryConvolution (else float +-1 convolutions).
        dynamic_batch: Export the batch dimension as dynamic.

    Returns:
        ``(model, counts)``: the model and the ``binarize_convolutions`` counts.
    """
    ov = _openvino()
    module = for_inference(module)
    with torch.no_grad():
        model = ov.convert_model(module, example_input=(example_input,))
    shape = list(example_input.shape)
    if dynamic_batch:
        shape[0] = -1
    model.reshape({model.inputs[0]: ov.PartialShape(shape)})
    counts = binarize_convolutions(model) if binary else {"binary": 0, "float_fallback": 0}
    return model, counts


class _ChannelsModule(nn.Module):
    """Wraps ``Detector.forward_channels`` as a plain forward for tracing."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> Tensor:
        return self.detector.forward_channels(x)


def export_openvino(
    detector: Detector,
    out_dir: str | os.PathLike,
    input_size: tuple[int, int] = (224, 224),
    binary: bool = True,
) -> Path:
    """Writes ``model.xml``/``model.bin`` (channels -> logits) and ``detector.json`` to ``out_dir``.

    Args:
        detector: The detector (any backbone; only BNext has binary convolutions to rewrite).
        out_dir: Output folder, created if needed.
        input_size: (H, W) of the exported network input; the batch size stays dynamic.
        binary: Rewrite binary convolutions into 1-bit BinaryConvolution.

    Returns:
        The path of ``model.xml``.
    """
    ov = _openvino()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    height, width = input_size
    channels = 3 + len(detector.extra_features)
    example = torch.rand(1, channels, height, width)
    model, counts = convert_openvino(_ChannelsModule(detector), example, binary=binary)
    path = out / MODEL_FILE
    ov.save_model(model, path, compress_to_fp16=False)  # fp16 would perturb the float layers
    meta = {
        "format": "openvino",
        "backbone": detector.backbone_name,
        "extra_features": list(detector.extra_features),
        "compat": detector.compat,
        "input_size": [height, width],
        "input_channels": channels,
        "binary_convolutions": counts["binary"],
        "float_fallback_convolutions": counts["float_fallback"],
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def export(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "openvino",
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Exports a ``best.pt`` written by ``bnn.train.fit``.

    Args:
        checkpoint: The checkpoint.
        out_dir: Output folder.
        fmt: Only ``"openvino"``.
        input_size: (H, W); default: the checkpoint's training resolution.

    Returns:
        The path of the exported model file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {FORMATS}")

    detector, config = load_detector(checkpoint, device="cpu")
    size = input_size or (config.resolution, config.resolution)
    return export_openvino(detector, out_dir, size)


class OpenVINODetector:
    """Runs an exported detector: features in PyTorch, the network in OpenVINO.

    Args:
        path: The export folder or its ``model.xml``.
        device: OpenVINO device name.
        num_threads: CPU inference threads (None: OpenVINO's default).
        performance_hint: "LATENCY" or "THROUGHPUT".
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "CPU",
        num_threads: int | None = None,
        performance_hint: str = "LATENCY",
    ) -> None:
        ov = self._ov = _openvino()
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        xml = folder / MODEL_FILE if path.is_dir() else path
        self.meta = json.loads((folder / META_FILE).read_text())
        self.extra_features: tuple[str, ...] = tuple(self.meta["extra_features"])
        self.compat: str = self.meta["compat"]
        self.input_size: tuple[int, int] = tuple(self.meta["input_size"])
        config: dict[str, str] = {"PERFORMANCE_HINT": performance_hint}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = str(num_threads)
        if device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # no bf16/f16 on CPUs that have it
        self.device = device
        self.config = config
        self.core = ov.Core()
        self.model = self.core.read_model(xml)
        # The CPU plugin's BinaryConvolution needs static shapes: one compiled model per batch size.
        self._compiled: dict[int, tuple[object, object]] = {}

    def input_channels(self, images: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> (B, 3 + k, H, W), as ``Detector.input_channels``."""
        return input_channels(images, self.extra_features, self.compat)  # features in PyTorch

    def forward_channels(self, x: Tensor | np.ndarray) -> Tensor:
        """(B, 3 + k, H, W) channels -> (B,) logits."""
        array = x.detach().cpu().float().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float32)
        if tuple(array.shape[2:]) != self.input_size:
            raise ValueError(f"the model was exported for {self.input_size} inputs, got {array.shape[2:]}")
        _, request = self.compiled_for(array.shape[0])
        result = request.infer({0: np.ascontiguousarray(array)})
        return torch.from_numpy(np.array(result[0])).reshape(-1)

    def compiled_for(self, batch_size: int):
        """``(compiled_model, infer_request)`` for a batch size, compiled on first use."""
        if batch_size not in self._compiled:
            model = self.model.clone()
            shape = [batch_size, self.meta["input_channels"], *self.input_size]
            model.reshape({model.inputs[0]: self._ov.PartialShape(shape)})
            compiled = self.core.compile_model(model, self.device, self.config)
            self._compiled[batch_size] = (compiled, compiled.create_infer_request())
        return self._compiled[batch_size]

    def __call__(self, images: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> (B,) logits."""
        with torch.no_grad():
            return self.forward_channels(self.input_channels(images.float().cpu()))

    def predict_proba(self, images: Tensor) -> Tensor:
        """Probability of "fake" per image, (B,)."""
        return torch.sigmoid(self(images))

    def runtime_layer_types(self, batch_size: int = 1) -> Counter:
        """How many nodes of each type the compiled model executes (e.g. ``BinaryConvolution``)."""
        return runtime_layer_types(self.compiled_for(batch_size)[0])


def runtime_layer_types(compiled) -> Counter:
    """Counts the ``layerType`` of the nodes of a compiled model's runtime (executed) graph."""
    return Counter(
        str(op.get_rt_info()["layerType"].astype(str)) for op in compiled.get_runtime_model().get_ordered_ops()
    )


__all__: Sequence[str] = (
    "OpenVINODetector",
    "binarize_convolutions",
    "convert_openvino",
    "export",
    "export_openvino",
    "pack_bits",
    "runtime_layer_types",
)
