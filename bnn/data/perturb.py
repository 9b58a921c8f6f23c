"""Image degradations of the deepfake-robustness protocol: JPEG and WebP re-encoding, Gaussian
blur and down-/up-resizing, alone or chained, as CNNDetection (Wang et al., "CNN-generated images are
surprisingly easy to spot... for now", CVPR 2020) and GenImage (Zhu et al., NeurIPS 2023) report
detectors under them.

Test time: a ``Perturbation`` is one fixed degradation at one level, applied to each decoded RGB
image (PIL, any size; the output has the same size and mode) before the evaluation preprocessing.
``parse_robustness`` reads a study file's ``robustness:`` list into them; ``Perturbation.key``
names the metrics (``robust_<key>_<metric>`` in ``bnn.protocol``). Each single-level kind is one
``PerturbationKind`` subclass registered in ``PERTURBATION_KINDS``, which owns everything about it
(level check, key, severity, descriptions, plot labels, the function): adding a kind is one class
here plus its test.

Training time: ``RandomBlur`` and ``RandomJPEG`` are CNNDetection's training augmentation (blur
sigma ~ U[0, 3] with probability 0.5, then JPEG quality ~ U{30, ..., 100} with probability 0.5),
drawn from torch's global RNG (``bnn.data.transforms.build_transform`` applies them when their
probability is above 0).

Differences from CNNDetection's code, all deliberate: the JPEG codec is always Pillow's (theirs
draws OpenCV or PIL per image), and the blur kernel is truncated at 3 sigma with reflected borders
(torchvision's ``gaussian_blur``; their ``scipy.ndimage.gaussian_filter`` truncates at 4 sigma).

This file is longer than 400 lines on purpose: it is one concern (the degradations, their
parsing and validation at test time and their training-time augmentation twins).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, NoReturn

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from bnn.errors import KeyedValueError
from bnn.registry import Registry

MAX_SIGMA = 10.0  # largest blur sigma, in pixels (kernel side 2 * ceil(3 * 10) + 1 = 61)
CHAIN = "chain"  # the kind that composes the others (``Perturbation.steps``)
STEP_KEYS = ("kind", "level")  # keys of a chain step in a study file
_NAME = re.compile(r"[A-Za-z0-9_]+")


def format_level(x: float) -> str:
    """A level as it appears in a metric name: integers without decimals and ``p`` for the decimal
    point (75 -> ``75``, 1.0 -> ``1``, 0.5 -> ``0p5``, 1.5 -> ``1p5``, 0.25 -> ``0p25``); the
    shortest decimal that reads back as the same float, never an exponent (1e-5 -> ``0p00001``).
    A negative level (no perturbation has one) gets an ``m`` prefix. ``parse_level`` inverts it.

    Raises:
        ValueError: ``x`` is a boolean, not a real number, or not finite.
    """
    return _plain(x).replace("-", "m").replace(".", "p")


def parse_level(text: str) -> float:
    """The level ``format_level`` wrote as ``text`` (``0p5`` -> 0.5, ``75`` -> 75.0).

    Raises:
        ValueError: ``text`` is not of that form.
    """
    if not re.fullmatch(r"m?[0-9]+(p[0-9]+)?", text):
        raise ValueError(f"not a level of a metric name: {text!r}")
    return float(text.replace("p", ".").replace("m", "-"))


def _plain(x: float) -> str:
    """``x`` as a plain decimal: 75, 0.5, 1.5 (``format_level`` with a decimal point)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"a level must be a finite number, got {x!r}")
    if float(x).is_integer():
        return str(int(x))
    return format(Decimal(repr(float(x))), "f")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ the kinds


