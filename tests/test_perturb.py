"""Image degradations (``bnn.data.perturb``): deterministic test-time perturbations and their study
file form, CNNDetection's random training-time blur and JPEG, and their augmentation knobs, which
leave the draws of every preset and the content ids of existing configurations unchanged."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from bnn.config import AugmentConfig, FitConfig
from bnn.data.perturb import (
    PERTURBATION_KINDS,
    Perturbation,
    RandomBlur,
    RandomJPEG,
    blur,
    format_level,
    from_key,
    jpeg,
    kind_note,
    kind_order,
    parse_level,
    parse_robustness,
    resize_and_back,
    step_kinds,
)
from bnn.data.transforms import AUGMENT_PRESETS, build_transform, resize_size
from bnn.errors import KeyedValueError


def _smooth(size=(48, 64)) -> Image.Image:
    """Gradients and a soft texture (what JPEG at quality 100 keeps almost exactly), (H, W) = size."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 3.0) * np.cos(y / 4.0)], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _noise(seed: int = 0, size=(40, 52)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.float64)


ALL = [Perturbation("jpeg", 75), Perturbation("blur", 1.5), Perturbation("resize", 0.5),
       Perturbation("chain", name="social", steps=(Perturbation("resize", 0.5), Perturbation("jpeg", 75)))]


# ------------------------------------------------------------------------------ test time


@pytest.mark.parametrize("perturbation", ALL, ids=lambda p: p.key)
def test_perturbations_are_deterministic_and_keep_size_and_mode(perturbation):
    image = _smooth((37, 53))
    first, second = perturbation(image), perturbation(image.copy())
    assert first.mode == "RGB" and first.size == image.size
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != image.tobytes()
    assert perturbation(image.convert("RGBA")).mode == "RGB"  # converted first


def test_jpeg_really_reencodes():
    image = _smooth()
    for quality in (30, 50, 75):
        out = Perturbation("jpeg", quality)(image)
        assert np.abs(_pixels(out) - _pixels(image)).mean() > 1.5, quality
    errors = [np.abs(_pixels(Perturbation("jpeg", q)(image)) - _pixels(image)).mean() for q in (100, 75, 30)]
    assert errors[0] < 2 and errors[0] < errors[1] < errors[2]  # lossier as the quality drops


def test_blur_is_torchvisions_gaussian_blur_with_the_documented_kernel():
    image = _noise(1)
    expected = TF.gaussian_blur(image, kernel_size=[7, 7], sigma=[1.0, 1.0])  # 2 * ceil(3 * 1) + 1
    assert Perturbation("blur", 1)(image).tobytes() == expected.tobytes()
    expected = TF.gaussian_blur(image, kernel_size=[5, 5], sigma=[0.5, 0.5])
    assert Perturbation("blur", 0.5)(image).tobytes() == expected.tobytes()
    assert np.var(_pixels(Perturbation("blur", 2)(image))) < np.var(_pixels(image)) / 4
    tiny = _noise(2, size=(3, 2))  # kernel 61 > a side: limited so the reflected border fits
    assert Perturbation("blur", 10)(tiny).size == (2, 3)


def test_resize_keeps_the_size_and_loses_high_frequencies():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([checker] * 3, -1))
    for scale in (0.5, 0.25):
        out = Perturbation("resize", scale)(image)
        assert out.size == image.size
        assert np.var(_pixels(out)) < np.var(_pixels(image)) / 10
    odd = _noise(3, size=(23, 37))
    assert Perturbation("resize", 0.25)(odd).size == (37, 23)
    assert Perturbation("resize", 0.1)(_noise(4, size=(1, 3))).size == (3, 1)  # at least 1 pixel
    small = odd.resize((round(37 * 0.25), round(23 * 0.25)), Image.Resampling.BILINEAR)
    expected = small.resize((37, 23), Image.Resampling.BILINEAR)
    assert resize_and_back(odd, 0.25).tobytes() == expected.tobytes()


def test_chain_applies_its_steps_in_order():
    image = _smooth()
    chain = ALL[3]
    assert chain(image).tobytes() == jpeg(resize_and_back(image, 0.5), 75).tobytes()
    assert chain(image).tobytes() != resize_and_back(jpeg(image, 75), 0.5).tobytes()


