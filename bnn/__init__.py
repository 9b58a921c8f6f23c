"""bnn: BNext binary backbones, FFT/LBP/Sobel input channels, the deepfake detector and its cost.

Reproduces and extends Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary
Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

from bnn import cost, features
from bnn.backbones import BACKBONES, create_backbone, list_backbones
from bnn.detector import Detector, create_detector, load_authors_checkpoint
from bnn.inference import for_inference
from bnn.pretrained import load_pretrained

__all__ = [
    "BACKBONES",
    "Detector",
    "cost",
    "create_backbone",
    "create_detector",
    "features",
    "for_inference",
    "list_backbones",
    "load_authors_checkpoint",
    "load_pretrained",
]