class PerturbationKind:
    """One kind of test-time degradation with a single level: everything the suite knows about it
    (its level check, metric key, severity axis, descriptions for logs, plots and tables, and the
    function itself). A subclass registered in ``PERTURBATION_KINDS`` is a new kind everywhere: in
    study files (``robustness:`` entries and chain steps), metric names, the record's
    ``bnn.robust.<key>`` tags, the robustness table and the robustness curves.

    Class attributes:
        name: The ``kind:`` of a study file and the first word of its key (``jpeg`` -> ``jpeg_75``).
        levels_noun: What a ``levels:`` list holds, for errors ("JPEG qualities").
        short: The kind in plot labels (``JPEG`` -> ``JPEG q75``).
        title: The curves' panel title.
        axis: The curves' x-axis label (the severity, growing with the damage).
        note: The robustness table's note on the kind.
        examples: Two valid levels, the second more damaging (docs and the contract tests).
    """

    name: ClassVar[str]
    levels_noun: ClassVar[str]
    short: ClassVar[str]
    title: ClassVar[str]
    axis: ClassVar[str]
    note: ClassVar[str]
    examples: ClassVar[tuple[float, float]]

    def valid(self) -> str:
        """What a valid level is, as an error message starts ("JPEG quality must be ...")."""
        raise NotImplementedError

    def accepts(self, level: Any) -> bool:
        """Whether ``level`` is a valid level (booleans never are)."""
        raise NotImplementedError

    def coerce(self, level: float) -> float:
        """A valid level as stored in a ``Perturbation``: a float unless the kind says otherwise."""
        return float(level)

    def severity(self, level: float) -> float:
        """The x-axis of the robustness curves: 0 would be no damage, larger is worse."""
        raise NotImplementedError

    def describe(self, level: float) -> str:
        """One line for logs, reports and the record's tag (``JPEG quality 75``)."""
        raise NotImplementedError

    def tick(self, level: float) -> str:
        """The level on a plot axis or a table header (``q75``)."""
        raise NotImplementedError

    def apply(self, image: Image.Image, level: float) -> Image.Image:
        """RGB image -> the degraded RGB image of the same size."""
        raise NotImplementedError

    def level_error(self, level: Any) -> str | None:
        """Why ``level`` is not valid, naming the valid values; ``None`` when it is."""
        if self.accepts(level):
            return None
        suffix = " (booleans are not numbers)" if isinstance(level, bool) else ""
        return f"{self.valid()}, got {level!r}{suffix}"


PERTURBATION_KINDS: Registry[PerturbationKind] = Registry("perturbation kind")


def _registered(cls: type[PerturbationKind]) -> type[PerturbationKind]:
    """Class decorator: registers one instance of the kind under its ``name``."""
    PERTURBATION_KINDS.add(cls.name, cls())
    return cls


def _quality_ok(level: Any) -> bool:
    return _is_number(level) and float(level).is_integer() and 1 <= level <= 100


class _Codec(PerturbationKind):
    """A lossy codec at an integer quality 1..100, encoded and decoded in memory by Pillow."""

    format: ClassVar[str]

    def valid(self) -> str:
        return f"{self.short} quality must be an integer in 1..100"

    def accepts(self, level: Any) -> bool:
        return _quality_ok(level)

    def coerce(self, level: float) -> int:
        return int(level)

    def severity(self, level: float) -> float:
        return float(100 - level)

    def describe(self, level: float) -> str:
        return f"{self.short} quality {int(level)}"

    def tick(self, level: float) -> str:
        return f"q{level:g}"

    def apply(self, image: Image.Image, level: float) -> Image.Image:
        return reencode(image, self.format, int(level))


@_registered
class JPEGKind(_Codec):
    """JPEG at quality ``level``: Pillow's libjpeg, chroma subsampling left at its default (4:2:0,
    so colour is lossy even at quality 100), baseline, not optimised (CNNDetection, Wang et al.
    CVPR 2020; GenImage, Zhu et al. NeurIPS 2023)."""

    name, format, short = "jpeg", "JPEG", "JPEG"
    levels_noun = "JPEG qualities"
    title, axis = "JPEG", "severity: 100 − JPEG quality"
    note = "JPEG qN: each test image re-encoded by Pillow at quality N"
    examples = (90, 30)