def test_keys_severity_and_descriptions():
    assert [format_level(x) for x in (75, 1.0, 0.5, 1.5, 0.25, 3, 1e-5)] == [
        "75", "1", "0p5", "1p5", "0p25", "3", "0p00001"]
    with pytest.raises(ValueError):
        format_level(True)
    with pytest.raises(ValueError):
        format_level(math.inf)
    assert [p.key for p in ALL] == ["jpeg_75", "blur_1p5", "resize_0p5", "chain_social"]
    assert Perturbation("blur", 1).key == "blur_1" and Perturbation("resize", 0.25).key == "resize_0p25"
    assert Perturbation("blur", 0.5).key == "blur_0p5"
    assert [p.severity for p in ALL[:3]] == [25.0, 1.5, 2.0] and math.isnan(ALL[3].severity)
    assert [p.describe() for p in ALL] == [
        "JPEG quality 75", "Gaussian blur sigma 1.5", "resize x0.5 and back",
        "chain social: resize x0.5 and back, then JPEG quality 75"]
    assert Perturbation("blur", 1).describe() == "Gaussian blur sigma 1"
    assert Perturbation("jpeg", 75.0) == Perturbation("jpeg", 75) and Perturbation("jpeg", 75.0).level == 75


def test_perturbations_pickle():
    image = _smooth()
    for perturbation in ALL:
        copy = pickle.loads(pickle.dumps(perturbation))
        assert copy == perturbation and copy.key == perturbation.key
        assert copy(image).tobytes() == perturbation(image).tobytes()
    for random in (RandomBlur(0.5), RandomJPEG(0.5, quality=(40, 60))):
        copy = pickle.loads(pickle.dumps(random))
        assert repr(copy) == repr(random)


@pytest.mark.parametrize("kwargs", [
    {"kind": "jpg", "level": 75}, {"kind": "jpeg", "level": 150}, {"kind": "jpeg", "level": 75.5},
    {"kind": "blur", "level": 0}, {"kind": "blur", "level": 11}, {"kind": "resize", "level": 1.0},
    {"kind": "jpeg", "level": True}, {"kind": "jpeg", "level": 75, "name": "x"},
    {"kind": "chain", "name": "social"}, {"kind": "chain", "steps": (Perturbation("jpeg", 75),)},
    {"kind": "chain", "name": "bad name", "steps": (Perturbation("jpeg", 75),)},
    {"kind": "chain", "name": "x", "steps": (ALL[3],)},
])
def test_invalid_perturbations_raise(kwargs):
    with pytest.raises(ValueError):
        Perturbation(**kwargs)


# ------------------------------------------------------------------------------ study file form


def test_parse_robustness_valid_forms():
    parsed = parse_robustness([
        {"kind": "jpeg", "levels": [95, 75, 50, 30]},
        {"kind": "blur", "levels": [1, 2, 3]},
        {"kind": "resize", "levels": [0.5, 0.25]},
        {"kind": "chain", "name": "social", "steps": [{"kind": "resize", "level": 0.5}, {"kind": "jpeg", "level": 75}]},
    ])
    assert [p.key for p in parsed] == [
        "jpeg_95", "jpeg_75", "jpeg_50", "jpeg_30", "blur_1", "blur_2", "blur_3", "resize_0p5",
        "resize_0p25", "chain_social"]
    assert parsed[-1] == ALL[3]
    assert parse_robustness([]) == []


