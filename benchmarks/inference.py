"""CPU inference speed: BNext detectors with float-simulated vs 1-bit binary convolutions,
network only, end to end from JPEG files, and the ``python -m bnn detect`` command itself.

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, motivate binary backbones by their speed but only count operations. This benchmark
measures, in one run and on the same inputs, at 224x224 (``--size``):

1. Network only (input channels -> logits): latency (batch 1, median of ``--repeats`` runs after
   two warm-up runs) and throughput (batch ``--batch``, median of ``--throughput-repeats``), for
   each BNext size given (default BNext-T and BNext-S, rgb+fft+lbp), of

   * the detector as trained, in PyTorch eager (binary convolutions simulated in float),
   * its PyTorch inference form (``bnn.inference.for_inference``: sign(w) computed once, plain
     sign), which is what ``python -m bnn detect --engine torch`` runs,
   * the export by ``bnn.export`` to OpenVINO with BinaryConvolution (1-bit XNOR/popcount), which
     is what ``detect --engine openvino`` runs,
   * the same export without the binary rewrite (OpenVINO, float +-1 convolutions), for reference,

   and, once, full-precision timm ResNet-50 (``--baseline``) in PyTorch eager and in OpenVINO fp32.
   The feature extraction (fft + lbp, ``bnn.features.extract``: the fused CPU kernels, the same for every detector row) is timed alone.
2. End to end, for the first detector: what ``detect`` does per image, with the very functions it
   calls: decode (``bnn.data.load_rgb``, Pillow), resize (``bnn.data.build_transform(size,
   train=False)``: resize to size + size // 8, centre crop, float tensor), channels
   (``input_channels``: rgb + fft + lbp in PyTorch) and network (``forward_channels`` and the
   sigmoid of ``predict_proba``), under ``torch.no_grad`` as in ``predict_proba``. Latency is batch 1
   (median over ``--repeats`` images after two warm-up images), throughput batch ``--batch``; each
   stage is timed inside the same runs, so the breakdown (median ms per image) shows where the time
   goes. Rows: the binary engine, the PyTorch inference form and PyTorch eager.
3. The ``detect`` command on a folder of ``--images`` JPEG files (default 200, written to a
   temporary folder), run in-process through ``bnn.__main__.main`` (``--detect-subprocess``: as
   ``python -m bnn detect`` in a child process, which adds interpreter start-up and imports), once
   with ``--engine openvino`` on the binary export and once with ``--engine torch`` on a ``best.pt``
   of the same weights; wall time includes loading (and compiling) the model, stdout is captured,
   and the two engines' probabilities are compared.

Inputs are natural photographs: random crops of scikit-image's bundled photos (the ones
``bnn.data.synthetic`` uses), ``--jpeg-size`` square (default 256), saved as JPEG quality
``--jpeg-quality`` (default 90); the network rows use the first of them, decoded and preprocessed as
``detect`` does. Weights are random (or ``--checkpoint``): speed does not depend on them; random
weights get their BatchNorm statistics from three training-mode passes over the benchmark inputs,
so that the logit checks compare realistic values. Ratios are printed against the baseline named
in each line, all from this run.

    python benchmarks/inference.py [--backbones bnext_tiny bnext_small] [--repeats 20] [--batch 32]
                                   [--images 200] [--no-detect] [--detect-subprocess]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from benchmarks.results import RECORD_HELP, recorded  # noqa: E402
from bnn.__main__ import main as bnn_main  # noqa: E402
from bnn.checkpoint import load_detector  # noqa: E402
from bnn.config import FitConfig  # noqa: E402
from bnn.data import build_transform, load_rgb  # noqa: E402
from bnn.data.synthetic import _load_photos, _sample_patches  # noqa: E402
from bnn.detector import create_detector  # noqa: E402
from bnn.export import OpenVINODetector, export_openvino  # noqa: E402
from bnn.host import cpu_model  # noqa: E402
from bnn.inference import for_inference  # noqa: E402

STAGES = ("decode", "resize", "channels", "network")


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
    """Sets BatchNorm statistics of a random-weight detector from a few training-mode passes, and
    draws its final Linear layer when it is zero-initialised (``head="bn_linear"``).

    With its initial unit statistics a random BNext gives logits around 1e7, where float rounding
    differences grow chaotically and no engine comparison means anything; a zero head gives logit
    0 for every image, which no comparison can fail. Speed is unaffected.
    """
    if not detector.fc.weight.any():
        with torch.no_grad():
            torch.nn.init.normal_(detector.fc.weight, std=detector.fc.in_features**-0.5)
    norms = [m for m in detector.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
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


def write_jpegs(folder: Path, count: int, side: int, quality: int, seed: int = 0) -> list[Path]:
    """``count`` random crops of scikit-image's photographs (``bnn.data.synthetic``'s sources),
    ``side`` x ``side``, as JPEG files of the given quality; returns their paths, sorted."""
    patches, _ = _sample_patches(_load_photos(), count, side, torch.Generator().manual_seed(seed))
    arrays = (patches.permute(0, 2, 3, 1) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(arrays):
        paths.append(folder / f"img{i:04d}.jpg")
        Image.fromarray(array, mode="RGB").save(paths[-1], quality=quality)
    return paths


def _detector_rows(detector, label: str, channels: dict, size: int, tmp: Path) -> tuple[list, dict]:
    """(row name, make(batch) -> callable) for one detector: eager, inference form, OpenVINO x2;
    and the runners ``{"eager", "inference", "binary", "binary_dir"}`` for the end-to-end rows."""
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

    rows = [
        (f"{label} PyTorch eager (as trained)", lambda b: lambda: detector.forward_channels(channels[b])),
        (f"{label} PyTorch inference form", lambda b: lambda: fast.forward_channels(channels[b])),
        (f"{label} OpenVINO binary (1-bit)", engine_row("binary")),
        (f"{label} OpenVINO float +-1", engine_row("float")),
    ]
    runners = {"eager": detector, "inference": fast, "binary": engines["binary"], "binary_dir": tmp / "binary"}
    return rows, runners


def end_to_end(model, paths: list[Path], transform, batch: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per image of each stage of ``detect`` and of their sum, over ``repeats`` runs
    of ``batch`` files each (after ``warmup`` runs), cycling through ``paths``.

    The stages are ``detect``'s own calls: ``load_rgb`` (decode), the evaluation transform
    (resize, centre crop, to float), ``model.input_channels`` (fft + lbp) and
    ``model.forward_channels`` + sigmoid (``predict_proba``'s network part), under no_grad.
    """
    times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for run in range(warmup + repeats):
        start = run * batch
        chunk = [paths[(start + i) % len(paths)] for i in range(batch)]
        t0 = time.perf_counter()
        pictures = [load_rgb(p) for p in chunk]
        t1 = time.perf_counter()
        images = torch.stack([transform(p) for p in pictures])
        t2 = time.perf_counter()
        with torch.no_grad():
            channels = model.input_channels(images)
            t3 = time.perf_counter()
            torch.sigmoid(model.forward_channels(channels).float()).tolist()
        t4 = time.perf_counter()
        if run >= warmup:
            for stage, seconds in zip((*STAGES, "total"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                times[stage].append(seconds / batch)
    return {stage: statistics.median(values) for stage, values in times.items()}


def run_detect(folder: Path, checkpoint: Path, engine: str, batch: int, subprocess_: bool) -> tuple[float, list[str]]:
    """Wall seconds of ``detect folder --json`` and its stdout lines (in-process or a child process)."""
    argv = ["detect", str(folder), "--checkpoint", str(checkpoint), "--engine", engine, "--json",
            "--batch-size", str(batch), "--device", "cpu"]
    if subprocess_:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bnn", *argv], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
        return time.perf_counter() - start, done.stdout.splitlines()
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = bnn_main(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"detect exited with {status}")
    return seconds, out.getvalue().splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="input side (default 224, or the checkpoint's resolution)")
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 runs per row (median)")
    parser.add_argument("--batch", type=int, default=32,
                        help="batch size of the throughput runs and detect's --batch-size (its default, 32)")
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["bnext_tiny", "bnext_small"])
    parser.add_argument("--checkpoint", help="best.pt to time instead of random-weight --backbones")
    parser.add_argument("--baseline", default="resnet50", help="timm full-precision baseline")
    parser.add_argument("--images", type=int, default=200, help="JPEG files in the detect folder")
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the JPEG files")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end rows")
    parser.add_argument("--no-detect", action="store_true", help="skip the detect command runs")
    parser.add_argument("--detect-subprocess", action="store_true",
                        help="run detect as `python -m bnn detect` in a child process (default: in-process main)")
    parser.add_argument("--record", action="store_true", help=RECORD_HELP)
    args = parser.parse_args(argv)
    with recorded("inference", args.record):

        import openvino as ov
        import timm

        print(f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}; "
              f"OpenVINO: LATENCY hint; torch {torch.__version__}; openvino {ov.__version__}; "
              f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        torch.manual_seed(0)
        config = None
        if args.checkpoint:
            detector, config = load_detector(args.checkpoint, device="cpu")
            detectors = {f"{detector.backbone_name} ({detector.features_label})": detector.eval()}
        else:
            detectors = {name: create_detector(name, "rgb+fft+lbp").eval() for name in args.backbones}
        size = args.size or (config.resolution if config else 224)
        batch = args.batch
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name) / "jpeg"
        paths = write_jpegs(folder, max(args.images, batch), args.jpeg_size, args.jpeg_quality)
        transform = build_transform(size, train=False)  # detect's preprocessing
        decoded = torch.stack([transform(load_rgb(p)) for p in paths[:batch]])
        print(f"inputs: {len(paths)} crops of scikit-image photographs, {args.jpeg_size}x{args.jpeg_size} JPEG "
              f"quality {args.jpeg_quality} ({sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB "
              f"each on average), preprocessed as detect does to {size}x{size}")
        features = next(iter(detectors.values()))
        baseline = timm.create_model(args.baseline, pretrained=False, num_classes=1).eval()
        images = {1: decoded[:1], batch: decoded}
        with torch.no_grad():
            channels = {b: features.input_channels(x) for b, x in images.items()}

        if not args.checkpoint:
            for detector in detectors.values():
                calibrate_batchnorm(detector, channels[batch][:24])
        rows, runners = [], []
        for i, (label, detector) in enumerate(detectors.items()):
            detector_rows, detector_runners = _detector_rows(detector, label, channels, size, Path(tmp.name) / str(i))
            rows += detector_rows
            runners.append(detector_runners)
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
        print(f"{'features fft+lbp (extract, every detector row)':{width}} {feature_latency * 1e3:11.2f} "
              f"{batch / feature_batch:9.1f}")

        def ratio(a, b):
            print(f"  {a} vs {b}: latency {latency[b] / latency[a]:.2f}x, throughput {throughput[a] / throughput[b]:.2f}x")

        print("\nSpeed-ups (>1: the first is faster), network only:")
        for label in detectors:
            binary = f"{label} OpenVINO binary (1-bit)"
            for other in (f"{label} PyTorch eager (as trained)", f"{label} PyTorch inference form",
                          f"{label} OpenVINO float +-1", baseline_ov_row, baseline_torch_row):
                ratio(binary, other)
            ratio(f"{label} PyTorch inference form", f"{label} PyTorch eager (as trained)")

        label, run = next(iter(detectors)), runners[0]
        engines = {f"{label} OpenVINO binary (1-bit)": run["binary"],
                   f"{label} PyTorch inference form": run["inference"],
                   f"{label} PyTorch eager (as trained)": run["eager"]}
        binary_name, inference_name, eager_name = engines
        if not args.no_end_to_end:
            one, many = {}, {}
            for name, model in tqdm(engines.items(), desc="end to end", unit="row", disable=not sys.stderr.isatty()):
                one[name] = end_to_end(model, paths, transform, 1, args.repeats, 2)
                many[name] = end_to_end(model, paths, transform, batch, args.throughput_repeats, 1)
            print(f"\nEnd to end, {args.jpeg_size}x{args.jpeg_size} JPEG file -> probability, as detect "
                  f"computes it: latency = batch 1, median of {args.repeats} files; throughput = batch {batch}, "
                  f"median of {args.throughput_repeats}; stages in median ms per image.")
            head = "".join(f"{stage:>9}" for stage in STAGES)
            print(f"{'row':{width}} {'batch':>5} {head} {'total ms':>9} {'images/s':>9}")
            for name in engines:
                for b, result in ((1, one[name]), (batch, many[name])):
                    stages = "".join(f"{result[stage] * 1e3:9.2f}" for stage in STAGES)
                    print(f"{name:{width}} {b:5d} {stages} {result['total'] * 1e3:9.2f} {1 / result['total']:9.1f}")
            print("\nSpeed-ups end to end (>1: the first is faster):")
            for other in (eager_name, inference_name):
                print(f"  {binary_name} vs {other}: latency {one[other]['total'] / one[binary_name]['total']:.2f}x, "
                      f"throughput {many[other]['total'] / many[binary_name]['total']:.2f}x")

        if not args.no_detect:
            detect_folder = Path(tmp.name) / "detect"
            detect_folder.mkdir()
            for p in paths[: args.images]:
                (detect_folder / p.name).symlink_to(p)
            checkpoint = Path(args.checkpoint) if args.checkpoint else Path(tmp.name) / "best.pt"
            if not args.checkpoint:
                detector = next(iter(detectors.values()))
                saved = FitConfig(backbone=detector.backbone_name, features=detector.features_label, resolution=size)
                torch.save({"model": detector.state_dict(), "config": saved.model_dump()}, checkpoint)
            how = "`python -m bnn detect` child process" if args.detect_subprocess else "in-process bnn.__main__.main"
            print(f"\npython -m bnn detect <folder of {args.images} JPEG files> --json --batch-size {batch} "
                  f"({how}; wall time including model loading and compilation):")
            speed, probs = {}, {}
            for engine, source, name in (("openvino", run["binary_dir"], binary_name),
                                         ("torch", checkpoint, inference_name)):
                seconds, lines = run_detect(detect_folder, source, engine, batch, args.detect_subprocess)
                rows_out = [json.loads(line) for line in lines if line.startswith("{")]
                if len(rows_out) != args.images:
                    raise RuntimeError(f"detect --engine {engine} printed {len(rows_out)} predictions for {args.images} files")
                probs[engine] = [row["prob_fake"] for row in rows_out]
                speed[engine] = args.images / seconds
                print(f"  --engine {engine:8} ({name}): {seconds:6.2f} s, {speed[engine]:6.1f} images/s")
            diff = max(abs(a - b) for a, b in zip(probs["openvino"], probs["torch"], strict=True))
            print(f"  detect --engine openvino vs --engine torch: {speed['openvino'] / speed['torch']:.2f}x images/s; "
                  f"max |probability difference| {diff:.2g}")
        print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        tmp.cleanup()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
