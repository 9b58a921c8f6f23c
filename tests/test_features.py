"""Parity of the batched torch features with the OpenCV / NumPy / scikit-image references."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from benchmarks.feature_reference import ref_fft, ref_lbp_codes, ref_sobel
from benchmarks.feature_reference import ref_grey as ref_grey_hwc
from bnn.features import (
    FEATURES,
    Feature,
    canonical_order,
    extract,
    feature_flops,
    feature_flops_by_name,
    grey_levels,
    input_channels,
)
from bnn.features import cpu as cpu_module
from bnn.features import dispatch as extract_module
from bnn.features import fft as fft_module
from bnn.features import grey as grey_module
from bnn.features import lbp as lbp_module

ROOT = Path(__file__).resolve().parents[1]
# The FFT output is 20 ln(|z| + 1e-9) / 255, which crosses zero where |z| ~ 1; there the ~1e-12
# absolute round-off of either FFT (and the float32 output, ~5e-9 absolute) is large relative to
# the value, so a small absolute floor is added to rtol=1e-4. 1e-6 is ~1e-6 of the output range.
FFT_ATOL = 1e-6
SIZES = [(31, 47), (64, 64), (47, 31), (13, 9)]
# The two CPU implementations of extract: bnn.features.cpu (fused Numba kernels) and the batched torch ops.
CPU_BACKENDS = ("kernels", "torch")


# ---- references (benchmarks/feature_reference.py) --------------------------------------------


def ref_grey(image: torch.Tensor, compat: str = "exact") -> np.ndarray:
    """The reference grey levels of a (3, H, W) tensor image."""
    return ref_grey_hwc(image.permute(1, 2, 0).numpy(), compat)


def assert_matches_reference(images: torch.Tensor, compat: str = "exact") -> None:
    for backend in CPU_BACKENDS:
        assert_backend_matches_reference(images, compat, backend)


def assert_backend_matches_reference(images: torch.Tensor, compat: str, backend: str) -> None:
    out = extract(images, ["sobel", "fft", "lbp"], compat, backend).double().numpy()
    for i, image in enumerate(images):
        grey = ref_grey(image, compat)
        np.testing.assert_allclose(out[i, 0], ref_sobel(grey), rtol=1e-4, atol=0)
        np.testing.assert_allclose(out[i, 1], ref_fft(grey), rtol=1e-4, atol=FFT_ATOL)
        np.testing.assert_array_equal(np.rint(out[i, 2] * 255), ref_lbp_codes(grey))


def natural(name: str, height: int, width: int, resize: bool = False) -> torch.Tensor:
    """(1, 3, height, width) crop (or resize) of a scikit-image sample image, in [0, 1]."""
    img = getattr(skdata, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    if resize:
        return F.interpolate(x, size=(height, width), mode="area").clamp(0, 1)
    top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
    return x[:, :, top : top + height, left : left + width].contiguous()


def grey_to_rgb(grey: np.ndarray) -> torch.Tensor:
    """A (1, 3, H, W) image whose exact grey levels are ``grey`` (R = G = B = level / 255)."""
    x = torch.from_numpy(grey.astype(np.float32) / 255)
    return x[None, None].expand(1, 3, *grey.shape).contiguous()


# ---- grey levels ----------------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["exact", "authors"])
def test_grey_matches_opencv_on_all_colours(compat):
    code = cv2.COLOR_BGR2GRAY if compat == "authors" else cv2.COLOR_RGB2GRAY
    levels = torch.arange(256, dtype=torch.int64)
    green, blue = torch.meshgrid(levels, levels, indexing="ij")
    for red_block in levels.split(64):  # 64 x 256 x 256 colours at a time
        rgb = torch.stack(torch.broadcast_tensors(red_block[:, None, None], green, blue))
        u = rgb.reshape(3, 64 * 256, 256).to(torch.uint8)  # (3, 16384, 256)
        # (u + 0.5) / 255 survives both rounding (exact) and truncation (authors) as u.
        x = ((u.float() + (0.5 if compat == "authors" else 0.0)) / 255)[None]
        ours = grey_levels(x, compat)[0].to(torch.uint8).numpy()
        expected = cv2.cvtColor(np.ascontiguousarray(u.permute(1, 2, 0).numpy()), code)
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("compat", ["exact", "authors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grey_matches_reference_pipeline_on_random_floats(compat, dtype):
    images = torch.rand(4, 3, 31, 47, dtype=dtype)
    images[0, :, 0, :6] = torch.tensor([0.0, 1.0, 0.5 / 255, 1.5 / 255, 254.5 / 255, 0.999999])
    grey = grey_levels(images, compat)
    assert grey.shape == (4, 31, 47) and grey.dtype == torch.float32
    for i, image in enumerate(images):
        np.testing.assert_array_equal(grey[i].numpy(), ref_grey(image, compat))


def test_grey_compat_modes_differ_and_clamp():
    x = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert grey_levels(x, "exact")[0, 0, 0] != grey_levels(x, "authors")[0, 0, 0]
    out_of_range = torch.tensor([1.5, -0.2, 2.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    clamped = out_of_range.clamp(0, 1)
    for compat in ("exact", "authors"):
        assert torch.equal(grey_levels(out_of_range, compat), grey_levels(clamped, compat))


def test_grey_rejects_bad_compat_and_inputs():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exact, authors"):
        grey_levels(x, "opencv")
    with pytest.raises(ValueError, match="exact, authors"):
        extract(x, ["fft"], compat="numpy")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        grey_levels(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        grey_levels(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# ---- parity with the references ---------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_random_images_match_references(size):
    assert_matches_reference(torch.rand(3, 3, *size))


def test_random_224_matches_references():
    assert_matches_reference(torch.rand(2, 3, 224, 224))


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_natural_images_match_references(name):
    assert_matches_reference(natural(name, 64, 97))  # crop
    assert_matches_reference(natural(name, 224, 224, resize=True))  # whole image, resized


@pytest.mark.parametrize("size", [(64, 64), (31, 47)])
def test_authors_compat_matches_authors_pipeline(size):
    images = torch.cat([torch.rand(2, 3, *size), natural("astronaut", *size)])
    assert_matches_reference(images, compat="authors")


@pytest.mark.parametrize("size", [(4, 4), (4, 9), (7, 7), (5, 12)])
def test_sobel_small_images_match_opencv(size):
    images = torch.rand(2, 3, *size)
    out = extract(images, ["sobel"])[:, 0].double().numpy()
    for i, image in enumerate(images):
        np.testing.assert_allclose(out[i], ref_sobel(ref_grey(image)), rtol=1e-4, atol=0)


def test_sobel_is_exact_integer_arithmetic():
    # Extreme contrast: |Gx| reaches 255 * 64 * 20 - a float32 rounding would show.
    grey = np.zeros((16, 16), np.uint8)
    grey[:, 8:] = 255
    grey[::2, ::3] = 255
    ours = extract(grey_to_rgb(grey), ["magnitude"])[0, 0].double().numpy()
    np.testing.assert_allclose(ours, ref_sobel(grey), rtol=1e-6, atol=0)


# ---- LBP edge cases ---------------------------------------------------------------------------


def lbp_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    cases = [np.full((20, 24), v, np.uint8) for v in (0, 1, 128, 255)]  # flat: ties everywhere
    cases += [rng.integers(0, 3, (33, 29)).astype(np.uint8)]  # low range: many ties
    cases += [rng.integers(0, 256, (5, 9)).astype(np.uint8)]  # smaller than the radius
    cases += [rng.integers(0, 256, (1, 1)).astype(np.uint8), rng.integers(0, 256, (2, 40))]
    checker = (np.indices((24, 24)).sum(0) % 2 * 255).astype(np.uint8)
    cases += [checker, np.tile(np.arange(0, 256, 8, dtype=np.uint8), (40, 1))]
    return [c.astype(np.uint8) for c in cases]


@pytest.mark.parametrize("index", range(len(lbp_cases())))
def test_lbp_codes_identical_on_edge_cases(index):
    grey = lbp_cases()[index]
    expected = ref_lbp_codes(grey)
    ours = extract(grey_to_rgb(grey), ["lbp"])[0, 0]
    np.testing.assert_array_equal(np.rint(ours.double().numpy() * 255), expected)
    # The float64 replica of skimage's interpolation (used for very tall images) agrees too.
    replica = lbp_module._lbp_codes_float64(torch.from_numpy(grey).float()[None])[0]
    np.testing.assert_array_equal(replica.numpy(), expected)


def test_lbp_codes_are_bit_counts():
    codes = np.rint(extract(torch.rand(2, 3, 40, 40), ["lbp"]).numpy() * 255)
    assert set(np.unique(codes)) <= {0, 1, 2, 3}  # skimage never emits P + 1 = 4 for P = 3


@pytest.mark.slow  # 86 images of 2**20 x 6 pixels, ours and skimage's (about 100 s on 2 busy cores)
@pytest.mark.integration
def test_lbp_ties_match_skimage_on_every_row_below_the_exact_bound(monkeypatch):
    """``_lbp``'s integer path counts equal samples and centre as bit 1; skimage agrees on every
    row below ``LBP_EXACT_ROWS`` for all 256 levels (its float64 ``(1 - d) a + d a`` is never
    below ``a`` there), the range its docstring claims. Images of that height with columns
    repeating with period 3: for every column c >= 3 both interpolated samples (column c - 3, rows
    r -/+ 5 and 6) and the centre share a level, on every row."""
    monkeypatch.setattr(lbp_module, "_lbp_codes_float64", None)  # the integer path must serve this height
    height, lbp = lbp_module.LBP_EXACT_ROWS, FEATURES.get("lbp")
    for first in range(0, 256, 3):
        trio = np.resize(np.arange(first, min(first + 3, 256), dtype=np.uint8), 3)
        grey = np.ascontiguousarray(np.tile(trio, (height, 2)))  # (2**20, 6)
        ours = lbp(torch.from_numpy(grey).float()[None])[0]
        np.testing.assert_array_equal(np.rint(ours.double().numpy() * 255), ref_lbp_codes(grey),
                                      err_msg=f"levels {trio.tolist()}")


# ---- FFT edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 100, 255])
@pytest.mark.parametrize("size", [(64, 64), (31, 47)])
def test_fft_of_flat_image_is_exact(value, size):
    grey = np.full(size, value, np.uint8)
    ours = extract(grey_to_rgb(grey), ["fft"])[0, 0].double().numpy()
    expected = np.full(size, 20 * np.log(1e-9) / 255)
    expected[size[0] // 2, size[1] // 2] = 20 * np.log(value * grey.size + 1e-9) / 255
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    if size == (64, 64):  # NumPy's FFT is exact here too (elsewhere it leaves ~1e-12 noise)
        np.testing.assert_allclose(ours, ref_fft(grey), rtol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (1, 6), (5, 1), (2, 2), (3, 8), (8, 3)])
def test_fft_tiny_and_degenerate_shapes(size):
    images = torch.rand(2, 3, *size)
    out = extract(images, ["fft", "lbp"]).double().numpy()
    for i, image in enumerate(images):
        grey = ref_grey(image)
        np.testing.assert_allclose(out[i, 0], ref_fft(grey), rtol=1e-4, atol=FFT_ATOL)
        np.testing.assert_array_equal(np.rint(out[i, 1] * 255), ref_lbp_codes(grey))


# ---- contracts shared by every feature --------------------------------------------------------


def test_registry_order_and_alias():
    assert FEATURES.names() == ["sobel", "fft", "lbp"]
    assert FEATURES.canonical("magnitude") == "sobel"
    assert "magnitude" in FEATURES and "rgb" not in FEATURES


# How closely the Numba kernels reproduce the torch ops: Sobel's float32 tail rounds in another
# order (both within 3e-7 of OpenCV), the FFT's magnitude is rounded to float32 once instead of
# twice (both within ~2e-7 of NumPy), LBP codes are identical.
BACKEND_TOLERANCE = {"sobel": (3e-7, 0.0), "fft": (1e-6, FFT_ATOL), "lbp": (0.0, 0.0)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", FEATURES.names())
def test_feature_shape_dtype_finite(name, backend):
    images = torch.rand(3, 3, 24, 40)
    out = extract(images, [name], backend=backend)
    assert out.shape == (3, 1, 24, 40) and out.dtype == torch.float32
    assert out.device == images.device and torch.isfinite(out).all()
    direct = FEATURES.get(name)(grey_levels(images))
    assert direct.shape == (3, 24, 40) and direct.dtype == torch.float32
    rtol, atol = (0.0, 0.0) if backend == "torch" else BACKEND_TOLERANCE[name]
    torch.testing.assert_close(out[:, 0], direct, rtol=rtol, atol=atol)


@pytest.mark.parametrize("compat", ["exact", "authors"])
def test_backends_agree(compat):
    images = torch.cat([torch.rand(3, 3, 224, 224), natural("astronaut", 224, 224, resize=True)])
    names = ["sobel", "fft", "lbp"]
    kernels, torch_ops = (extract(images, names, compat, backend) for backend in CPU_BACKENDS)
    for index, name in enumerate(names):
        rtol, atol = BACKEND_TOLERANCE[name]
        torch.testing.assert_close(kernels[:, index], torch_ops[:, index], rtol=rtol, atol=atol)


def test_kernels_do_not_depend_on_the_thread_count():
    images = torch.cat([torch.rand(5, 3, 48, 40), natural("coffee", 48, 40)])
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(extract(images, ["sobel", "fft", "lbp"], backend="kernels"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(result, results[0]) for result in results)


@pytest.mark.integration
def test_forked_child_runs_the_serial_kernels():
    """GNU OpenMP is not fork-safe: Numba kills a forked child that starts a parallel region
    after its parent did (and torch's own parallel ops hang there, which is why DataLoader
    workers run torch on one thread). A child forked after a parallel extract must take the
    serial kernels, with torch on two threads too (Sobel and LBP need no torch op) and on one
    thread as a DataLoader worker runs (then the FFT as well); same numbers, normal exit."""
    script = """
