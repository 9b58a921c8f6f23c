"""BNext parity with the official hpi-xnor/BNext ``src/bnext.py``, without needing that code.

Criterion (docs/bnext_numerics.md): with temperature buffers at 0, our forward equals the official
one once the official binarisation is evaluated as exact +-1 with sign(0) = +1 (the deepfake
paper's Eq. 2). These tests pin the pieces of that claim that our code controls:

* the per-size block plan, as explicit data derived from the official construction loop;
* a functional reference written from the official unit equations (``ref_*`` below), which the
  module tree must reproduce, including the official 1x1 unit's scale clamp in eval mode;
* the sign convention at exact zeros (pre-activation and latent weight), the only point where the
  official T = 0 forward and ours differ.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnn import create_backbone
from bnn.backbones.bnext import CHANNELS, BinaryUnit

# Official construction loop (BNext.__init__): block 1 stride 1 "bias"; otherwise stride 2 where the
# width changes (except to c[1]) and mode "scale" for even i, "bias" for odd i; two concatenated 1x1
# units where the width doubles. One character per block i = 1, 2, ...:
#   stride: 1 | 2;  mode: b = "bias" (3x3 feed-forward), s = "scale" (ELM attention);
#   ffn: W = FFN_1 + FFN_2 (width doubles), - = one FFN.
OFFICIAL_PLAN = {
    "tiny": ("1212121111121", "bsbsbsbsbsbsb", "WW-W-W-----W-"),
    "small": ("1212121111121", "bsbsbsbsbsbsb", "WW-W-W-----W-"),
    "middle": ("121112111211111112111", "bsbsbsbsbsbsbsbsbsbsb", "WW---W---W-------W---"),
    "large": (
        "12111211121111111111111112111",
        "bsbsbsbsbsbsbsbsbsbsbsbsbsbsb",
        "WW---W---W---------------W---",
    ),
    "micro": ("12121", "bsbsb", "WW-W-"),
}


@pytest.mark.parametrize("size", list(OFFICIAL_PLAN))
def test_block_plan_equals_the_official_table(size):
    with torch.device("meta"):
        model = create_backbone(f"bnext_{size}")
    strides, modes, ffns = OFFICIAL_PLAN[size]
    blocks = list(model.feature[1:])
    assert len(blocks) == len(strides) == len(CHANNELS[size]) - 1
    got_strides = "".join(str(b.Attention.stride) for b in blocks)
    got_modes = "".join("s" if b.Attention.elm_attention else "b" for b in blocks)
    got_ffns = "".join("W" if hasattr(b, "FFN_1") else "-" for b in blocks)
    assert (got_strides, got_modes, got_ffns) == (strides, modes, ffns)
    for block in blocks:
        c = block.Attention.binary_conv.in_channels
        units = [block.Attention] + [
            getattr(block, n) for n in ("FFN", "FFN_1", "FFN_2") if hasattr(block, n)
        ]
        for unit, k in zip(units, [3] + [1] * (len(units) - 1), strict=True):
            conv = unit.binary_conv
            assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (
                c,
                c,
                k,
                k // 2,
            )
            assert (
                unit.se.se[1].out_channels == c // 8
            )  # SqueezeAndExpand ratio 8, from the unit's C
        assert isinstance(block.Attention.pool, torch.nn.AvgPool2d) == (block.Attention.stride == 2)
    assert model.feature[0].conv1.stride == (2, 2)  # the ImageNet (num_classes=1000) stem


# ---- functional reference: the official equations, with exact +-1 and sign(0) = +1 -------------


def ref_sign(v):
    return torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))


def ref_bn(sd, name, x):
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def ref_unit(sd, p, x, kernel, stride, elm):
    pool = (lambda t: F.avg_pool2d(t, 2, 2)) if stride == 2 else (lambda t: t)
    residual = pool(F.prelu(x, sd[f"{p}.activation1.weight"])) if elm else pool(x)
    a = ref_sign(x + sd[f"{p}.move.bias"])
    y = F.conv2d(a, ref_sign(sd[f"{p}.binary_conv.weight"]), stride=stride, padding=kernel // 2)
    y = F.prelu(ref_bn(sd, f"{p}.norm1", y), sd[f"{p}.activation2.weight"])
    scale = sd[f"{p}.scale"]
    if kernel == 1:  # official FFN_1x1 clamps scale.data to [0, 1] in every forward
        scale = scale.clamp(0, 1)
    mix = scale * pool(x) + y * (1 - scale)
    s = F.adaptive_avg_pool2d(mix, 1)
    s = F.relu(F.conv2d(s, sd[f"{p}.se.se.1.weight"], sd[f"{p}.se.se.1.bias"]))
    s = torch.sigmoid(F.conv2d(s, sd[f"{p}.se.se.3.weight"], sd[f"{p}.se.se.3.bias"]))
    y = s * y
    if elm:
        y = y * residual
    return ref_bn(sd, f"{p}.norm2", y) + residual


def ref_forward(sd, size, x):
    strides, modes, ffns = OFFICIAL_PLAN[size]
    x = ref_bn(sd, "feature.0.bn1", F.conv2d(x, sd["feature.0.conv1.weight"], stride=2, padding=1))
    for i, (stride, mode, ffn) in enumerate(zip(strides, modes, ffns, strict=True), start=1):
        x = ref_unit(sd, f"feature.{i}.Attention", x, 3, int(stride), mode == "s")
        if ffn == "W":
            x = torch.cat(
                [ref_unit(sd, f"feature.{i}.FFN_{j}", x, 1, 1, False) for j in (1, 2)], dim=1
            )
        else:
            x = ref_unit(sd, f"feature.{i}.FFN", x, 1, 1, False)
    x = F.adaptive_avg_pool2d(F.prelu(x, sd["prelu.weight"]), 1).flatten(1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def _randomise(model):
    """Trained-looking float64 state: temperature 0, scales partly outside [0, 1] (as an optimiser
    step after the last in-place clamp leaves them), non-trivial BN statistics."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("temperature"):
                t.zero_()
            elif name.endswith("scale"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 - 0.5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif name.endswith("binary_conv.weight"):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 1e-3)
            else:
                t.copy_(
                    torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
                )


