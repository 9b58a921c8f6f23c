"""The built-in synthetic benchmark: a small real/fake image set generated locally and
deterministically, so the suite runs end to end without downloading anything. It stands in for
the benchmarks of Lanzino et al., "Faster Than Lies: Real-time Deepfake Detection using Binary
Neural Networks", CVPRW 2024 (COCOFake, DFFD, CIFAKE); it is not one of them, and every
``describe()`` of it says so.

    real: random crops (position, log-uniform scale, flips) of the natural photographs that ship
          with scikit-image, resized to R x R with antialiasing
    fake: another crop x of the same photographs -> downsampled by 2 or 4 -> one of 4 randomly
          initialised "generators" (decoders with stride-2 transposed convolutions, kernel 4 or 3,
          or nearest-neighbour upsampling + 3x3 conv; fixed per seed, like a GAN family)
          -> high-passed decoder output added to a bilinear upsampling of the low-resolution image
          -> per-channel mean/std matched to x -> blended with x by 1 - 0.95 * difficulty
          -> per-channel mean/std matched to x again

Fakes thus carry what detectors exploit in real generators (lost high frequencies, periodic
upsampling artifacts, spectral peaks), weaker as ``difficulty`` goes from 0 to 1, while per-image
channel means and standard deviations follow the real images' distribution (no trivial statistic
separates the classes). Grey photographs give grey reals and grey fakes.

Files are cached under ``$BNN_CACHE_DIR/synthetic/<param-hash>/`` (default ``~/.cache/bnn``) in the
``folder`` layout ``{train,val,test}/{REAL,FAKE}/*.png`` with a ``meta.json`` of the parameters.
A generation is written to a temporary folder and renamed when complete.

This file is longer than 400 lines on purpose: it is one concern (the benchmark generator and
its reader), most of it the generator families and their documentation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.folder import class_items
from bnn.data.layout import CACHE_ENV, cache_dir, check_split
from bnn.errors import KeyedValueError

log = logging.getLogger(__name__)

VERSION = 1  # bump when the generated pixels change: old caches are then never reused
META_FILE = "meta.json"
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15}  # test: the rest (0.15)
COLOUR_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
GREY_PHOTOS = ("camera", "coins", "moon", "clock", "grass", "gravel", "brick")
GENERATORS = (("tconv4", 2), ("tconv3", 4), ("nearest", 2), ("tconv4", 4))  # (upsampling, factor)
# The generator kinds by name (a fake's file name ends in ``_g<index>``), its per-source name.
GENERATOR_NAMES = tuple(f"{kind}_x{factor}" for kind, factor in GENERATORS)
LAYOUT = "<cache>/synthetic/<param-hash>/{train,val,test}/{REAL,FAKE}/*.png + meta.json"
SOURCE = "generated locally by bnn.data.synthetic from scikit-image's bundled photographs"

_WIDTH = 16  # channels inside the decoders
_TRACE_GAIN = 0.35  # decoder trace amplitude, relative to the source patch's std
_MIN_STD = 0.03  # crops flatter than this (sky, black borders) are redrawn
_MAX_TRIES = 20
_BATCH = 256


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines the generated files.

    Attributes:
        seed: Seed of the crops and of the generator bank.
        count: Images over all splits, half real and half fake in each split.
        resolution: Side of the square images in pixels.
        difficulty: 0 = strong generator traces, 1 = almost none.
    """

    seed: int = 0
    count: int = 2000
    resolution: int = 64
    difficulty: float = 0.5

    def __post_init__(self) -> None:
        if self.count < 6:
            raise ValueError(f"count must be >= 6 (two images per split), got {self.count}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must lie in [0, 1], got {self.difficulty}")

    def key(self) -> str:
        """12 hex digits naming the cache folder (includes ``VERSION``)."""
        text = json.dumps({"version": VERSION, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def as_dict(self) -> dict[str, int | float]:
        return {
            "seed": int(self.seed),
            "count": int(self.count),
            "resolution": int(self.resolution),
            "difficulty": float(self.difficulty),
        }


def split_counts(count: int) -> dict[str, int]:
    """Images per split: 70/15/15 of ``count``, train and val rounded to even numbers."""
    counts = {split: 2 * round(count * fraction / 2) for split, fraction in SPLIT_FRACTIONS.items()}
    counts["test"] = count - sum(counts.values())
    return counts


def generate_synthetic(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    count: int = 2000,
    resolution: int = 64,
    difficulty: float = 0.5,
) -> Path:
    """Returns the folder of the synthetic benchmark with these parameters, generating it if needed.

    Args:
        root: Folder holding one sub-folder per parameter hash; ``None`` means
            ``$BNN_CACHE_DIR/synthetic`` (default ``~/.cache/bnn/synthetic``).
        seed: Seed of the crops and of the generator bank.
        count: Images over all splits (70/15/15), half real and half fake in each split.
        resolution: Side of the square images.
        difficulty: 0 = strong generator traces, 1 = almost none.

    Returns:
        ``<root>/<param-hash>``, holding ``{train,val,test}/{REAL,FAKE}/*.png`` and ``meta.json``.
    """
    params = SyntheticParams(seed, count, resolution, difficulty)
    base = Path(root).expanduser() if root is not None else cache_dir() / "synthetic"
    target = base / params.key()
    if _is_complete(target, params):
        return target
    base.mkdir(parents=True, exist_ok=True)
    temp = base / f".tmp-{params.key()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("generating the synthetic benchmark %s in %s", params.as_dict(), target)
    try:
        _render(params, temp)
        if target.exists() and not _is_complete(target, params):
            shutil.rmtree(target)  # a folder without valid meta.json: not ours to trust
        try:
            os.rename(temp, target)
        except OSError:
            if not _is_complete(target, params):  # lost a race to a finished twin: fine
                raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return target


def _is_complete(folder: Path, params: SyntheticParams) -> bool:
    """Whether ``folder`` holds a finished generation with exactly these parameters."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == VERSION and meta.get("params") == params.as_dict()


def _render(params: SyntheticParams, out: Path) -> None:
    """Writes all images and then ``meta.json`` into ``out``."""
    counts = split_counts(params.count)
    with _one_thread(), torch.inference_mode():
        photos = _load_photos()
        decoders = _build_decoders(params.seed)
        crops = torch.Generator().manual_seed(params.seed)
        strength = 1.0 - 0.95 * params.difficulty
        bar = tqdm(
            total=params.count,
            desc="synthetic benchmark",
            unit="img",
            disable=not sys.stderr.isatty(),
        )
        for split, n in counts.items():
            n_real = n // 2
            n_fake = n - n_real
            for label in ("REAL", "FAKE"):
                (out / split / label).mkdir(parents=True, exist_ok=True)
            real, _ = _sample_patches(photos, n_real, params.resolution, crops)
            for i in range(n_real):
                _save(real[i], out / split / "REAL" / f"{i:05d}.png")
                bar.update()
            source, grey = _sample_patches(photos, n_fake, params.resolution, crops)
            which = torch.randint(len(decoders), (n_fake,), generator=crops)
            for k, decoder in enumerate(decoders):
                index = torch.nonzero(which == k).flatten()
                if len(index) == 0:
                    continue
                for chunk in index.split(_BATCH):
                    fakes = _fake(source[chunk], grey[chunk], decoder, GENERATORS[k][1], strength)
                    for i, image in zip(chunk.tolist(), fakes, strict=True):
                        _save(image, out / split / "FAKE" / f"{i:05d}_g{k}.png")
                        bar.update()
        bar.close()
    meta = {
        "dataset": "synthetic",
        "version": VERSION,
        "params": params.as_dict(),
        "splits": {s: {"real": n // 2, "fake": n - n // 2} for s, n in counts.items()},
        "photos": [*COLOUR_PHOTOS, *GREY_PHOTOS],
        "generators": [f"{kind} x{factor}" for kind, factor in GENERATORS],
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Runs torch on one thread, so float reductions (and saved pixels) do not depend on cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _load_photos() -> list[tuple[Tensor, bool]]:
    """scikit-image's bundled photographs as (3, H, W) float in [0, 1], with a grey flag."""
    import skimage.data

    photos = []
    for name, grey in [(n, False) for n in COLOUR_PHOTOS] + [(n, True) for n in GREY_PHOTOS]:
        array = getattr(skimage.data, name)()  # uint8, (H, W, 3) or (H, W)
        image = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
        image = image.expand(3, *image.shape) if grey else image.permute(2, 0, 1)
        photos.append((image.contiguous(), grey))
    return photos


def _sample_patches(
    photos: list[tuple[Tensor, bool]], n: int, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` random crops resized to ``size``: images (n, 3, size, size) and grey flags (n,)."""
    images = torch.empty(n, 3, size, size)
    grey = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        images[i], grey[i] = _sample_patch(photos, size, generator)
    return images, grey


def _sample_patch(
    photos: list[tuple[Tensor, bool]], size: int, generator: torch.Generator
) -> tuple[Tensor, bool]:
    """One crop: random photo, log-uniform side in [size, short side / 2], position and flips."""

    def uniform() -> float:
        return torch.rand((), generator=generator).item()

    for _ in range(_MAX_TRIES):
        photo, grey = photos[int(uniform() * len(photos))]
        _, height, width = photo.shape
        short = min(height, width)
        low, high = math.log(size), math.log(max(size, short // 2))
        side = min(short, round(math.exp(low + (high - low) * uniform())))
        top = int(uniform() * (height - side + 1))
        left = int(uniform() * (width - side + 1))
        crop = photo[None, :, top : top + side, left : left + side]  # (1, 3, side, side)
        patch = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]
        if uniform() < 0.5:
            patch = patch.flip(-1)
        if uniform() < 0.5:
            patch = patch.flip(-2)
        patch = patch.clamp(0.0, 1.0)
        if patch.std() >= _MIN_STD:
            break
    return patch, grey


def _build_decoders(seed: int) -> list[nn.Module]:
    """The bank of randomly initialised upsampling decoders, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(f"decoders:{seed}".encode()).digest()[:7])
    )
    return [_decoder(kind, factor, generator) for kind, factor in GENERATORS]


def _decoder(kind: str, factor: int, generator: torch.Generator) -> nn.Module:
    """3 -> 16 channels, log2(factor) x2 upsampling stages, 16 -> 3 channels (1x1), no biases."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, _WIDTH, 3, padding=1, padding_mode="replicate", bias=False)
    ]
    layers.append(nn.LeakyReLU(0.2))
    for _ in range(int(math.log2(factor))):
        if kind == "tconv4":  # even overlap, but 4 different tap sums per 2x2 phase
            layers.append(nn.ConvTranspose2d(_WIDTH, _WIDTH, 4, stride=2, padding=1, bias=False))
        elif kind == "tconv3":  # uneven overlap: the classic checkerboard
            layers.append(
                nn.ConvTranspose2d(
                    _WIDTH, _WIDTH, 3, stride=2, padding=1, output_padding=1, bias=False
                )
            )
        else:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(
                nn.Conv2d(_WIDTH, _WIDTH, 3, padding=1, padding_mode="replicate", bias=False)
            )
        layers.append(nn.LeakyReLU(0.2))
    layers.append(nn.Conv2d(_WIDTH, 3, 1, bias=False))
    decoder = nn.Sequential(*layers).eval()
    for weight in decoder.parameters():
        fan_in = weight[0].numel()
        weight.copy_(torch.randn(weight.shape, generator=generator) / math.sqrt(fan_in))
    return decoder


def _fake(x: Tensor, grey: Tensor, decoder: nn.Module, factor: int, strength: float) -> Tensor:
    """Fakes from source patches (see the module docstring).

    Args:
        x: Source patches (N, 3, R, R) in [0, 1].
        grey: (N,) whether a patch is grey (its fake stays grey).
        decoder: One generator of the bank.
        factor: Its upsampling factor.
        strength: Share of the generated image in the blend with ``x`` (1 - 0.95 * difficulty).

    Returns:
        (N, 3, R, R) in [0, 1].
    """
    size = x.shape[-1]
    low = F.interpolate(x, size=math.ceil(size / factor), mode="bilinear", antialias=True)
    smooth = F.interpolate(low, size=(size, size), mode="bilinear")  # (N, 3, R, R)
    out = decoder(low)[..., :size, :size]  # (N, 3, R, R)
    trace = out - F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    trace = trace / trace.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    generated = smooth + _TRACE_GAIN * x.std(dim=(1, 2, 3), keepdim=True) * trace
    generated = torch.where(grey[:, None, None, None], generated.mean(1, keepdim=True), generated)
    generated = _match_stats(generated, x)
    return _match_stats(x + strength * (generated - x), x).clamp(0.0, 1.0)


def _match_stats(image: Tensor, reference: Tensor) -> Tensor:
    """``image`` with the per-image, per-channel mean and std of ``reference`` (N, 3, H, W)."""
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    ref_mean = reference.mean(dim=(2, 3), keepdim=True)
    ref_std = reference.std(dim=(2, 3), keepdim=True)
    return (image - mean) / std * ref_std + ref_mean


def _save(image: Tensor, path: Path) -> None:
    """(3, R, R) float in [0, 1] -> 8-bit RGB PNG."""
    array = (image.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(array, mode="RGB").save(path)


def read_synthetic(
    split: str,
    root: str | os.PathLike | None,
    *,
    seed: int = 0,
    count: int = 2000,
    image_size: int = 64,
    difficulty: float = 0.5,
    generators: list[str] | None = None,
) -> Listing:
    """Lists one split of the synthetic benchmark, generating it first if it is not cached.

    Each fake's source is its generator kind (``GENERATOR_NAMES``: ``tconv4_x2``, ``tconv3_x4``,
    ``nearest_x2``, ``tconv4_x4``), each real's ``real``. ``generators`` keeps the fakes of those
    kinds only (all reals stay): train on some kinds and evaluate on the others
    (leave-one-generator-out) from one generated set.

    Args:
        split: ``train``, ``val`` or ``test`` (70/15/15 of ``count``).
        root: Folder of the parameter-hash folders; ``None`` means ``$BNN_CACHE_DIR/synthetic``.
        seed: Generation seed.
        count: Images over all splits.
        image_size: Side of the generated images (``resolution`` of ``generate_synthetic``; the
            dataset's own ``resolution`` then resizes them like any other data).
        difficulty: 0 = strong generator traces, 1 = almost none.
        generators: Generator kinds whose fakes are listed; ``None``: all.

    Raises:
        ValueError: An unknown generator kind (the message lists the valid ones).
    """
    check_split(split)
    kinds = _check_generators(generators)
    folder = generate_synthetic(
        root, seed=seed, count=count, resolution=image_size, difficulty=difficulty
    )
    items = class_items(folder / split, recursive=False, layout=LAYOUT, env_var=None, source=SOURCE)
    sources = [generator_of(path) if label == 1 else "real" for path, label in items]
    if kinds is not None:
        kept = [i for i, source in enumerate(sources) if source == "real" or source in kinds]
        items, sources = [items[i] for i in kept], [sources[i] for i in kept]
    what = (
        f"synthetic benchmark (generated locally, seed={seed}, difficulty={difficulty}, "
        f"{count} images of {image_size}px"
        + (f", fakes of {'+'.join(sorted(kinds))} only" if kinds is not None else "") + ")"
    )
    return Listing(items, [folder], f"{what} at {folder}", sources)


def generator_of(path: str | os.PathLike) -> str:
    """The generator kind of a fake file written by ``generate_synthetic`` (``..._g<k>.png``)."""
    stem = Path(path).stem
    index = stem.rsplit("_g", 1)[-1]
    if "_g" not in stem or not index.isdigit() or int(index) >= len(GENERATOR_NAMES):
        raise ValueError(f"'{path}' is not a fake written by the synthetic benchmark (<n>_g<k>.png)")
    return GENERATOR_NAMES[int(index)]


def _check_generators(generators: list[str] | None) -> set[str] | None:
    if generators is None:
        return None
    if isinstance(generators, str) or not isinstance(generators, (list, tuple)) or not generators:
        raise ValueError(f"generators must be a non-empty list of {', '.join(GENERATOR_NAMES)}; got {generators!r}")
    unknown = [g for g in generators if g not in GENERATOR_NAMES]
    if unknown:
        raise ValueError(f"unknown generator kind(s) {', '.join(map(str, unknown))}; valid: {', '.join(GENERATOR_NAMES)}")
    return set(generators)


def check_params(params: dict) -> None:
    """Checks ``generators`` where a study or config writes it (``DatasetSpec.check_params``).

    Raises:
        KeyedValueError: An unknown generator kind, or not a non-empty list.
    """
    if "generators" in params:
        try:
            _check_generators(params["generators"])
        except ValueError as err:
            raise KeyedValueError(str(err), key="generators", detail=str(err)) from None


DATASETS.add("synthetic", DatasetSpec(read_synthetic, CACHE_ENV, LAYOUT, SOURCE, check_params))