@pytest.mark.parametrize("entries, key, words", [
    ([{"kind": "jpeg", "levels": [75]}, {"kind": "jpg", "levels": [75]}], "[1].kind",
     ["unknown kind 'jpg'; valid: blur, chain, jpeg, resize"]),
    ([{"levels": [75]}], "[0].kind", ["blur, chain, jpeg, resize"]),
    ([{"kind": "jpeg", "levels": [95, 75, 150]}], "[0].levels[2]",
     ["JPEG quality must be an integer in 1..100, got 150"]),
    ([{"kind": "jpeg", "levels": [75]}, {"kind": "jpeg", "levels": [50, 75.0]}], "[1].levels[1]",
     ["duplicate perturbation jpeg_75"]),
    ([{"kind": "jpeg", "level": 75}], "[0].level", ["unknown key level", "valid: kind, levels"]),
    ([{"kind": "jpeg", "levels": [75]}, {"kind": "chain", "name": "social", "steps": [], "levels": [1]}],
     "[1].levels", ["valid: kind, name, steps"]),
    ([{"kind": "chain", "steps": [{"kind": "jpeg", "level": 75}]}], "[0].name", ["needs a name"]),
    ([{"kind": "chain", "name": "social"}], "[0].steps", ["needs steps", "blur, jpeg, resize"]),
    ([{"kind": "chain", "name": "social", "steps": [{"kind": "chain", "level": 1}]}], "[0].steps[0].kind",
     ["a chain step cannot be a chain; valid: blur, jpeg, resize"]),
    ([{"kind": "blur", "levels": [1]}, {"kind": "resize", "levels": [0.5]}, {"kind": "jpeg", "levels": [90]},
      {"kind": "chain", "name": "social", "steps": [{"kind": "resize", "level": 2}]}], "[3].steps[0].level",
     ["resize scale must be a number in (0, 1)", "got 2"]),
    ([{"kind": "chain", "name": "social", "steps": [{"kind": "jpeg"}]}], "[0].steps[0].level", ["missing"]),
    ([{"kind": "chain", "name": "social", "steps": [{"kind": "jpeg", "levels": [75]}]}], "[0].steps[0].levels",
     ["valid: kind, level"]),
    ([{"kind": "jpeg", "levels": [75]}, {"kind": "resize", "levels": [0.5]},
      {"kind": "chain", "name": "social", "steps": [{"kind": "jpeg", "level": 75}]},
      {"kind": "chain", "name": "social", "steps": [{"kind": "jpeg", "level": 50}]}], "[3].name",
     ["duplicate perturbation chain_social"]),
    ([{"kind": "blur", "levels": 1}], "[0].levels", ["non-empty list of blur sigmas"]),
    ([{"kind": "blur", "levels": []}], "[0].levels", ["non-empty list"]),
    ([{"kind": "jpeg", "levels": [True]}], "[0].levels[0]", ["booleans are not numbers"]),
    ([{"kind": "blur", "levels": [0]}], "[0].levels[0]", ["blur sigma must be a number in (0, 10]"]),
    ([{"kind": "blur", "levels": [1, 12]}], "[0].levels[1]", ["(0, 10]", "got 12"]),
    ([{"kind": "resize", "levels": [1]}], "[0].levels[0]", ["(0, 1)"]),
    (["jpeg"], "[0]", ["expected a mapping"]),
    ({"kind": "jpeg"}, "", ["must be a list"]),
])
def test_parse_robustness_errors_name_the_entry_and_the_valid_values(entries, key, words):
    with pytest.raises(KeyedValueError) as error:
        parse_robustness(entries)
    assert error.value.key == key
    for word in words:
        assert word in error.value.detail, (word, error.value.detail)
    assert str(error.value).startswith(f"{key}: " if key else error.value.detail)


# ------------------------------------------------------------------------------ training time


@pytest.mark.parametrize("make", [lambda: RandomBlur(0.0), lambda: RandomJPEG(0.0)])
def test_random_degradations_at_p_0_return_the_input_and_draw_nothing(make):
    image = _noise()
    degrade = make()
    state = torch.get_rng_state()
    assert degrade(image) is image
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("make", [lambda: RandomBlur(0.5), lambda: RandomJPEG(0.5)])
def test_random_degradations_repeat_under_a_torch_seed(make):
    image = _smooth()
    degrade = make()
    outputs = []
    for seed in range(16):
        torch.manual_seed(seed)
        first = degrade(image).tobytes()
        torch.manual_seed(seed)
        assert degrade(image).tobytes() == first
        outputs.append(first)
    assert image.tobytes() in outputs and len(set(outputs)) > 2  # sometimes off, different levels


def test_random_degradations_draw_in_their_ranges():
    image = _smooth()
    torch.manual_seed(0)
    assert RandomBlur(1.0, sigma=(2.0, 2.0))(image).tobytes() == blur(image, 2.0).tobytes()
    assert RandomJPEG(1.0, quality=(60, 60))(image).tobytes() == jpeg(image, 60).tobytes()
    assert RandomBlur(1.0, sigma=(0.0, 0.0))(image) is image  # sigma 0: unchanged
    qualities = set()
    for seed in range(200):
        torch.manual_seed(seed)
        out = RandomJPEG(1.0, quality=(98, 100))(image).tobytes()
        qualities.add(next(q for q in (98, 99, 100) if jpeg(image, q).tobytes() == out))
    assert qualities == {98, 99, 100}  # inclusive range
    for bad in (lambda: RandomBlur(1.5), lambda: RandomBlur(0.5, sigma=(3, 1)),
                lambda: RandomJPEG(0.5, quality=(0, 100)), lambda: RandomJPEG(0.5, quality=(30, 101))):
        with pytest.raises(ValueError):
            bad()


# ------------------------------------------------------------------------------ augmentation knobs