@_registered
class WebPKind(_Codec):
    """Lossy WebP at quality ``level`` (Pillow's libwebp, its default method 4), the codec of
    many social networks' image pipelines."""

    name, format, short = "webp", "WEBP", "WebP"
    levels_noun = "WebP qualities"
    title, axis = "WebP", "severity: 100 − WebP quality"
    note = "WebP qN: each test image re-encoded by Pillow (libwebp, lossy) at quality N"
    examples = (90, 30)


@_registered
class BlurKind(PerturbationKind):
    """Gaussian blur of standard deviation ``level`` pixels, 0 < sigma <= 10 (``blur``)."""

    name, short = "blur", "blur"
    levels_noun = "blur sigmas"
    title, axis = "Gaussian blur", "severity: blur σ (pixels)"
    note = "blur σs: Gaussian blur of standard deviation s pixels"
    examples = (0.5, 2.0)

    def valid(self) -> str:
        return f"blur sigma must be a number in (0, {_plain(MAX_SIGMA)}] (pixels)"

    def accepts(self, level: Any) -> bool:
        return _is_number(level) and math.isfinite(level) and 0 < level <= MAX_SIGMA

    def severity(self, level: float) -> float:
        return float(level)

    def describe(self, level: float) -> str:
        return f"Gaussian blur sigma {_plain(level)}"

    def tick(self, level: float) -> str:
        return f"σ{level:g}"

    def apply(self, image: Image.Image, level: float) -> Image.Image:
        return blur(image, float(level))


@_registered
class ResizeKind(PerturbationKind):
    """Bilinear down-scale by ``level`` in (0, 1), then back to the original size
    (``resize_and_back``): the frequencies above the reduced Nyquist rate are lost."""

    name, short = "resize", "resize"
    levels_noun = "resize scales"
    title, axis = "resize and back", "severity: 1 / resize scale"
    note = "resize ×s: down-scaled by s (bilinear) and back to its size"
    examples = (0.5, 0.25)

    def valid(self) -> str:
        return "resize scale must be a number in (0, 1) (down-scale, then back to the original size)"

    def accepts(self, level: Any) -> bool:
        return _is_number(level) and 0 < level < 1

    def severity(self, level: float) -> float:
        return 1.0 / level

    def describe(self, level: float) -> str:
        return f"resize x{_plain(level)} and back"

    def tick(self, level: float) -> str:
        return f"×{level:g}"

    def apply(self, image: Image.Image, level: float) -> Image.Image:
        return resize_and_back(image, float(level))


CHAIN_NOTE = "chain <name>: the study file's chain of these steps, applied in order"


def step_kinds() -> list[str]:
    """The registered single-level kinds (what a chain's steps may be), sorted."""
    return sorted(PERTURBATION_KINDS)


def kinds() -> list[str]:
    """Every kind a study file may name (the single-level kinds and ``chain``), sorted."""
    return sorted([*PERTURBATION_KINDS, CHAIN])


def kind_order() -> list[str]:
    """Kinds in the order tables and figures show them: registration order, chains last."""
    return [*PERTURBATION_KINDS.names(), CHAIN]


def kind_note(kind: str) -> str | None:
    """A table's note on ``kind`` (``JPEG qN: ...``); ``None`` for an unknown kind."""
    if kind == CHAIN:
        return CHAIN_NOTE
    return PERTURBATION_KINDS.get(kind).note if kind in PERTURBATION_KINDS else None


def level_error(kind: str, level: Any) -> str | None:
    """Why ``level`` is not a valid level of a ``kind`` perturbation, naming the valid values;
    ``None`` when it is valid.

    Raises:
        ValueError: ``kind`` is not a registered single-level kind.
    """
    if kind not in PERTURBATION_KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(step_kinds())}")
    return PERTURBATION_KINDS.get(kind).level_error(level)