import os, sys, torch
from bnn.features import kernels as feature_kernels
from bnn.features import extract
torch.set_num_threads(2)
images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
parent = extract(images, ["sobel", "fft", "lbp"], backend="kernels")
assert feature_kernels.parallel_allowed()
pid = os.fork()
if pid == 0:
    two_threads = extract(images, ["lbp", "sobel"], backend="kernels")
    torch.set_num_threads(1)  # before any other torch op (torch.equal is one)
    same = torch.equal(two_threads, parent[:, [2, 0]])
    same &= torch.equal(extract(images, ["sobel", "fft", "lbp"], backend="kernels"), parent)
    os._exit(0 if same and not feature_kernels.parallel_allowed() else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                               cwd=ROOT, start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=120)
    finally:  # a hung child must not outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-2000:]


def test_recycled_output_is_never_in_use():
    """The kernel path hands out memory again only once no tensor, view or array uses it."""
    images = torch.rand(3, 3, 24, 24)
    first = extract(images, ["sobel", "fft", "lbp"])
    kept, view = first.clone(), first[:, 1]
    pointer = first.data_ptr()
    second = extract(torch.rand(3, 3, 24, 24), ["sobel", "fft", "lbp"])
    assert second.data_ptr() != pointer and torch.equal(first, kept)
    del first
    third = extract(torch.rand(3, 3, 24, 24), ["sobel", "fft", "lbp"])  # the view still lives
    assert third.data_ptr() != pointer and torch.equal(view, kept[:, 1])
    array = third.numpy()
    del second, third, view
    fourth = extract(images, ["sobel", "fft", "lbp"])
    assert fourth.data_ptr() != array.ctypes.data and torch.equal(fourth, kept)
    del array
    fifth = extract(images, ["sobel", "fft", "lbp"])  # nothing uses the old memory any more
    assert torch.equal(fifth, kept)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_receives_the_channels_and_is_checked(backend):
    images = torch.rand(3, 3, 24, 24)
    fresh = extract(images, ["sobel", "fft", "lbp"], backend=backend)
    out = torch.full((3, 3, 24, 24), float("nan"))
    assert extract(images, ["sobel", "fft", "lbp"], backend=backend, out=out) is out
    assert torch.equal(out, fresh)
    for bad, why in [(torch.empty(3, 2, 24, 24), r"shape \(3, 3, 24, 24\)"),
                     (torch.empty(3, 3, 24, 24, dtype=torch.float64), "float64"),
                     (torch.empty(3, 24, 24, 3).permute(0, 3, 1, 2), "non-contiguous")]:
        with pytest.raises(ValueError, match=why):
            extract(images, ["sobel", "fft", "lbp"], backend=backend, out=bad)