def _previous_pipeline(preset: str, resolution: int) -> T.Compose:
    """The training transform of the ``paper``/``standard`` presets before the degradation knobs."""
    steps = [T.Resize(resize_size(resolution), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
             T.RandomHorizontalFlip(p=0.5)]
    if preset == "paper":
        rotate = T.RandomChoice(
            [T.RandomRotation((-90, -90), expand=True), T.RandomRotation((90, 90), expand=True)], p=[0.5, 0.5])
        steps += [T.RandomVerticalFlip(p=0.5), rotate]
    steps.append(T.RandomCrop(resolution))
    if preset == "paper":
        steps.append(T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2))
    return T.Compose([*steps, T.ToImage(), T.ToDtype(torch.float32, scale=True)])


@pytest.mark.parametrize("preset", ["paper", "standard"])
def test_presets_with_degradations_off_draw_as_before(preset):
    assert AUGMENT_PRESETS[preset]["blur_p"] == 0 and AUGMENT_PRESETS[preset]["jpeg_p"] == 0
    other_ranges = AugmentConfig(preset=preset, blur_sigma=[1, 2], jpeg_quality=[50, 60]).resolved()
    for seed in range(4):
        image = _noise(seed)
        torch.manual_seed(seed)
        expected = _previous_pipeline(preset, 32)(image)
        state = torch.get_rng_state()
        for knobs in (AUGMENT_PRESETS[preset], AugmentConfig(preset=preset).resolved(), other_ranges):
            torch.manual_seed(seed)
            assert torch.equal(build_transform(32, train=True, augment=knobs)(image), expected)
            assert torch.equal(torch.get_rng_state(), state)  # the same number of draws


def test_degradations_apply_to_the_decoded_image_first():
    image = _noise(5)
    evaluate = build_transform(32, train=False)
    none = AUGMENT_PRESETS["none"]
    blurred = build_transform(32, train=True, augment={**none, "blur_p": 1.0, "blur_sigma": (2.0, 2.0)})
    assert torch.equal(blurred(image), evaluate(blur(image, 2.0)))
    assert not torch.equal(blurred(image), evaluate(image))
    both = build_transform(32, train=True, augment={**none, "blur_p": 1.0, "blur_sigma": (2.0, 2.0),
                                                    "jpeg_p": 1.0, "jpeg_quality": (50, 50)})
    assert torch.equal(both(image), evaluate(jpeg(blur(image, 2.0), 50)))
    standard = AUGMENT_PRESETS["standard"]
    torch.manual_seed(0)
    off = build_transform(32, train=True, augment=standard)(image)
    torch.manual_seed(0)
    on = build_transform(32, train=True, augment={**standard, "blur_p": 1.0})(image)
    assert not torch.equal(on, off)


def test_augment_config_degradation_knobs():
    assert AugmentConfig().resolved() == AUGMENT_PRESETS["standard"]
    knobs = AugmentConfig(degrade=True).resolved()
    assert knobs["blur_p"] == 0.5 and knobs["jpeg_p"] == 0.5
    assert knobs["blur_sigma"] == (0.0, 3.0) and knobs["jpeg_quality"] == (30, 100)
    knobs = AugmentConfig(preset="paper", degrade=True, jpeg_p=0.0, blur_sigma=[0, 1]).resolved()
    assert knobs["blur_p"] == 0.5 and knobs["jpeg_p"] == 0.0 and knobs["blur_sigma"] == (0.0, 1.0)
    assert AugmentConfig(jpeg_quality=[40, 40.0]).jpeg_quality == (40, 40)
    for augment, words in [
        ({"blur_sigma": [3, 1]}, "augment.blur_sigma: blur sigma range must be [low, high] with 0 <= low <= high <= 10"),
        ({"blur_sigma": [0, 11]}, "augment.blur_sigma"),
        ({"blur_sigma": [1]}, "augment.blur_sigma"),
        ({"jpeg_quality": [0, 100]}, "augment.jpeg_quality: JPEG quality range must be [low, high], integers with 1 <= low"),
        ({"jpeg_quality": [80, 50]}, "augment.jpeg_quality"),
        ({"jpeg_quality": [30.5, 50]}, "augment.jpeg_quality"),
        ({"jpeg_quality": [True, 50]}, "augment.jpeg_quality"),
        ({"blur_p": 1.5}, "augment.blur_p"),
        ({"jpeg_p": -0.1}, "augment.jpeg_p"),
        ({"blur": 0.5}, "augment.blur"),
    ]:
        with pytest.raises(ValueError) as error:
            FitConfig.from_mapping({"augment": augment}, "run.yaml")
        assert str(error.value).startswith("run.yaml: ") and words in str(error.value), str(error.value)


