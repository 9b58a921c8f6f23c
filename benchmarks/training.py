"""Training and evaluation throughput (images/s) of detectors on this machine.

Measured, not asserted: prints images per second for a training step (forward, backward, AdamW)
and for inference (no grad), per backbone and resolution, on random inputs, with the features
computed inside the detector as in ``bnn.train.fit``.

    python benchmarks/training.py                                  # BNext-T at 64 and 224 px
    python benchmarks/training.py --backbones bnext_tiny resnet50 --sizes 64 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.results

from benchmarks.results import RECORD_HELP, recorded  # noqa: E402
from bnn import create_detector  # noqa: E402
from bnn.device import resolve_device  # noqa: E402
from bnn.host import cpu_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(backbone: str, size: int, batch: int, steps: int, features: str, device: torch.device) -> tuple[float, float]:
    """(train images/s, eval images/s), median over ``steps`` after one warm-up step."""
    torch.manual_seed(0)
    model = create_detector(backbone, features).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    model.train()
    for i in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        with amp:
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    train = batch / sorted(times)[len(times) // 2]
    times = []
    model.eval()
    with torch.no_grad():
        for i in range(steps + 1):
            _sync(device)
            start = time.perf_counter()
            with amp:
                model(x)
            _sync(device)
            if i:
                times.append(time.perf_counter() - start)
    return train, batch / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["bnext_tiny"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--features", default="rgb+fft+lbp")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--record", action="store_true", help=RECORD_HELP)
    args = parser.parse_args()
    with recorded("training", args.record):
        device = resolve_device(args.device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        print(f"device: {device} ({where}), torch threads: {torch.get_num_threads()}, batch {args.batch}, "
              f"features {args.features}")
        print(f"{'backbone':<14}{'size':>6}{'train img/s':>14}{'eval img/s':>13}")
        for backbone in args.backbones:
            for size in args.sizes:
                train, evaluation = measure(backbone, size, args.batch, args.steps, args.features, device)
                print(f"{backbone:<14}{size:>6}{train:>14.1f}{evaluation:>13.1f}")


if __name__ == "__main__":
    main()
