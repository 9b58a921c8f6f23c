"""BNN-aware cost counter: binary MACs (BOPs), full-precision MACs (FLOPs), OPs, parameters, storage.

Conventions (Liu et al., Bi-Real Net; BNext, Guo et al. 2022; used to make Table 1-3 of Lanzino
et al., CVPRW 2024 comparable):
  * ``bops``: multiply-accumulates of binary convolutions (1-bit weights and activations).
  * ``flops``: multiply-accumulates of full-precision convolutions and linear layers (one MAC = one
    FLOP, the fvcore convention), the adapter included; plus attention matmuls of timm ViTs.
  * ``ops = flops + bops // 64`` (64 binary MACs per 64-bit XNOR/popcount instruction).
  * ``params`` counts every parameter, latent binary weights included (as the paper does);
    ``binary_params`` the binary weights; ``storage_bytes`` stores binary weights at 1 bit and every
    other parameter at 4 bytes.
Element-wise work (BatchNorm, PReLU, pooling, residual adds) is not counted, as in fvcore.

The counter walks the modules that run in a forward pass and only knows the types listed below; a
module of another type that owns parameters is an error, never silently counted as zero.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from bnn.backbones import BACKBONES
from bnn.backbones.binary import BinaryLayer, binary_layers
from bnn.backbones.bnext import BinaryUnit, LearnableBias
from bnn.detector import Detector, create_detector
from bnn.feature_sets import feature_set_label, parse_features
from bnn.features import feature_flops as _feature_flops

# Types that own parameters but whose arithmetic is element-wise (not counted as MACs).
_ELEMENTWISE_WITH_PARAMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
    LearnableBias,
    BinaryUnit,  # owns ``scale`` (information recoupling mix)
)


# timm classes that own parameters outside conv/linear/norm children (tokens, embeddings). timm is
# imported with the backbones anyway (bnn.backbones.timm_baselines), so importing it here costs nothing.
_TIMM_PARAMETER_HOLDERS: tuple[type[nn.Module], ...] = (VisionTransformer, LayerScale)


@dataclass(frozen=True)
class Cost:
    """Cost of one forward pass of one image.

    Attributes:
        bops: Binary MACs.
        flops: Full-precision MACs (conv, linear, attention matmuls).
        ops: ``flops + bops // 64``.
        params: All parameters, latent binary weights included.
        binary_params: Weights of binary convolutions.
        trainable_params: Parameters with ``requires_grad`` (frozen backbones excluded).
        storage_bytes: 1 bit per binary weight, 4 bytes per other parameter.
        feature_flops: Estimated arithmetic of the extra input channels (FFT, LBP, Sobel); not in
            ``ops``, reported separately.
    """

    bops: int
    flops: int
    ops: int
    params: int
    binary_params: int
    trainable_params: int
    storage_bytes: int
    feature_flops: int = 0

    @property
    def binarization_degree(self) -> float:
        """Share of OPs done in binary: ``(bops / 64) / ops``."""
        return (self.bops / 64) / self.ops if self.ops else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _conv_macs(module: nn.Conv2d, output: Tensor) -> int:
    groups = getattr(module, "groups", 1)
    k = module.kernel_size
    kh, kw = (k, k) if isinstance(k, int) else k
    per_output = (module.in_channels // groups) * kh * kw
    return output[0].numel() * per_output  # one image: C_out * H_out * W_out outputs


def count(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 3, 224, 224)) -> Cost:
    """Counts the cost of one image through ``model``.

    Args:
        model: A ``bnn.Detector`` or a backbone. Runs once in eval mode on its own device (works
            on the ``meta`` device, where it only propagates shapes).
        input_size: (B, C, H, W) of the RGB input; costs are per image whatever B is.

    Returns:
        A ``Cost``.

    Raises:
        TypeError: A module that ran owns parameters and is of a type the counter does not know.
    """
    known_holders = _ELEMENTWISE_WITH_PARAMS + _TIMM_PARAMETER_HOLDERS
    totals = {"bops": 0, "flops": 0}

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if isinstance(module, BinaryLayer):
            totals["bops"] += module.binary_macs(output)
        elif isinstance(module, nn.Conv2d):
            totals["flops"] += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            totals["flops"] += output[0].numel() * module.in_features
        elif isinstance(module, Attention):
            tokens, dim = inputs[0].shape[1], inputs[0].shape[2]
            totals["flops"] += 2 * tokens * tokens * dim  # q @ k^T and attn @ v, all heads
        elif any(True for _ in module.parameters(recurse=False)) and not isinstance(module, known_holders):
            raise TypeError(
                f"cost counter does not know {type(module).__module__}.{type(module).__name__}, "
                "which owns parameters; add its rule to bnn/cost.py"
            )

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(model, Detector):
                channels = 3 + len(model.extra_features)
                model.forward_channels(torch.zeros(1, channels, *input_size[2:], device=device))
            else:
                model(torch.zeros(1, *input_size[1:], device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    latent = [(m.latent_weight(), m.precision) for m in binary_layers(model)]
    binary_params = sum(w.numel() for w, _ in latent if w is not None)
    binary_bits = sum(w.numel() * bits for w, bits in latent if w is not None)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    feature_flops = 0
    if isinstance(model, Detector):
        feature_flops = _feature_flops(model.extra_features, input_size[2], input_size[3])
    return Cost(
        bops=totals["bops"],
        flops=totals["flops"],
        ops=totals["flops"] + totals["bops"] // 64,
        params=params,
        binary_params=binary_params,
        trainable_params=trainable,
        storage_bytes=math.ceil(binary_bits / 8) + 4 * (params - binary_params),
        feature_flops=feature_flops,
    )


@functools.lru_cache(maxsize=1024)  # a study's cells share few architectures; a Cost is frozen
def detector_cost(backbone: str, features: str | tuple[str, ...], freeze_backbone: bool = False,
                  input_size: tuple[int, int] = (224, 224)) -> Cost:
    """The cost of one ``input_size`` (H, W) image through ``create_detector(backbone, features,
    freeze_backbone)``, built on the ``meta`` device: only shapes propagate, no weights are
    allocated and no arithmetic runs. Memoised: cells that differ only in training settings
    share one count."""
    with torch.device("meta"):
        detector = create_detector(backbone, features, freeze_backbone=freeze_backbone)
    return count(detector, (1, 3, *input_size))


__all__ = ["Cost", "count", "detector_cost"]


def cost_table(
    backbones: list[str],
    feature_sets: list[str],
    frozen: tuple[bool, ...] = (False, True),
    input_size: tuple[int, int] = (224, 224),
):
    """One row per backbone x feature set x frozen with the detector's cost (``detector_cost``,
    on the ``meta`` device), as a DataFrame."""
    import pandas as pd

    rows = []
    for backbone in backbones:
        for features in feature_sets:
            for freeze in frozen:
                c = detector_cost(backbone, features, freeze, input_size)
                rows.append(
                    {
                        "model": BACKBONES.get(backbone).display_name,
                        "backbone": backbone,
                        "features": feature_set_label(parse_features(features)),
                        "frozen": freeze,
                        "params_M": c.params / 1e6,
                        "trainable_M": c.trainable_params / 1e6,
                        "binary_params_M": c.binary_params / 1e6,
                        "BOPs_G": c.bops / 1e9,
                        "FLOPs_G": c.flops / 1e9,
                        "OPs_G": c.ops / 1e9,
                        "feature_FLOPs_M": c.feature_flops / 1e6,
                        "storage_MB": c.storage_bytes / 2**20,
                    }
                )
    return pd.DataFrame(rows)
