"""Measured speed of a trained detector on this host: batch-1 latency and batched throughput.

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, report operation counts only (OPs = FLOPs + BOPs / 64, ``bnn.cost``) and note that a
BNN's real speed needs a specialised engine. This module times the detector on one: the network is
exported by ``bnn.export.export_openvino`` (BNext's binary convolutions become OpenVINO 1-bit
``BinaryConvolution``; a full-precision backbone is plain OpenVINO fp32) and run by
``bnn.export.OpenVINODetector``, the extra channels (``bnn.features``) by PyTorch on the CPU, as
``python -m bnn detect --engine openvino`` runs them.

What is timed, per resolution (all in one process, after ``warmup`` untimed runs):

* ``latency_ms``: batch 1, RGB (1, 3, H, W) in [0, 1] -> logit: extra channels + network, the
  median over ``repeats`` runs. Decoding and resizing an image file are not included (they depend
  on the file, not the detector; ``benchmarks/inference.py`` times them).
* ``latency_network_ms``: the network alone (channels -> logit), timed inside the same loop as
  ``latency_ms``, so ``latency_network_ms <= latency_ms`` always holds (each run's network time is
  part of its end-to-end time, and the median is monotone).
* ``throughput_ips``: batch ``batch`` end to end, images per second from the median batch time.

Inputs are uniform noise: neither the channels nor the engine's time depends on pixel values.
PyTorch and OpenVINO both run with ``threads`` intra-op threads; PyTorch's previous setting is
restored afterwards. Timings are only comparable on one host (``LatencyResult.host``).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnn.detector import Detector
from bnn.export import OpenVINODetector, export_openvino
from bnn.host import cpu_model

LATENCY_BATCH = 32  # the batch of ``throughput_ips``
METRIC_LATENCY = "latency_ms"
METRIC_LATENCY_NETWORK = "latency_network_ms"
METRIC_THROUGHPUT = "throughput_ips"
LATENCY_METRICS = (METRIC_LATENCY, METRIC_LATENCY_NETWORK, METRIC_THROUGHPUT)


def latency_metric_names(resolutions: tuple[int, ...] = ()) -> list[str]:
    """The metrics ``measure`` logs: ``LATENCY_METRICS`` at the cell's own resolution, and for each
    extra resolution ``r`` the same names with ``_<r>px`` before the unit (``latency_224px_ms``)."""
    names = list(LATENCY_METRICS)
    for size in resolutions:
        names += [_at(name, size) for name in LATENCY_METRICS]
    return names


def _at(name: str, size: int) -> str:
    stem, unit = name.rsplit("_", 1)
    return f"{stem}_{size}px_{unit}"


class EngineMissing(RuntimeError):
    """The inference engine (OpenVINO) is not installed; the message says how to install it."""


@dataclass
class LatencyResult:
    """Measured speed of one detector on this host.

    Attributes:
        metrics: Metric name (``latency_metric_names``) -> value; ms or images/s.
        engine: ``"openvino <version> binary"`` (1-bit binary convolutions) or ``"... fp32"``.
        threads: Intra-op threads of PyTorch and OpenVINO during the measurement.
        host: CPU model (``bnn.host.cpu_model``).
        seconds: Wall time of the whole measurement, exports included.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    engine: str = ""
    threads: int = 1
    host: str = ""
    seconds: float = 0.0


def _timed_runs(run, repeats: int, warmup: int) -> list[float]:
    """The seconds ``run()`` returns for ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def _time_resolution(engine, size: int, repeats: int, warmup: int, batch: int) -> tuple[float, float, float]:
    """(latency ms, network ms, throughput images/s) of an ``OpenVINODetector`` at ``size`` px."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    network_times: list[float] = []

    def one() -> float:
        start = time.perf_counter()
        channels = engine.input_channels(image)  # (1, 3 + k, H, W)
        middle = time.perf_counter()
        engine.forward_channels(channels)  # (1,)
        end = time.perf_counter()
        network_times.append(end - middle)
        return end - start

    total = _timed_runs(one, repeats, warmup)
    network = network_times[warmup:]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))

    def batched() -> float:
        start = time.perf_counter()
        engine(images)
        return time.perf_counter() - start

    batch_times = _timed_runs(batched, max(3, repeats // 4), 1)
    return (1e3 * statistics.median(total), 1e3 * statistics.median(network),
            batch / statistics.median(batch_times))


def measure(
    detector: Detector,
    resolution: int,
    extra_resolutions: tuple[int, ...] = (),
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    batch: int = LATENCY_BATCH,
) -> LatencyResult:
    """Exports ``detector`` and times it on this host (see the module docstring).

    Args:
        detector: A trained detector (any device; it is exported from a CPU copy of its weights).
        resolution: The cell's own input size, px; its metrics carry no suffix.
        extra_resolutions: Further sizes (e.g. 224), each exported and timed separately.
        threads: Intra-op threads for PyTorch and OpenVINO (>= 1).
        repeats: Timed batch-1 runs per resolution; the batched runs are ``max(3, repeats // 4)``.
        warmup: Untimed runs before timing.
        batch: Batch size of the throughput measurement.

    Returns:
        A ``LatencyResult``.

    Raises:
        EngineMissing: OpenVINO is not installed.
        ValueError: ``threads``, ``repeats`` or a resolution is below 1.
    """
    if threads < 1 or repeats < 1 or resolution < 1 or any(r < 1 for r in extra_resolutions):
        raise ValueError("threads, repeats and resolutions must be >= 1")
    try:
        import openvino
    except ImportError as err:
        raise EngineMissing("OpenVINO is not installed (pip install openvino)") from err

    started = time.perf_counter()
    if next(detector.parameters()).device.type != "cpu":
        detector = copy.deepcopy(detector).to("cpu")  # the caller's detector stays where it is
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    result = LatencyResult(threads=threads, host=cpu_model())
    try:
        with tempfile.TemporaryDirectory(prefix="bnn-latency-") as tmp:
            timed: dict[int, tuple[float, float, float]] = {}
            for size in dict.fromkeys((resolution, *extra_resolutions)):  # each size once, in order
                folder = Path(tmp) / f"{size}px"
                export_openvino(detector, folder, (size, size))
                engine = OpenVINODetector(folder, num_threads=threads)
                binary = engine.meta["binary_convolutions"] > 0
                result.engine = f"openvino {openvino.__version__.split('-')[0]} {'binary' if binary else 'fp32'}"
                timed[size] = _time_resolution(engine, size, repeats, warmup, batch)
            result.metrics.update(zip(LATENCY_METRICS, timed[resolution], strict=True))
            for size in extra_resolutions:
                result.metrics.update(zip([_at(n, size) for n in LATENCY_METRICS], timed[size], strict=True))
    finally:
        torch.set_num_threads(previous_threads)
    result.seconds = time.perf_counter() - started
    return result


__all__ = (
    "LATENCY_BATCH",
    "LATENCY_METRICS",
    "EngineMissing",
    "LatencyResult",
    "latency_metric_names",
    "measure",
)
