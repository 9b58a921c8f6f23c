"""Knowledge distillation for the one-logit detector: the loss and the teacher.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (arXiv:1503.02531):
the student also learns the teacher's soft probabilities at a temperature T, that term scaled by
T^2 so its gradients keep their size when T changes. BNext (Guo et al., 2023; hpi-xnor/BNext
``utils/KD_loss.py``) and ReActNet (Liu et al., ECCV 2020), whose distribution loss BNext reuses,
train binary networks with the cross-entropy of the student's log-softmax against the detached
softmax of a full-precision teacher, at T = 1 and without a label term.

For a detector with one logit z (fake = 1) the two-class softmax of (0, z / T) is
(1 - sigmoid(z / T), sigmoid(z / T)), so that cross-entropy is exactly a binary cross-entropy with
logits against the teacher's sigmoid:

    KD(z, t) = T^2 * mean_b BCE_with_logits(z_b / T, sigmoid(t_b / T))
    dKD/dz_b = T * (sigmoid(z_b / T) - sigmoid(t_b / T)) / B       (sign: towards the teacher)
    loss     = (1 - alpha) * BCE_with_logits(z, y; pos_weight) + alpha * KD(z, t)

The label term keeps ``fit``'s class weighting (pos_weight = #real / #fake); the distillation
term is unweighted, as in Hinton et al. and BNext. KD is a cross-entropy, as in BNext, not a KL
divergence: it is smallest, not 0, at z = t (the two differ by the teacher's entropy, which does
not depend on z, so their gradients are equal). Validation and test losses stay plain BCE.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bnn.backbones import BACKBONES
from bnn.checkpoint import load_detector
from bnn.config import DistillConfig, FitConfig
from bnn.detector import Detector

log = logging.getLogger(__name__)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KD term: ``T^2 * BCE_with_logits(z / T, sigmoid(t / T))``, mean over the batch.

    Args:
        student_logits: (B,) student logits z (fake = 1).
        teacher_logits: (B,) teacher logits t; detached here (no gradient reaches the teacher).
        temperature: T > 0.

    Returns:
        A scalar tensor.
    """
    target = torch.sigmoid(teacher_logits.detach().float() / temperature)  # (B,) soft probabilities
    soft = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, target)
    return soft * temperature**2


def mix_distillation(label_loss: Tensor, student_logits: Tensor, teacher_logits: Tensor, config: DistillConfig) -> Tensor:
    """``(1 - alpha) * label_loss + alpha * KD``; ``label_loss`` is the BCE on the labels."""
    kd = distillation_loss(student_logits, teacher_logits, config.temperature)
    return (1 - config.alpha) * label_loss + config.alpha * kd


def load_teacher(config: FitConfig, device: torch.device) -> Detector:
    """The teacher of ``config.distill``: its detector in eval mode, frozen, on ``device``.

    Raises:
        FileNotFoundError: The checkpoint does not exist (yet).
        ValueError: It is not a ``fit`` checkpoint, or its backbone is binary.
    """
    distill = config.distill
    path = Path(distill.teacher)
    if not path.is_file():
        origin = (f"the study cell {distill.teacher_id}, which must finish before its students"
                  if distill.teacher_id else "`python -m bnn train` (or a study cell) for a full-precision backbone")
        raise FileNotFoundError(f"distill.teacher: teacher checkpoint '{path}' not found; it is the best.pt "
                                f"written by {origin}")
    teacher, teacher_config = load_detector(path, str(device))
    spec = BACKBONES.get(teacher_config.backbone)
    if spec.binary:
        raise ValueError(f"distill.teacher: '{path}' is a {spec.display_name} detector; a teacher must be "
                         f"full precision (one of: {', '.join(n for n in BACKBONES.names() if not BACKBONES.get(n).binary)})")
    if teacher_config.resolution != config.resolution:
        log.warning("teacher %s was trained at %d px, the student trains at %d px",
                    path, teacher_config.resolution, config.resolution)
    log.info("distilling from %s (%s %s, T=%g, alpha=%g)", path, spec.display_name, teacher_config.features,
             distill.temperature, distill.alpha)
    return teacher.requires_grad_(False).eval()


@torch.no_grad()
def teacher_logits(teacher: Detector, images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B,) teacher logits, float32, without a graph."""
    return teacher(images).float()
