"""The local-binary-pattern channel (``lbp``): scikit-image's
``local_binary_pattern(Y, P=3, R=6, method="uniform") / 255`` with identical codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bnn.features.api import FEATURES, Feature, Workspace

# skimage's sample offsets for P = 3, R = 6: (dr, dc)_p = (-R sin(2 pi p / P), R cos(2 pi p / P))
# rounded to 5 decimals with np.round, i.e. (0, 6), (-5.19615, -3), (5.19615, -3). Samples are
# bilinear with constant 0 outside the image ('C' mode, cval 0) and bit_p = sample_p >= centre.
_LBP_POINTS = 3
_LBP_RADIUS = 6
_LBP_OFFSETS = ((-0.0, 6.0), (-5.19615, -3.0), (5.19615, -3.0))
# The integer fast path (see _lbp) is exact on rows below this bound (checked exhaustively).
LBP_EXACT_ROWS = 1 << 20


def _lbp(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """Uniform LBP codes (P=3, R=6) identical to scikit-image's, divided by 255.

    scikit-image counts 0/1 transitions along the P - 1 consecutive pairs only (not cyclically),
    so with P = 3 every pattern counts as uniform and the code is the number of set bits (0..3;
    the "non-uniform" code P + 1 = 4 never occurs).

    Bits, for a centre pixel c at (r, col) (neighbours outside the image read 0):
    * p0 = Y[r, col + 6] (integer offset, no interpolation);
    * p1 = 0.19615 Y[r - 6, col - 3] + 0.80385 Y[r - 5, col - 3] (column offset exact);
    * p2 = 0.80385 Y[r + 5, col - 3] + 0.19615 Y[r + 6, col - 3].
    For integer a, b, c with a != b, ``0.19615 a + 0.80385 b - c`` is a nonzero multiple of 5e-5
    (16077 and 20000 are coprime), far above the float64 round-off of skimage's evaluation, so
    ``p1 >= c`` iff ``3923 a + 16077 b >= 20000 c`` (exact in float32: < 2**24). When a == b == c,
    skimage's float64 ``(1 - d) a + d a`` is never below a for any row below ``LBP_EXACT_ROWS``
    (checked for all 256 levels), so the same integer test applies; taller images fall back to a
    float64 replica of skimage's interpolation.
    """
    if grey.shape[-2] > LBP_EXACT_ROWS:
        out.copy_(_lbp_codes_float64(grey))
    else:
        _lbp_codes_integer(grey, out, workspace)
    out.div_(255.0)


def _lbp_codes_integer(grey: Tensor, out: Tensor, workspace: Workspace) -> None:
    """Writes the LBP codes (B, H, W) into ``out`` via exact integer comparisons (see ``_lbp``).

    Every comparison is ``d >= 0`` for an integer-valued d, evaluated as ``clamp(d, -1, 0) + 1``
    (cheaper than boolean tensors on CPU). The two interpolated bits share their weights (3923
    on the rows r -/+ 6, 16077 on the rows r -/+ 5, both at column c - 3), so they are computed
    together on (B, 2, H, W) strided views of the padded image.
    """
    batch, height, width = grey.shape
    # Zeros outside like skimage's cval: 6 rows above and below, 3 columns left, 6 right.
    padded = workspace.zeros("lbp_padded", (batch, height + 12, width + 9))  # borders stay 0
    padded[:, 6 : 6 + height, 3 : 3 + width].copy_(grey)  # padded[:, 6 + r, 3 + c] = Y[r, c]
    row = padded.stride(1)

    def rows_at_column_minus_3(first: int, step: int) -> Tensor:
        # (B, 2, H, W): [:, k, r, c] = padded[:, first + k * step + r, c] = Y[., c - 3]
        return padded.as_strided(
            (batch, 2, height, width),
            (padded.stride(0), step * row, row, 1),
            padded.storage_offset() + first * row,
        )

    # p0 = Y[r, c + 6]
    torch.sub(padded[:, 6 : 6 + height, 9 : 9 + width], grey, out=out).clamp_(-1.0, 0.0)
    # p1, p2: 3923 Y[r -/+ 6, c - 3] + 16077 Y[r -/+ 5, c - 3] - 20000 c
    centre = torch.mul(grey, -20000.0, out=workspace.empty("lbp_centre", (batch, height, width)))
    d = workspace.empty("lbp_bits", (batch, 2, height, width))
    torch.add(centre.unsqueeze(1), rows_at_column_minus_3(0, 12), alpha=3923.0, out=d)
    d.add_(rows_at_column_minus_3(1, 10), alpha=16077.0).clamp_(-1.0, 0.0)  # (B, 2, H, W)
    out.add_(d[:, 0]).add_(d[:, 1]).add_(float(_LBP_POINTS))  # number of set bits


def _lbp_codes_float64(grey: Tensor) -> Tensor:
    """LBP codes (B, H, W) float32 replicating skimage's float64 bilinear interpolation."""
    _, height, width = grey.shape
    y = grey.double()
    pad = _LBP_RADIUS + 1
    padded = F.pad(y, (pad, pad, pad, pad))  # (B, H + 2 pad, W + 2 pad)
    rows = torch.arange(height, device=grey.device, dtype=torch.float64)
    cols = torch.arange(width, device=grey.device, dtype=torch.float64)
    codes = torch.zeros_like(grey, dtype=torch.float32)
    for dr, dc in _LBP_OFFSETS:
        # The same float64 operations as skimage's bilinear_interpolation.
        r_pos, c_pos = rows + dr, cols + dc
        r_lo, c_lo = torch.floor(r_pos), torch.floor(c_pos)
        r_w, c_w = (r_pos - r_lo)[:, None], (c_pos - c_lo)[None, :]  # (H, 1), (1, W)
        r_0 = (r_lo.long() + pad)[:, None]
        c_0 = (c_lo.long() + pad)[None, :]
        r_1 = (torch.ceil(r_pos).long() + pad)[:, None]
        c_1 = (torch.ceil(c_pos).long() + pad)[None, :]
        top = (1 - c_w) * padded[:, r_0, c_0] + c_w * padded[:, r_0, c_1]  # (B, H, W)
        bottom = (1 - c_w) * padded[:, r_1, c_0] + c_w * padded[:, r_1, c_1]
        sample = (1 - r_w) * top + r_w * bottom
        codes += sample - y >= 0
    return codes



def _lbp_flops(height: int, width: int) -> int:
    # P = 3 bilinear samples per pixel (4 taps: 4 mul + 3 add), a comparison each, P - 1
    # transition checks, P - 1 adds for the code and the 1/255 scale: 8 P + 2 (P - 1) + 1.
    p = _LBP_POINTS
    return (8 * p + 2 * (p - 1) + 1) * height * width



FEATURES.add("lbp", Feature(_lbp, _lbp_flops, "LBP"))