def test_forward_equals_the_official_equations_with_exact_sign():
    model = create_backbone("bnext_micro").double().eval()
    _randomise(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        # exact zeros where the official torch.sign would give 0: a latent weight of a 3x3 and of a
        # 1x1 conv, and a pre-activation of block 1 (move = -stem output at one position)
        model.feature[2].Attention.binary_conv.weight[0, 0, 1, 1] = 0.0
        model.feature[3].FFN.binary_conv.weight[1, 2, 0, 0] = 0.0
        stem = model.feature[0](x)
        model.feature[1].Attention.move.bias[0, 3, 0, 0] = -stem[0, 3, 5, 7]
        assert (stem + model.feature[1].Attention.move.bias)[0, 3, 5, 7] == 0
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        ours = model(x)
        ref = ref_forward(sd, "micro", x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    # eval forwards leave the parameters as loaded (the eval clamp of 1x1 scales is functional)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_only_the_1x1_units_clamp_scale_in_eval():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 8)
    for kernel, clamps in [(1, True), (3, False)]:
        unit = BinaryUnit(8, kernel, elm_attention=False).eval()
        with torch.no_grad():
            unit.scale.copy_(torch.linspace(-0.5, 1.5, 8).view(1, 8, 1, 1))
            unit.norm1.running_mean.normal_()
            unit.se.se[1].bias.fill_(
                5.0
            )  # keep the SE's ReLU active, so the mix reaches the output
            raw = unit(x)
            unit.scale.clamp_(0, 1)
            clamped = unit(x)
        assert torch.equal(raw, clamped) == clamps, f"kernel {kernel}"


def test_exact_zero_binarises_to_plus_one_in_a_unit():
    unit = BinaryUnit(8, 3).eval()
    seen = {}
    unit.binary_activation.register_forward_hook(lambda m, i, o: seen.update(out=o))
    x = torch.randn(1, 8, 5, 5)
    x[0, 1, 2, 2] = 0.0  # move is 0, so this pre-activation is exactly 0
    with torch.no_grad():
        unit.binary_conv.weight[2, 1, 0, 0] = 0.0
        unit(x)
        w = unit.binary_conv.binary_weight()
    assert seen["out"][0, 1, 2, 2] == 1 and set(seen["out"].unique().tolist()) == {-1.0, 1.0}
    assert w[2, 1, 0, 0] == 1 and set(w.unique().tolist()) == {-1.0, 1.0}


def test_official_ste_expression_at_temperature_zero_differs_from_ours_only_at_zero():
    """The official HardSign value (sign - r).detach() + r, r = clamp(x, -1.5, 1.5), is exactly
    +-1 for every x != 0 in float32 (Sterbenz for |r| >= 0.5, round-to-even otherwise); at x = 0
    it is 0 where ours is +1."""
    from bnn.backbones.binary import binary_sign

    tiny = torch.finfo(torch.float32).tiny
    x = torch.cat(
        [
            torch.randn(100_000) * 0.5,
            torch.tensor(
                [tiny, 1e-45, 1e-30, 2.0**-25, 2.0**-24, 0.5 - 2.0**-25, 0.5, 1.0, 1.5, 3.0]
            ),
        ]
    )
    x = torch.cat([x, -x, torch.zeros(1), -torch.zeros(1)])
    r = x.clamp(-1.5, 1.5)
    official = (x.div(torch.tensor(1e-8)).clamp(-1, 1).sign() - r) + r
    ours = binary_sign(x)
    nonzero = x != 0
    assert torch.equal(official[nonzero], ours[nonzero])
    assert torch.all(official[~nonzero] == 0) and torch.all(ours[~nonzero] == 1)