def test_input_channels_results_stay_independent():
    """``input_channels`` reuses its scratch output from call to call; no result it returned changes."""
    first_images, second_images = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    first = input_channels(first_images, ("fft", "lbp"))
    kept = first.clone()
    second = input_channels(second_images, ("fft", "lbp"))
    assert torch.equal(first, kept) and not torch.equal(first, second)
    assert torch.equal(first[:, 3:], extract(first_images, ["fft", "lbp"]))


def test_backend_errors(monkeypatch):
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="auto, torch, kernels"):
        extract(images, ["fft"], backend="numpy")
    monkeypatch.setattr(lbp_module, "LBP_EXACT_ROWS", 8)  # taller images take the float64 LBP path
    monkeypatch.setitem(cpu_module.FUSED_MAX_ROWS, "lbp", 8)  # ... and not the fused kernel
    with pytest.raises(ValueError, match="at most 8 rows"):
        extract(images, ["lbp"], backend="kernels")
    assert torch.equal(extract(images, ["lbp"]), extract(images, ["lbp"], backend="torch"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", FEATURES.names())
def test_batch_equals_per_image(name, backend):
    images = torch.cat([torch.rand(3, 3, 33, 50), natural("coffee", 33, 50)])
    batched = extract(images, [name], backend=backend)
    single = torch.cat([extract(image[None], [name], backend=backend) for image in images])
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-7)
    if name != "fft":  # integer pipelines: bit-identical
        assert torch.equal(batched, single)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", FEATURES.names())
def test_cpu_chunking_does_not_change_results(name, backend, monkeypatch):
    images = torch.rand(7, 3, 20, 30)
    whole, whole_grey = extract(images, [name], backend=backend), grey_levels(images)
    module, chunk = (cpu_module, "_KERNEL_CHUNK_PIXELS") if backend == "kernels" else (grey_module, "CPU_CHUNK_PIXELS")
    monkeypatch.setattr(module, chunk, 2 * 20 * 30)  # 2 images per chunk
    torch.testing.assert_close(extract(images, [name], backend=backend), whole, rtol=0, atol=0)
    assert torch.equal(grey_levels(images), whole_grey)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", FEATURES.names())
def test_not_differentiable_and_autocast_safe(name, backend):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    plain = extract(images, [name], backend=backend)
    assert not plain.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = extract(images, [name], backend=backend)
    assert under_amp.dtype == torch.float32
    torch.testing.assert_close(under_amp, plain, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_output_dtype_follows_input(dtype, backend):
    images = torch.rand(2, 3, 16, 16)
    out = extract(images.to(dtype), ["sobel", "fft", "lbp"], backend=backend)
    assert out.dtype == dtype and out.shape == (2, 3, 16, 16)
    reference = extract(images.to(dtype).float(), ["sobel", "fft", "lbp"], backend=backend)
    torch.testing.assert_close(out.float(), reference.to(dtype).float(), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images = torch.cat([torch.rand(3, 3, 64, 80), natural("astronaut", 64, 80)])
    cpu = extract(images, ["sobel", "fft", "lbp"], backend="torch")  # the same ops
    gpu = extract(images.cuda(), ["sobel", "fft", "lbp"])
    assert gpu.device.type == "cuda"
    gpu = gpu.cpu()
    torch.testing.assert_close(gpu[:, 0], cpu[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(gpu[:, 1], cpu[:, 1], rtol=1e-5, atol=FFT_ATOL)
    assert torch.equal(gpu[:, 2], cpu[:, 2])


# ---- extract / canonical_order / flops API ---------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_repeated_names_copy_the_channel(backend):
    images = torch.rand(2, 3, 20, 22)
    out = extract(images, ["fft", "lbp", "fft", "magnitude", "sobel"], backend=backend)
    assert torch.equal(out[:, 0], out[:, 2]) and torch.equal(out[:, 3], out[:, 4])
    assert torch.equal(out, extract(images, ["fft", "lbp", "fft", "sobel", "sobel"],
                                    backend=backend))  # fmt: skip


def test_extract_order_alias_and_channels():
    images = torch.rand(2, 3, 20, 22)
    out = extract(images, ["lbp", "magnitude", "fft"])
    assert out.shape == (2, 3, 20, 22)
    assert torch.equal(out[:, 0], extract(images, ["lbp"])[:, 0])
    assert torch.equal(out[:, 1], extract(images, ["sobel"])[:, 0])
    assert torch.equal(out[:, 2], extract(images, ["fft"])[:, 0])


def test_extract_empty_and_errors():
    images = torch.rand(2, 3, 20, 22)
    assert extract(images, []).shape == (2, 0, 20, 22)
    with pytest.raises(KeyError, match="registered: .*fft.*lbp.*magnitude.*sobel"):
        extract(images, ["sobel", "dct"])
    with pytest.raises(KeyError, match="rgb"):
        extract(images, ["rgb"])
    with pytest.raises(ValueError, match="at least 4x4"):
        extract(torch.rand(1, 3, 3, 20), ["fft", "sobel"])
    assert extract(torch.rand(1, 3, 3, 20), ["fft", "lbp"]).shape == (1, 2, 3, 20)


def test_canonical_order():
    assert canonical_order(["lbp", "magnitude", "fft"]) == ("sobel", "fft", "lbp")
    assert canonical_order(["fft"]) == ("fft",)
    assert canonical_order([]) == ()
    with pytest.raises(ValueError, match="duplicate"):
        canonical_order(["sobel", "magnitude"])
    with pytest.raises(KeyError, match="registered"):
        canonical_order(["rgb", "fft"])


def test_feature_flops():
    by_name = feature_flops_by_name(["lbp", "magnitude", "fft"], 224, 224)
    assert list(by_name) == ["sobel", "fft", "lbp"]
    assert all(isinstance(v, int) and v > 0 for v in by_name.values())
    assert feature_flops(["sobel", "fft", "lbp"], 224, 224) == sum(by_name.values())
    assert by_name["sobel"] == 57 * 224 * 224
    assert feature_flops([], 224, 224) == 0
    assert feature_flops(["fft"], 448, 448) > 4 * feature_flops(["fft"], 224, 224)


# ---- exactness arguments of the fast paths (issue 13) ------------------------------------------


def worst_case_greys(size: tuple[int, int]) -> list[np.ndarray]:
    """Grey images that stress the arithmetic: flat extremes, full-contrast patterns, noise."""
    rng = np.random.default_rng(13)
    rows, cols = np.indices(size)
    return [
        np.full(size, 255, np.uint8),
        np.full(size, 0, np.uint8),
        ((rows + cols) % 2 * 255).astype(np.uint8),  # checkerboard
        ((cols // 3) % 2 * 255).astype(np.uint8),  # vertical stripes
        ((rows % 7 < 3) * 255).astype(np.uint8),  # horizontal stripes, period 7
        rng.integers(0, 256, size).astype(np.uint8),
        rng.choice(np.array([0, 255], np.uint8), size),  # binary noise: largest gradients
        np.where(rng.random(size) < 0.01, 255, 0).astype(np.uint8),  # sparse impulses
    ]


@pytest.mark.parametrize("size", [(224, 224), (64, 48), (31, 47)])
def test_sobel_roberts_cross_within_float32_bound(size):
    # P, M are exact integers; only the last five float32 roundings remain, <= ~2.4e-7 relative.
    greys = worst_case_greys(size)
    images = torch.cat([grey_to_rgb(g) for g in greys])
    ours = extract(images, ["sobel"])[:, 0].double().numpy()
    for i, grey in enumerate(greys):
        np.testing.assert_allclose(ours[i], ref_sobel(grey), rtol=3e-7, atol=0)


@pytest.mark.parametrize("size", [(224, 224), (64, 48), (48, 64), (31, 47), (30, 31)])
def test_fft_worst_cases_match_numpy(size):
    greys = worst_case_greys(size)
    images = torch.cat([grey_to_rgb(g) for g in greys])
    ours = extract(images, ["fft"])[:, 0].double().numpy()
    tiny = 20 * np.log(1e-6) / 255  # |z| < 1e-6: round-off level for NumPy (true value 0)
    for i, grey in enumerate(greys):
        expected = ref_fft(grey)
        resolved = expected > tiny  # NumPy leaves ~1e-10 where the exact coefficient is 0
        np.testing.assert_allclose(ours[i][resolved], expected[resolved], rtol=1e-4, atol=FFT_ATOL)
        assert np.all(ours[i][~resolved] <= tiny)


@pytest.mark.parametrize("size", [(224, 224), (64, 48), (2, 2), (6, 4)])
def test_fft_modulated_half_spectrum_is_the_shifted_spectrum(size):
    # (-1)^(n1 + n2) modulation + Hermitian mirror == fftshift(|fft2|), checked in float64.
    x = torch.rand(3, *size, dtype=torch.float64)
    half = torch.fft.rfft2(x * fft_module._checkerboard(*size, x.device)).abs()
    out = torch.empty_like(x)
    fft_module._shifted_from_half(half, 1.0, out)
    expected = np.abs(np.fft.fftshift(np.fft.fft2(x.numpy()), axes=(1, 2)))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fft_float32_tail_within_bound():
    # Everything after the float64 transform runs in float32: compare with a float64 tail on the
    # same (centred) transform; the argued bound is ~2e-8 absolute plus the output's own rounding.
    images = torch.cat([torch.rand(4, 3, 64, 48), natural("camera", 64, 48)])
    grey = grey_levels(images)
    ours = extract(images, ["fft"])[:, 0].double()
    centred = grey.double() - grey.double().mean(dim=(1, 2), keepdim=True).round()
    magnitude = torch.fft.fftshift(torch.fft.fft2(centred), dim=(1, 2)).abs()
    magnitude[:, 32, 24] = grey.double().sum(dim=(1, 2))
    expected = 20 * torch.log(magnitude + 1e-9) / 255
    torch.testing.assert_close(ours, expected, rtol=2e-7, atol=5e-8)


@pytest.mark.parametrize("compat", ["exact", "authors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grey_quantisation_at_level_boundaries(compat, dtype):
    # Values next to k / 255 and k + 0.5 / 255: truncation (authors) and rounding (exact) must
    # match NumPy's cast bit for bit, in the input's precision.
    k = torch.arange(256, dtype=dtype)
    base = torch.cat([k / 255, (k + 0.5) / 255])
    near = torch.cat([base, torch.nextafter(base, base + 1), torch.nextafter(base, base - 1)])
    near = near.clamp(-0.01, 1.01)
    images = near.view(1, 1, 1, -1).expand(1, 3, 1, near.numel()).contiguous()
    ours = grey_levels(images, compat)[0, 0].to(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, ref_grey(images[0], compat)[0])


def test_a_channel_without_a_kernel_leaves_the_others_on_the_fused_path(monkeypatch):
    """Per-channel dispatch: a registered channel the fused CPU kernel does not compute takes the
    torch ops alone; sobel, fft and lbp stay on the kernel and give the same values as without it."""
    def inverted(grey, out, workspace):  # 1 - Y / 255, a channel with no kernel
        torch.div(grey, 255.0, out=out).neg_().add_(1.0)

    monkeypatch.setitem(FEATURES._entries, "inverted", Feature(inverted, lambda h, w: 2 * h * w, "Inv."))
    calls = []
    real = cpu_module.extract_fused
    monkeypatch.setattr(extract_module, "extract_fused", lambda images, first, *a: (calls.append(dict(first)), real(images, first, *a)))
    images = torch.rand(3, 3, 24, 40)
    mixed = extract(images, ["sobel", "inverted", "fft", "lbp"])
    assert calls == [{"sobel": 0, "fft": 2, "lbp": 3}]
    fused_alone = extract(images, ["sobel", "fft", "lbp"])
    assert torch.equal(mixed[:, [0, 2, 3]], fused_alone)
    assert torch.equal(mixed[:, 1], 1.0 - grey_levels(images) / 255.0)
    with pytest.raises(ValueError, match="backend 'kernels' needs"):
        extract(images, ["sobel", "inverted"], backend="kernels")