def test_content_ids_of_existing_configurations_are_unchanged():
    """Ids measured before the degradation knobs existed (commit e6c279f)."""
    assert FitConfig().content_id() == "98b4d05e2697"
    assert FitConfig(augment={"preset": "paper"}).content_id() == "5cc21006ba22"
    assert FitConfig(augment={"preset": "none"}).content_id() == "66bd21013cb0"
    assert FitConfig(recipe="scratch").content_id() == "e00307ca9217"
    # A degradation at p 0 is not hashed, whatever its range; one that is on is.
    assert FitConfig(augment={"blur_sigma": [0, 1], "jpeg_quality": [50, 60], "jpeg_p": 0}).content_id() == "98b4d05e2697"
    ids = {FitConfig(augment=augment).content_id() for augment in (
        {}, {"degrade": True}, {"blur_p": 0.5}, {"jpeg_p": 0.5}, {"blur_p": 0.5, "blur_sigma": [0, 1]})}
    assert len(ids) == 5
    assert FitConfig(augment={"degrade": True}).content_id() == FitConfig(
        augment={"blur_p": 0.5, "jpeg_p": 0.5}).content_id()


# ------------------------------------------------------------------------------ every kind


@pytest.mark.parametrize("kind", PERTURBATION_KINDS.names())
def test_contract_every_registered_kind(kind):
    """What analysis, the record and the study file rely on, for each registered kind."""
    spec = PERTURBATION_KINDS.get(kind)
    mild, strong = (Perturbation(kind, level) for level in spec.examples)
    image = _smooth((37, 53))
    for p in (mild, strong):
        out = p(image)
        assert out.mode == "RGB" and out.size == image.size
        assert out.tobytes() == p(image.copy()).tobytes() != image.tobytes()
        assert from_key(p.key) == p  # the key reads back to the same perturbation
        assert p.key == f"{kind}_{format_level(p.level)}" and p.describe() and p.tick() in p.label()
        assert p.label().startswith(spec.short)
    damage = [np.abs(_pixels(p(image)) - _pixels(image)).mean() for p in (mild, strong)]
    assert 0 < mild.severity < strong.severity and damage[0] < damage[1]
    assert spec.level_error(True) and "booleans" in spec.level_error(True)
    assert spec.level_error(spec.examples[0]) is None and spec.valid() in spec.level_error(-1)
    assert kind_note(kind) == spec.note and kind in step_kinds() and kind in kind_order()
    parsed = parse_robustness([{"kind": kind, "levels": list(spec.examples)},
                               {"kind": "chain", "name": "c", "steps": [{"kind": kind, "level": spec.examples[1]}]}])
    assert parsed == [mild, strong, Perturbation("chain", name="c", steps=(strong,))]
    with pytest.raises(KeyedValueError) as error:
        parse_robustness([{"kind": kind, "levels": []}])
    assert spec.levels_noun in error.value.detail
    assert pickle.loads(pickle.dumps(mild)) == mild


def test_webp_is_pillows_lossy_webp_and_lossier_as_the_quality_drops():
    image = _smooth()
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=60)
    assert Perturbation("webp", 60)(image).tobytes() == Image.open(buffer).convert("RGB").tobytes()
    errors = [np.abs(_pixels(Perturbation("webp", q)(image)) - _pixels(image)).mean() for q in (100, 75, 10)]
    assert errors[0] < errors[1] < errors[2]
    assert Perturbation("webp", 75.0).level == 75 and Perturbation("webp", 75).describe() == "WebP quality 75"
    for bad in (0, 101, 50.5):
        with pytest.raises(ValueError, match="WebP quality must be an integer in 1..100"):
            Perturbation("webp", bad)


def test_from_key_reads_only_what_a_kind_wrote():
    assert from_key("resize_0p25") == Perturbation("resize", 0.25)
    assert from_key("blur_1p5") == Perturbation("blur", 1.5)
    for key in ("chain_social", "noise_3", "jpeg_150", "jpeg_", "jpeg_7e1", "resize_0.5"):
        assert from_key(key) is None, key
    with pytest.raises(ValueError):
        parse_level("1e5")
    assert [parse_level(format_level(x)) for x in (75, 0.5, 1e-5, -2.5)] == [75, 0.5, 1e-5, -2.5]
