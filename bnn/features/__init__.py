"""Hand-crafted input channels (Sobel magnitude, FFT log-magnitude, LBP) as batched torch ops.

Reproduces the extra input channels of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024, which the authors compute per image with
OpenCV, NumPy and scikit-image and concatenate to the RGB input in the order magnitude, fft, lbp.
Here every feature is a batched torch function that runs on the input's device (CPU or CUDA) with
no per-image Python loop and no NumPy round trip, and reproduces the reference libraries:

* ``sobel`` (alias ``magnitude``): ``sqrt(Gx^2 + Gy^2) / 255`` with ``Gx``, ``Gy`` the 7x7 Sobel
  derivatives of ``cv2.Sobel(Y, cv2.CV_64F, 1, 0, ksize=7)`` / ``(0, 1)``, border reflect-101.
  ``Y`` is integer-valued, so ``Gx + Gy`` and ``Gx - Gy`` (a Roberts cross on the binomially
  smoothed image, at most 2 * 255 * 32 * 32 in magnitude, every partial sum < 2**24) are
  computed exactly in float32; only the tail (squares, sum, square root, scale) rounds
  (relative error < 3e-7, see ``_sobel``).
* ``fft``: ``20 * ln(|fftshift(fft2(Y))| + 1e-9) / 255`` as in NumPy. The spectrum is computed in
  float64 with a real-input ``rfft2`` (the other half is rebuilt by Hermitian symmetry), on the
  image minus its mean (an integer), modulated by (-1)^(i + j) for even sizes so that it comes
  out already fftshifted, with the DC term set to the exact pixel sum; float32 FFTs are too
  imprecise for the small coefficients. Everything after the transform (magnitude, log) is
  float32, within ~2e-8 absolute of the float64 values (see ``_fft``).
* ``lbp``: ``skimage.feature.local_binary_pattern(Y, P=3, R=6, method="uniform") / 255`` with
  identical codes (see ``_lbp`` for the derivation).

Grey levels (``grey_levels``), selected by ``compat``:

* ``"exact"``: ``u = round(255 x)`` per channel (half to even, clamped to [0, 255]) and ``Y`` equal
  to ``cv2.cvtColor(u, cv2.COLOR_RGB2GRAY)``. OpenCV does *not* compute
  ``round(0.299 R + 0.587 G + 0.114 B)`` (22906 of the 256**3 colours differ) nor the 14-bit
  ``(4899 R + 9617 G + 1868 B + 8192) >> 14`` (43864 differ): its 8-bit path (4.x and 5.x) uses
  15-bit fixed point, ``Y = (9798 R + 19235 G + 3735 B + 16384) >> 15``, which matches
  ``cv2.cvtColor`` on all 256**3 colours (checked against the installed OpenCV, and in the tests).
  With the weights pre-scaled by 2**-15 every partial sum fits float32's 24-bit mantissa, so it is
  evaluated exactly in float32 as ``floor(w . u + 0.5)`` on any device.
* ``"authors"``: the authors' released pipeline, ``(x * 255).astype(np.uint8)`` (truncation, not
  rounding) followed by ``cv2.cvtColor(u, cv2.COLOR_BGR2GRAY)`` applied to RGB data, so the
  0.114 weight lands on red and 0.299 on blue: ``Y = (3735 R + 19235 G + 9798 B + 16384) >> 15``.
  Use it to evaluate their checkpoints with the preprocessing they were trained with. Values
  outside [0, 1] are clamped (the authors' uint8 cast would wrap around).

All features are non-differentiable (grey levels are quantised): ``extract`` runs under
``torch.no_grad()`` and with autocast disabled, and computes internally in float32/float64
whatever the input dtype. Two implementations, chosen by ``extract``'s ``backend``:

* On CPU (``"auto"``, or ``"kernels"``): the fused Numba kernels (``cpu``, ``kernels``), one
  pass per image from RGB to the Sobel and LBP channels and the FFT's input, the FFT itself
  with ``torch.fft.rfft2``. About 2x faster than the torch ops on 2 cores (see
  ``benchmarks/features.py``); LBP codes identical, Sobel and FFT within float32 rounding. A
  channel the kernel does not compute takes the torch ops, the others stay fused.
* Everywhere else (``"auto"`` off CPU, or ``"torch"``): the batched torch ops of each channel's
  module, on the input's device with no host round trip (the CUDA path). On CPU they work through
  the batch in chunks of a few 224x224 images (cache locality), take their intermediates from a
  reused ``Workspace`` and write each feature straight into its output channel.

Modules (imports flow down): ``dispatch`` (``extract``, ``input_channels``, which path each
channel takes), ``cpu`` (the fused path and its buffers), ``sobel`` | ``fft`` |
``lbp`` (one channel each, its derivation next to its code, registered in this order: the
authors' concatenation order), ``grey`` (grey levels), ``api`` (``Feature``, ``FEATURES``,
``Workspace``, canonical order, cost, checks) and ``kernels`` (the Numba kernels, NumPy arrays in,
no project import).
"""

# isort: off
# Registering the channels; this order is the canonical order (the authors' concatenation order).
from bnn.features import sobel, fft, lbp  # noqa: F401
# isort: on
from bnn.features.api import (
    COMPAT_MODES,
    FEATURES,
    Feature,
    Workspace,
    canonical_order,
    feature_flops,
    feature_flops_by_name,
)
from bnn.features.dispatch import BACKENDS, extract, input_channels
from bnn.features.grey import grey_levels

__all__ = [
    "BACKENDS",
    "COMPAT_MODES",
    "FEATURES",
    "Feature",
    "canonical_order",
    "extract",
    "feature_flops",
    "feature_flops_by_name",
    "grey_levels",
    "input_channels",
    "Workspace",
]
