"""Inference form of a trained detector in PyTorch: binary weights computed once, plain sign.

In training, every forward re-binarises the latent weights and runs the sign through a
straight-through autograd function. For inference neither is needed: ``for_inference`` returns a
copy whose binary layers are their ``BinaryLayer.frozen()`` form: ``BinaryConv2d`` hold sign(w) as a
fixed +-1 buffer (``FrozenBinaryConv2d``) and ``BinaryActivation`` are a plain ``where(x >= 0, 1,
-1)`` (``InferenceSign``). Outputs are identical to the original in eval mode (tested); this
is the "optimised PyTorch eval path" of ``benchmarks/inference.py``, what ``python -m bnn detect
--engine torch`` runs, and the starting point of the OpenVINO export (``bnn.export``).
"""

from __future__ import annotations

import copy

from torch import nn

from bnn.backbones.binary import BinaryLayer


def for_inference(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with binary activations and convolutions in their inference form.

    Args:
        module: A detector, backbone or any module containing binary layers (``BinaryLayer``: each
            is replaced by its ``frozen()`` form).

    Returns:
        The copy, without gradients; the original module is untouched.
    """
    module = copy.deepcopy(module).eval()
    if isinstance(module, BinaryLayer):
        return module.frozen().requires_grad_(False)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BinaryLayer):
                setattr(parent, name, child.frozen())
    return module.requires_grad_(False)
