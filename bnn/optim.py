"""The optimisation recipe of a detector: AdamW parameter groups and the learning-rate schedule.

The paper's recipe (Lanzino et al., CVPRW 2024) is AdamW with a linear decay over 5 epochs; BNext
(Guo et al., 2022) and ReActNet (Liu et al., ECCV 2020) train binary networks with a cosine schedule,
a warm-up and no weight decay on the latent binary weights. ``FitConfig`` selects among them.
"""

from __future__ import annotations

import math

from bnn.backbones.binary import binary_layers
from bnn.config import FitConfig
from bnn.detector import Detector

__all__ = ["lr_at", "parameter_groups", "per_step_lr"]


def lr_at(config: FitConfig, progress: float) -> float:
    """Learning rate after ``progress`` epochs (a float: epoch + fraction of its batches done).

    ``linear`` (the paper's LinearLR, stepped once per epoch): ``lr`` at epoch 0 to ``min_lr`` at
    epoch ``lr_decay_epochs``, then flat. ``cosine`` (Loshchilov & Hutter, SGDR; BNext's and
    ReActNet's schedule), per step: from ``lr`` to ``min_lr`` over ``epochs``. Either one starts
    with a linear warm-up from 0 over ``warmup_epochs``, per step.
    """
    if config.warmup_epochs > 0 and progress < config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    if config.lr_schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1e-9)
        t = min(max(progress - config.warmup_epochs, 0.0) / span, 1.0)
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t))
    t = min(math.floor(progress), config.lr_decay_epochs) / config.lr_decay_epochs
    return config.lr + t * (config.min_lr - config.lr)


def per_step_lr(config: FitConfig) -> bool:
    """Whether the learning rate changes within an epoch (cosine schedule or a warm-up)."""
    return config.lr_schedule != "linear" or config.warmup_epochs > 0


def parameter_groups(model: Detector, config: FitConfig) -> list[dict]:
    """AdamW groups: latent binary weights get ``binary_weight_decay`` when it is set.

    Weight decay pulls latent weights towards 0, where sign flips are cheapest, so BNN practice
    (ReActNet, BNext) sets it to 0 for them; ``None`` keeps one group with ``weight_decay``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.binary_weight_decay is None:
        return [{"params": trainable, "weight_decay": config.weight_decay}]
    binary = {id(w) for w in (m.latent_weight() for m in binary_layers(model)) if w is not None}
    return [
        {"params": [p for p in trainable if id(p) not in binary], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if id(p) in binary], "weight_decay": config.binary_weight_decay},
    ]
