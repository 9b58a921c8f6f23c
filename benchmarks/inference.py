"""CPU inference speed: BNext-T detector with float-simulated vs 1-bit binary convolutions.

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, motivate binary backbones by their speed. This benchmark measures, in one run and on
the same inputs, latency (batch 1, median of N runs) and throughput (batch B) at 224x224 of:

* BNext-T detector (rgb+fft+lbp) in PyTorch eager (binary convolutions simulated in float),
* the same detector exported by ``bnn.export`` to OpenVINO with BinaryConvolution (1-bit),
* the same export without the binary rewrite (OpenVINO, float +-1 convolutions), for reference,
* full-precision timm ResNet-50 in PyTorch eager and in OpenVINO fp32.

Detector rows time the network only (input channels -> logits); the feature extraction
(fft + lbp in PyTorch, identical for both engines) is timed separately and added in the
end-to-end rows. Weights are random (or ``--checkpoint``): speed does not depend on them;
random BNext weights give huge logits, so the logit check is also printed relative.

    python benchmarks/inference.py [--size 224] [--repeats 20] [--batch 32] [--checkpoint best.pt]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnn.detector import create_detector  # noqa: E402
from bnn.export import OpenVINODetector, export_openvino, runtime_layer_types  # noqa: E402


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux) or platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ov_compile(model, batch: int, channels: int, size: int):
    import openvino as ov

    model = model.clone()
    model.reshape({model.inputs[0]: ov.PartialShape([batch, channels, size, size])})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return compiled, request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 runs per engine (median)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput runs")
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--backbone", default="bnext_tiny")
    parser.add_argument("--checkpoint", help="best.pt to time instead of random weights")
    parser.add_argument("--baseline", default="resnet50", help="timm full-precision baseline")
    args = parser.parse_args(argv)

    import openvino as ov
    import timm

    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; torch threads {threads}; "
          f"torch {torch.__version__}; openvino {ov.__version__}")
    torch.manual_seed(0)
    size, batch = args.size, args.batch
    detector = create_detector(args.backbone, "rgb+fft+lbp").eval()
    name = args.backbone
    if args.checkpoint:
        from bnn.train import load_detector

        detector, _ = load_detector(args.checkpoint, device="cpu")
        name = f"{detector.backbone_name} ({detector.features_label})"
    baseline = timm.create_model(args.baseline, pretrained=False, num_classes=1).eval()
    images = {b: torch.rand(b, 3, size, size) for b in (1, batch)}
    with torch.no_grad():
        channels = {b: detector.input_channels(x) for b, x in images.items()}

    tmp = tempfile.TemporaryDirectory()
    start = time.perf_counter()
    export_openvino(detector, Path(tmp.name) / "binary", (size, size), binary=True)
    export_openvino(detector, Path(tmp.name) / "float", (size, size), binary=False)
    print(f"export of {name} (binary and float): {time.perf_counter() - start:.1f} s")
    engines = {kind: OpenVINODetector(Path(tmp.name) / kind) for kind in ("binary", "float")}
    print(f"binary engine: {engines['binary'].meta['binary_convolutions']} BinaryConvolution in the IR; "
          f"executed by the CPU plugin: {engines['binary'].runtime_layer_types(1)['BinaryConvolution']}")
    with torch.no_grad():
        ref = detector.forward_channels(channels[1])
    diff = (engines["binary"].forward_channels(channels[1]) - ref).abs().max().item()
    print(f"|logit difference| binary engine vs PyTorch: {diff:.3g} (logit {ref.item():.4g}, "
          f"relative {diff / max(ref.abs().item(), 1e-12):.1e})")

    resnet_ov = ov.convert_model(baseline, example_input=(images[1],))
    resnet_compiled = {b: _ov_compile(resnet_ov, b, 3, size) for b in (1, batch)}

    def torch_net(b):
        return lambda: detector.forward_channels(channels[b])

    def ov_net(kind, b):
        engine = engines[kind]
        engine.compiled_for(b)
        return lambda: engine.forward_channels(channels[b])

    def resnet_torch(b):
        return lambda: baseline(images[b])

    def resnet_openvino(b):
        request = resnet_compiled[b][1]
        array = images[b].numpy()
        return lambda: request.infer({0: array})

    rows = [
        (f"{name} PyTorch eager (float-simulated binary)", torch_net),
        (f"{name} OpenVINO binary (BinaryConvolution)", lambda b: ov_net("binary", b)),
        (f"{name} OpenVINO float (+-1 Convolution)", lambda b: ov_net("float", b)),
        (f"{args.baseline} PyTorch eager fp32", resnet_torch),
        (f"{args.baseline} OpenVINO fp32", resnet_openvino),
    ]
    latency, throughput = {}, {}
    with torch.no_grad():
        feature_latency = median_seconds(lambda: detector.input_channels(images[1]), args.repeats)
        feature_batch = median_seconds(lambda: detector.input_channels(images[batch]), args.throughput_repeats, 1)
        for name, make in rows:
            latency[name] = median_seconds(make(1), args.repeats)
            throughput[name] = batch / median_seconds(make(batch), args.throughput_repeats, 1)

    print(f"\n{size}x{size}; latency: batch 1, median of {args.repeats}; throughput: batch {batch}, "
          f"median of {args.throughput_repeats}. Network only (detector: channels -> logit).")
    print(f"{'engine':58} {'latency ms':>11} {'images/s':>9}")
    for name, _ in rows:
        print(f"{name:58} {latency[name] * 1e3:11.2f} {throughput[name]:9.1f}")
    print(f"{'features fft+lbp (PyTorch, both detector engines)':58} {feature_latency * 1e3:11.2f} "
          f"{batch / feature_batch:9.1f}")
    print("\nEnd to end (features + network):")
    for name, _ in rows[:3]:
        lat = latency[name] + feature_latency
        thr = batch / (batch / throughput[name] + feature_batch)
        print(f"{name:58} {lat * 1e3:11.2f} {thr:9.1f}")

    eager, binary, floatov, rn_ov = (rows[i][0] for i in (0, 1, 2, 4))

    def ratio(label, a, b):
        print(f"{label}: latency {latency[b] / latency[a]:.2f}x, throughput {throughput[a] / throughput[b]:.2f}x")

    print("\nSpeed-ups (>1: the first is faster), network only:")
    ratio("OpenVINO binary vs PyTorch eager", binary, eager)
    ratio("OpenVINO binary vs OpenVINO float +-1", binary, floatov)
    ratio(f"OpenVINO binary vs {args.baseline} OpenVINO fp32", binary, rn_ov)
    e2e = {n: latency[n] + feature_latency for n in (eager, binary)}
    print(f"End to end, OpenVINO binary vs PyTorch eager: latency {e2e[eager] / e2e[binary]:.2f}x")
    types = runtime_layer_types(engines["binary"].compiled_for(1)[0])
    print("\nbinary engine runtime graph:", dict(types.most_common(8)))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
