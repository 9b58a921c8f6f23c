"""The authors' per-image feature pipeline (OpenCV, NumPy, scikit-image): the reference that
``bnn.features`` is tested against (``tests/test_features.py``) and timed against
(``benchmarks/features.py``).

Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks",
CVPRW 2024, compute the extra channels image by image: ``(x * 255).astype(np.uint8)``,
``cv2.cvtColor(..., cv2.COLOR_BGR2GRAY)``, ``cv2.Sobel`` (ksize 7, x and y) and ``sqrt``,
``np.fft.fft2`` + ``fftshift`` + ``log``, and ``skimage.feature.local_binary_pattern(grey, 3, 6,
"uniform")``. ``compat="exact"`` is the same pipeline with rounding and ``COLOR_RGB2GRAY`` (what
``bnn.features`` computes by default).

Why here: OpenCV is a dev dependency (``pyproject.toml``'s ``dev`` extra), so the reference must
not be a module of a package (``bnn``): a plain install would lack ``cv2`` and deptry (run by
``tests/test_dependencies.py``) would report a dev dependency imported by the package. Of the two
dev-only folders, ``benchmarks/`` is the one deptry reads and it imported OpenCV and scikit-image
already, so this module needs no new declaration; imported as ``benchmarks.feature_reference``,
deptry sees a local folder of the repository. (A module under ``tests/``, imported by the
benchmark under its bare name, would be an undeclared package to deptry, as ``pg_mlflow`` was
until it was listed in ``known_first_party``.) ``benchmarks/`` has no ``__init__.py`` (a
namespace package) and is not installed: the benchmark puts the repository root on ``sys.path``
as ``benchmarks/inference.py`` does, and ``tests/conftest.py`` does the same for the tests.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.feature import local_binary_pattern

COMPAT_MODES = ("exact", "authors")

__all__ = ["ref_fft", "ref_grey", "ref_lbp", "ref_lbp_codes", "ref_sobel", "reference", "to_uint8"]


def to_uint8(image_hwc: np.ndarray, compat: str) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] -> uint8: truncated (``authors``) or rounded and clipped."""
    if compat == "authors":
        return (image_hwc * 255).astype(np.uint8)
    if compat == "exact":
        return np.clip(np.round(image_hwc * 255), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown compat {compat!r}; valid values: {', '.join(COMPAT_MODES)}")


def ref_grey(image_hwc: np.ndarray, compat: str) -> np.ndarray:
    """(H, W) uint8 grey levels; ``authors`` applies BGR2GRAY to RGB data, as the authors do."""
    code = cv2.COLOR_BGR2GRAY if compat == "authors" else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(to_uint8(image_hwc, compat), code)


def ref_sobel(grey: np.ndarray) -> np.ndarray:
    """``sqrt(Gx^2 + Gy^2) / 255`` with OpenCV's 7-tap Sobel, float64."""
    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=7)
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=7)
    return np.sqrt(gx**2 + gy**2) / 255


def ref_fft(grey: np.ndarray) -> np.ndarray:
    """``20 ln(|fftshift(fft2(grey))| + 1e-9) / 255``, float64."""
    return 20 * np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey))) + 1e-9) / 255


def ref_lbp_codes(grey: np.ndarray) -> np.ndarray:
    """scikit-image's uniform LBP codes (P = 3, R = 6), float64 in 0..3."""
    return local_binary_pattern(grey, 3, 6, method="uniform")


def ref_lbp(grey: np.ndarray) -> np.ndarray:
    """The LBP channel: codes / 255."""
    return ref_lbp_codes(grey) / 255


def reference(images_hwc: np.ndarray, compat: str = "authors") -> np.ndarray:
    """(B, 3, H, W) stacked [sobel, fft, lbp] of (B, H, W, 3) images, computed image by image."""
    out = []
    for image in images_hwc:
        grey = ref_grey(image, compat)
        out.append(np.stack([ref_sobel(grey), ref_fft(grey), ref_lbp(grey)]))
    return np.stack(out)
