"""CPU inference speed: BNext detectors with float-simulated vs 1-bit binary convolutions.

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, motivate binary backbones by their speed but only count operations. This benchmark
measures, in one run and on the same inputs, latency (batch 1, median of N runs) and throughput
(batch B) at 224x224, for each BNext size given (default BNext-T and BNext-S, rgb+fft+lbp), of:

* the detector as trained, in PyTorch eager (binary convolutions simulated in float),
* its PyTorch inference form (``bnn.inference.for_inference``: sign(w) computed once, plain sign),
* the export by ``bnn.export`` to OpenVINO with BinaryConvolution (1-bit XNOR/popcount),
* the same export without the binary rewrite (OpenVINO, float +-1 convolutions), for reference,

and, once, full-precision timm ResNet-50 in PyTorch eager and in OpenVINO fp32 (the baseline
named in the ratios). Detector rows time the network only (input channels -> logits); the
feature extraction (fft + lbp in PyTorch, identical for every detector row) is timed separately
and added in the end-to-end rows. Weights are random (or ``--checkpoint``): speed does not
depend on them; random weights get their BatchNorm statistics from three training-mode passes
over the benchmark inputs, so that the logit check compares realistic values.

    python benchmarks/inference.py [--backbones bnext_tiny bnext_small] [--repeats 20] [--batch 32]
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnn.detector import create_detector  # noqa: E402
from bnn.export import OpenVINODetector, export_openvino  # noqa: E402
from bnn.inference import for_inference  # noqa: E402


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


def calibrate_batchnorm(detector, channels: torch.Tensor, batch: int = 8) -> None:
    """Sets BatchNorm statistics of a random-weight detector from a few training-mode passes.

    With its initial unit statistics a random BNext gives logits around 1e7, where float rounding
    differences grow chaotically and no engine comparison means anything; speed is unaffected.
    """
    norms = [m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    detector.train()
    with torch.no_grad():
        for start in range(0, len(channels), batch):
            detector.forward_channels(channels[start : start + batch])
    detector.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _detector_rows(detector, label: str, channels: dict, size: int, tmp: Path) -> list:
    """(row name, make(batch) -> callable) for one detector: eager, inference form, OpenVINO x2."""
    start = time.perf_counter()
    for kind in ("binary", "float"):
        export_openvino(detector, tmp / kind, (size, size), binary=kind == "binary")
    engines = {kind: OpenVINODetector(tmp / kind) for kind in ("binary", "float")}
    fast = for_inference(detector)
    print(f"\n{label}: exported (binary and float) in {time.perf_counter() - start:.1f} s; "
          f"{engines['binary'].meta['binary_convolutions']} BinaryConvolution in the IR, "
          f"{engines['binary'].runtime_layer_types(1)['BinaryConvolution']} executed by the CPU plugin "
          f"with {engines['binary'].compiled_for(1)[0].get_property('INFERENCE_NUM_THREADS')} threads")
    with torch.no_grad():
        ref = detector.forward_channels(channels[1])
        for name, out in (("PyTorch inference form", fast.forward_channels(channels[1])),
                          ("OpenVINO binary", engines["binary"].forward_channels(channels[1]))):
            diff = (out - ref).abs().max().item()
            print(f"  |logit difference| {name} vs PyTorch eager: {diff:.3g} "
                  f"(logit {ref.item():.4g}, relative {diff / max(ref.abs().item(), 1e-12):.1e})")

    def engine_row(kind):
        def make(b):
            engines[kind].compiled_for(b)
            return lambda: engines[kind].forward_channels(channels[b])
        return make

    return [
        (f"{label} PyTorch eager (as trained)", lambda b: lambda: detector.forward_channels(channels[b])),
        (f"{label} PyTorch inference form", lambda b: lambda: fast.forward_channels(channels[b])),
        (f"{label} OpenVINO binary (1-bit)", engine_row("binary")),
        (f"{label} OpenVINO float +-1", engine_row("float")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 runs per row (median)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput runs")
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["bnext_tiny", "bnext_small"])
    parser.add_argument("--checkpoint", help="best.pt to time instead of random-weight --backbones")
    parser.add_argument("--baseline", default="resnet50", help="timm full-precision baseline")
    args = parser.parse_args(argv)

    import openvino as ov
    import timm

    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}; "
          f"OpenVINO: LATENCY hint; torch {torch.__version__}; "
          f"openvino {ov.__version__}")
    torch.manual_seed(0)
    size, batch = args.size, args.batch
    if args.checkpoint:
        from bnn.train import load_detector

        detector, _ = load_detector(args.checkpoint, device="cpu")
        detectors = {f"{detector.backbone_name} ({detector.features_label})": detector.eval()}
    else:
        detectors = {name: create_detector(name, "rgb+fft+lbp").eval() for name in args.backbones}
    features = next(iter(detectors.values()))
    baseline = timm.create_model(args.baseline, pretrained=False, num_classes=1).eval()
    images = {b: torch.rand(b, 3, size, size) for b in (1, batch)}
    with torch.no_grad():
        channels = {b: features.input_channels(x) for b, x in images.items()}

    if not args.checkpoint:
        for detector in detectors.values():
            calibrate_batchnorm(detector, channels[batch][:24])
    tmp = tempfile.TemporaryDirectory()
    rows = []
    for i, (label, detector) in enumerate(detectors.items()):
        rows += _detector_rows(detector, label, channels, size, Path(tmp.name) / str(i))
    baseline_ov = ov.convert_model(baseline, example_input=(images[1],))
    baseline_compiled = {b: _ov_compile(baseline_ov, b, 3, size) for b in (1, batch)}

    def baseline_openvino(b):
        request, array = baseline_compiled[b][1], images[b].numpy()
        return lambda: request.infer({0: array})

    baseline_torch_row = f"{args.baseline} PyTorch eager fp32"
    baseline_ov_row = f"{args.baseline} OpenVINO fp32"
    rows += [(baseline_torch_row, lambda b: lambda: baseline(images[b])), (baseline_ov_row, baseline_openvino)]

    latency, throughput = {}, {}
    with torch.inference_mode():
        feature_latency = median_seconds(lambda: features.input_channels(images[1]), args.repeats)
        feature_batch = median_seconds(lambda: features.input_channels(images[batch]), args.throughput_repeats, 1)
        for name, make in tqdm(rows, desc="timing", unit="row", disable=not sys.stderr.isatty()):
            latency[name] = median_seconds(make(1), args.repeats)
            throughput[name] = batch / median_seconds(make(batch), args.throughput_repeats, 1)

    width = max(len(name) for name, _ in rows) + 2
    print(f"\n{size}x{size}; latency: batch 1, median of {args.repeats}; throughput: batch {batch}, "
          f"median of {args.throughput_repeats}. Network only (detector: channels -> logit).")
    print(f"{'row':{width}} {'latency ms':>11} {'images/s':>9}")
    for name, _ in rows:
        print(f"{name:{width}} {latency[name] * 1e3:11.2f} {throughput[name]:9.1f}")
    print(f"{'features fft+lbp (PyTorch, every detector row)':{width}} {feature_latency * 1e3:11.2f} "
          f"{batch / feature_batch:9.1f}")
    print("\nEnd to end (features + network):")
    for name, _ in rows[:-2]:
        lat = latency[name] + feature_latency
        thr = batch / (batch / throughput[name] + feature_batch)
        print(f"{name:{width}} {lat * 1e3:11.2f} {thr:9.1f}")

    def ratio(a, b):
        print(f"  {a} vs {b}: latency {latency[b] / latency[a]:.2f}x, throughput {throughput[a] / throughput[b]:.2f}x")

    print("\nSpeed-ups (>1: the first is faster), network only:")
    for label in detectors:
        binary = f"{label} OpenVINO binary (1-bit)"
        for other in (f"{label} PyTorch eager (as trained)", f"{label} PyTorch inference form",
                      f"{label} OpenVINO float +-1", baseline_ov_row, baseline_torch_row):
            ratio(binary, other)
        ratio(f"{label} PyTorch inference form", f"{label} PyTorch eager (as trained)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
