"""Where a detector runs: device selection, mixed precision and seeding.

``resolve_device("auto")`` picks CUDA when available; ``amp_context`` turns on autocast on CUDA
(bfloat16 where supported, else float16 with a gradient scaler in ``bnn.train``) and leaves CPU
runs in float32, so CPU results repeat exactly for a seed (``seed_everything``).
"""

from __future__ import annotations

import random
from contextlib import AbstractContextManager

import numpy as np
import torch

__all__ = ["amp_context", "resolve_device", "seed_everything"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; any other name is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_context(device: torch.device, enabled: bool) -> AbstractContextManager:
    """Autocast for a forward pass: bfloat16 (or float16) on CUDA when ``enabled``, else off."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