@dataclass(frozen=True)
class Perturbation:
    """One deterministic test-time degradation of an RGB image; picklable (DataLoader workers).

    Every kind is a pure function of the image: no random number is drawn, so a perturbed test set
    needs no seed and the same input gives the same output bytes (on one machine: the codecs are
    the installed libjpeg/libwebp, and the blur is a float convolution rounded to 8 bits).

    Attributes:
        kind: A registered ``PerturbationKind`` (``jpeg``, ``webp``, ``blur``, ``resize``; each
            class documents its level and function), or ``chain``: ``steps`` applied in order (a
            social-network upload: resize, then JPEG).
        level: The kind's parameter (``None`` for a chain), as its ``coerce`` stores it (an int
            for the codecs, a float otherwise).
        name: A chain's name, letters, digits and ``_`` (its key is ``chain_<name>``); else ``None``.
        steps: A chain's steps, each a single-level perturbation; else empty.

    Raises:
        ValueError: An unknown kind, a bad level, a chain without name or steps, a chain step that
            is itself a chain, or a name/steps on a kind other than ``chain``.
    """

    kind: str
    level: float | None = None
    name: str | None = None
    steps: tuple[Perturbation, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == CHAIN:
            if self.level is not None:
                raise ValueError("a chain has no level: its steps have")
            if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
                raise ValueError(f"a chain needs a name of letters, digits and _, got {self.name!r}")
            steps = tuple(self.steps)
            if not steps:
                raise ValueError(f"chain {self.name}: needs at least one step")
            for step in steps:
                if not isinstance(step, Perturbation) or step.kind == CHAIN:
                    raise ValueError(f"chain {self.name}: each step must be a {'/'.join(step_kinds())} "
                                     f"Perturbation, got {step!r}")
            object.__setattr__(self, "steps", steps)
            return
        if self.kind not in PERTURBATION_KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; valid: {', '.join(kinds())}")
        if self.name is not None or self.steps:
            raise ValueError(f"only a chain has a name and steps, not {self.kind}")
        error = self.spec.level_error(self.level)
        if error is not None:
            raise ValueError(error)
        object.__setattr__(self, "level", self.spec.coerce(self.level))

    @property
    def spec(self) -> PerturbationKind:
        """The registered kind (``PerturbationKind``); a chain has none (``KeyError``)."""
        return PERTURBATION_KINDS.get(self.kind)

    @property
    def key(self) -> str:
        """The metric-name part: ``jpeg_75``, ``blur_1``, ``blur_0p5``, ``resize_0p25``,
        ``chain_<name>`` (levels by ``format_level``; ``from_key`` reads it back)."""
        if self.kind == CHAIN:
            return f"{CHAIN}_{self.name}"
        return f"{self.kind}_{format_level(self.level)}"

    @property
    def severity(self) -> float:
        """An x-axis for plots, growing with the damage (the kind's ``severity``: JPEG 100 -
        quality, blur sigma in pixels, resize 1 / scale); NaN for a chain (no common scale)."""
        return math.nan if self.kind == CHAIN else self.spec.severity(self.level)

    def describe(self) -> str:
        """One line for logs and reports: ``JPEG quality 75``, ``Gaussian blur sigma 1``,
        ``resize x0.5 and back``, ``chain social: resize x0.5 and back, then JPEG quality 75``."""
        if self.kind == CHAIN:
            return f"{CHAIN} {self.name}: " + ", then ".join(step.describe() for step in self.steps)
        return self.spec.describe(self.level)

    def tick(self) -> str:
        """Short level for plot ticks and table headers: ``q75``, ``σ1``, ``×0.5``, the chain's name."""
        return self.name if self.kind == CHAIN else self.spec.tick(self.level)

    def label(self) -> str:
        """``JPEG q75``, ``blur σ1``, ``resize ×0.5``, ``chain social``."""
        return f"{CHAIN} {self.name}" if self.kind == CHAIN else f"{self.spec.short} {self.tick()}"

    def __call__(self, image: Image.Image) -> Image.Image:
        """The degraded image: RGB, the same size as ``image`` (converted to RGB first if needed)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.kind != CHAIN:
            return self.spec.apply(image, self.level)
        for step in self.steps:
            image = step(image)
        return image


def from_key(key: str) -> Perturbation | None:
    """The single-level perturbation whose ``key`` is ``key`` (``jpeg_75``, ``resize_0p5``);
    ``None`` for a chain (its steps are not in its key), an unknown kind or an invalid level."""
    kind, _, level_text = key.partition("_")
    if kind not in PERTURBATION_KINDS:
        return None
    try:
        return Perturbation(kind, parse_level(level_text))
    except ValueError:
        return None


def reencode(image: Image.Image, format: str, quality: int) -> Image.Image:
    """RGB image -> the same image encoded by Pillow in memory as ``format`` (``JPEG``, ``WEBP``)
    at ``quality`` (1..100, Pillow's other settings at their defaults) and decoded again."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=format, quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.convert("RGB")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """RGB image -> the same image encoded as JPEG at ``quality`` (1..100) by Pillow in memory
    (default chroma subsampling, 4:2:0; baseline, not optimised) and decoded again."""
    return reencode(image, "JPEG", quality)


def blur_kernel_size(sigma: float) -> int:
    """Side of the blur kernel for ``sigma`` pixels: 2 * ceil(3 * sigma) + 1 (1 -> 7, 0.5 -> 5)."""
    return 2 * math.ceil(3 * sigma) + 1


def blur(image: Image.Image, sigma: float) -> Image.Image:
    """RGB image -> Gaussian blur of standard deviation ``sigma`` > 0 pixels (torchvision's
    ``gaussian_blur``, kernel ``blur_kernel_size(sigma)``, limited to 2 * side - 1 on each axis so
    the reflected border fits a small image)."""
    width, height = image.size
    k = blur_kernel_size(sigma)
    kernel = [min(k, 2 * width - 1), min(k, 2 * height - 1)]  # [x, y]; odd, as torchvision needs
    return TF.gaussian_blur(image.convert("RGB"), kernel_size=kernel, sigma=[float(sigma)] * 2)


def resize_and_back(image: Image.Image, scale: float) -> Image.Image:
    """RGB image (w, h) -> bilinear down to (round(w * scale), round(h * scale)), at least 1 pixel
    a side, then bilinear back up to (w, h)."""
    width, height = image.size
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    reduced = image.convert("RGB").resize(small, Image.Resampling.BILINEAR)
    return reduced.resize((width, height), Image.Resampling.BILINEAR)


def parse_robustness(entries: Any) -> list[Perturbation]:
    """A study file's ``robustness:`` list -> one ``Perturbation`` per level, in the order given.

    Entry forms::

        {kind: jpeg, levels: [95, 75, 50, 30]}        # JPEG quality, integers 1..100
        {kind: webp, levels: [75]}                    # WebP quality, integers 1..100
        {kind: blur, levels: [1, 2, 3]}               # Gaussian sigma in pixels, (0, 10]
        {kind: resize, levels: [0.5, 0.25]}           # scale in (0, 1), then back up
        {kind: chain, name: social, steps: [{kind: resize, level: 0.5}, {kind: jpeg, level: 75}]}

    Raises:
        KeyedValueError: The first invalid entry; ``key`` is its path relative to the list
            (``[1].kind``, ``[0].levels[2]``, ``[3].steps[0].level``, ``[2].name``) and
            ``detail`` says what would be valid. Also raised for two perturbations with one key
            (``duplicate perturbation jpeg_75``).
    """
    if not isinstance(entries, list | tuple):
        _fail("", f"robustness must be a list of perturbations ({{kind: ..., levels: [...]}}), "
                  f"got {type(entries).__name__}")
    out: list[Perturbation] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"[{i}]"
        for key, perturbation in _parse_entry(entry, where):
            if perturbation.key in seen:
                _fail(key, f"duplicate perturbation {perturbation.key}")
            seen.add(perturbation.key)
            out.append(perturbation)
    return out


def _fail(key: str, detail: str) -> NoReturn:
    raise KeyedValueError(f"{key}: {detail}" if key else detail, key=key, detail=detail)


def _kind_of(entry: Any, where: str, valid: Sequence[str], allowed: Sequence[str] | None) -> str:
    """The entry's kind, after checking that it is a mapping with a known kind and known keys
    (``allowed``; by kind when ``None``: ``kind, name, steps`` for a chain, else ``kind, levels``)."""
    if not isinstance(entry, Mapping):
        _fail(where, f"expected a mapping such as {{kind: jpeg, levels: [75]}}, got {entry!r}")
    if "kind" not in entry:
        _fail(f"{where}.kind", f"missing; valid: {', '.join(valid)}")
    kind = entry["kind"]
    if kind not in valid:
        if kind == CHAIN:
            _fail(f"{where}.kind", f"a chain step cannot be a chain; valid: {', '.join(valid)}")
        _fail(f"{where}.kind", f"unknown kind {kind!r}; valid: {', '.join(valid)}")
    if allowed is None:
        allowed = ("kind", "name", "steps") if kind == CHAIN else ("kind", "levels")
    unknown = [str(k) for k in entry if k not in allowed]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        _fail(f"{where}.{unknown[0]}", f"unknown key{s} {', '.join(unknown)} for kind {kind}; "
                                        f"valid: {', '.join(allowed)}")
    return kind


def _parse_entry(entry: Any, where: str) -> list[tuple[str, Perturbation]]:
    """(path, perturbation) for each level of one entry of the list."""
    kind = _kind_of(entry, where, kinds(), None)
    if kind == CHAIN:
        return [(f"{where}.name", _parse_chain(entry, where))]
    spec = PERTURBATION_KINDS.get(kind)
    levels = entry.get("levels")
    if not isinstance(levels, list | tuple) or not levels:
        _fail(f"{where}.levels", f"levels must be a non-empty list of {spec.levels_noun}, got {levels!r}")
    out = []
    for j, level in enumerate(levels):
        error = spec.level_error(level)
        if error is not None:
            _fail(f"{where}.levels[{j}]", error)
        out.append((f"{where}.levels[{j}]", Perturbation(kind, level)))
    return out


def _parse_chain(entry: Mapping[str, Any], where: str) -> Perturbation:
    name, steps = entry.get("name"), entry.get("steps")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        _fail(f"{where}.name", f"a chain needs a name of letters, digits and _ (its metrics are "
                               f"robust_chain_<name>_...), got {name!r}")
    if not isinstance(steps, list | tuple) or not steps:
        _fail(f"{where}.steps", f"a chain needs steps: a non-empty list of {{kind, level}} with kind "
                                f"{', '.join(step_kinds())}, got {steps!r}")
    parsed = []
    for k, step in enumerate(steps):
        at = f"{where}.steps[{k}]"
        kind = _kind_of(step, at, step_kinds(), STEP_KEYS)
        if "level" not in step:
            _fail(f"{at}.level", f"missing; a {kind} step needs one level")
        error = level_error(kind, step["level"])
        if error is not None:
            _fail(f"{at}.level", error)
        parsed.append(Perturbation(kind, step["level"]))
    return Perturbation(CHAIN, name=name, steps=tuple(parsed))


# ------------------------------------------------------------------------------ training time


def check_sigma_range(value: Any) -> tuple[float, float]:
    """``[low, high]`` blur sigmas in pixels, 0 <= low <= high <= 10, as a float pair.

    Raises:
        ValueError: Not two numbers (booleans are not numbers) or out of order/range.
    """
    valid = f"blur sigma range must be [low, high] with 0 <= low <= high <= {_plain(MAX_SIGMA)}"
    if (not isinstance(value, list | tuple) or len(value) != 2 or not all(_is_number(v) for v in value)
            or not all(math.isfinite(v) for v in value)):
        raise ValueError(f"{valid}, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 <= low <= high <= MAX_SIGMA:
        raise ValueError(f"{valid}, got {list(value)!r}")
    return low, high


def check_quality_range(value: Any) -> tuple[int, int]:
    """``[low, high]`` JPEG qualities, integers with 1 <= low <= high <= 100, as an int pair.

    Raises:
        ValueError: Not two integers (booleans are not numbers) or out of order/range.
    """
    valid = "JPEG quality range must be [low, high], integers with 1 <= low <= high <= 100"
    if (not isinstance(value, list | tuple) or len(value) != 2 or not all(_is_number(v) for v in value)
            or not all(math.isfinite(v) and float(v).is_integer() for v in value)):
        raise ValueError(f"{valid}, got {value!r}")
    low, high = int(value[0]), int(value[1])
    if not 1 <= low <= high <= 100:
        raise ValueError(f"{valid}, got {list(value)!r}")
    return low, high


def _check_p(p: Any) -> float:
    if not _is_number(p) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _applies(p: float) -> bool:
    """Whether a step of probability ``p`` applies: no draw at 0 or 1, one ``torch.rand`` else."""
    if p <= 0:
        return False
    return p >= 1 or torch.rand(1).item() < p


class RandomBlur:
    """Training-time Gaussian blur of CNNDetection (Wang et al., CVPR 2020: sigma ~ U[0, 3] with
    probability 0.5): with probability ``p``, blur by a sigma drawn uniformly from ``sigma``
    (pixels; sigma 0 leaves the image unchanged), as ``Perturbation`` ``blur`` does.

    Random numbers come from torch's global RNG, so ``torch.manual_seed`` (``bnn.train`` seeds
    each epoch) makes the draws repeatable: at 0 < p < 1 one ``torch.rand`` decides, and an applied
    blur draws one more for sigma; ``p = 0`` draws nothing and returns the input itself.

    Args:
        p: Probability of blurring, in [0, 1].
        sigma: (low, high) range of sigma in pixels, 0 <= low <= high <= 10.
    """

    def __init__(self, p: float, sigma: Sequence[float] = (0.0, 3.0)) -> None:
        self.p = _check_p(p)
        self.sigma = check_sigma_range(sigma)

    def __call__(self, image: Image.Image) -> Image.Image:
        if not _applies(self.p):
            return image
        low, high = self.sigma
        sigma = low + (high - low) * torch.rand(1).item()
        return blur(image, sigma) if sigma > 0 else image

    def __repr__(self) -> str:
        return f"RandomBlur(p={self.p}, sigma={self.sigma})"


class RandomJPEG:
    """Training-time JPEG compression of CNNDetection (Wang et al., CVPR 2020: quality ~
    U{30, ..., 100} with probability 0.5): with probability ``p``, re-encode at an integer quality
    drawn uniformly from the inclusive range ``quality``, as ``Perturbation`` ``jpeg`` does
    (Pillow only, where CNNDetection draws OpenCV or PIL).

    Random numbers come from torch's global RNG (see ``RandomBlur``): at 0 < p < 1 one
    ``torch.rand`` decides, and an applied compression draws one ``torch.randint``; ``p = 0`` draws
    nothing and returns the input itself.

    Args:
        p: Probability of compressing, in [0, 1].
        quality: (low, high) inclusive range of JPEG quality, integers 1 <= low <= high <= 100.
    """

    def __init__(self, p: float, quality: Sequence[int] = (30, 100)) -> None:
        self.p = _check_p(p)
        self.quality = check_quality_range(quality)

    def __call__(self, image: Image.Image) -> Image.Image:
        if not _applies(self.p):
            return image
        low, high = self.quality
        return jpeg(image, int(torch.randint(low, high + 1, (1,)).item()))

    def __repr__(self) -> str:
        return f"RandomJPEG(p={self.p}, quality={self.quality})"
