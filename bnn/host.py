"""The machine a measurement ran on: CPU model, core and thread counts, library versions.

Timings are only comparable on the same host, so every measured speed (``bnn.latency``, the
scripts under ``benchmarks/``) says where it was taken. The CPU model comes from
``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else the machine architecture.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU model name, e.g. ``"AMD EPYC 7B13"``; never empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_summary() -> str:
    """One line for logs: CPU model, logical cores and PyTorch's intra-op threads."""
    return f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}"


__all__ = ("cpu_model", "host_summary")
