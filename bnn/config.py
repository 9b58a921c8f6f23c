"""Typed configuration of one training run (``bnn.train.fit``). YAML is only its serialised form.

Optimisation defaults follow Lanzino et al., CVPRW 2024 (their ``train.py``/``model.py``): AdamW lr
1e-4, weight decay 1e-2, linear decay to 1e-5 over 5 epochs, 5 epochs, batch size 128, BCE with
pos_weight = #real / #fake. The training augmentation defaults to the ``standard`` preset, not the
paper's (``augment: {preset: paper}``); ``docs/training.md`` has the measurements behind that.
A ``recipe`` fills the keys a study leaves out with a named set of values (``RECIPES``).

Content ids: keys added after the first release are left out of the hash while they hold the value
that means what the code did before they existed (``LEGACY_VALUES``), so cells of finished studies
keep their ids when this class grows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bnn.backbones import BACKBONES
from bnn.backbones.quantizers import DEFAULT_QUANTIZER, QUANTIZERS
from bnn.bounded_yaml import check_file, load_bounded
from bnn.data import DATASETS, DatasetParamError, dataset_params
from bnn.data.perturb import check_quality_range, check_sigma_range
from bnn.data.transforms import AUGMENT_PRESETS, DEGRADATIONS
from bnn.detector import Detector, create_detector
from bnn.errors import validation_message, yaml_message
from bnn.feature_sets import feature_set_label, parse_features

# blur_p and jpeg_p of ``augment: {degrade: true}``: CNNDetection's (Wang et al., CVPR 2020).
DEGRADE_P = 0.5


class AugmentConfig(BaseModel):
    """Training augmentation: a preset, each knob overridable (``bnn.data.transforms``).

    Attributes:
        preset: ``paper`` (the authors': flips, always a +-90 degree rotation, colour jitter 0.2),
            ``standard`` (random crop and horizontal flips) or ``none`` (evaluation preprocessing).
            Every preset has the degradations below off.
        hflip_p, vflip_p: Probability of a horizontal / vertical flip.
        rotate90_p: Probability of a rotation by -90 or +90 degrees (the paper: 1, always).
        color_jitter: Brightness, contrast, saturation and hue jitter strength (0 = off).
        random_crop: Random crop of R from the R + R // 8 resize (else the centre crop).
        blur_p: Probability of a Gaussian blur of the decoded image, before everything else
            (preset: 0, off).
        blur_sigma: [low, high] range of the blur's sigma in pixels, drawn uniformly,
            0 <= low <= high <= 10 (preset: [0, 3]; sigma 0 leaves the image unchanged).
        jpeg_p: Probability of a JPEG re-encoding, after the blur (preset: 0, off).
        jpeg_quality: [low, high] inclusive range of the JPEG quality, an integer drawn uniformly,
            1 <= low <= high <= 100 (preset: [30, 100]).
        degrade: The CNNDetection recipe (Wang et al., CVPR 2020): ``true`` sets ``blur_p`` and
            ``jpeg_p`` to 0.5 where they are not given (the ranges keep their values).

    A degradation at probability 0 is not part of the content id (``identity``), so configurations
    written before these knobs existed keep their ids.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["paper", "standard", "none"] = "standard"
    hflip_p: float | None = Field(None, ge=0, le=1)
    vflip_p: float | None = Field(None, ge=0, le=1)
    rotate90_p: float | None = Field(None, ge=0, le=1)
    color_jitter: float | None = Field(None, ge=0, le=1)
    random_crop: bool | None = None
    blur_p: float | None = Field(None, ge=0, le=1)
    blur_sigma: tuple[float, float] | None = None
    jpeg_p: float | None = Field(None, ge=0, le=1)
    jpeg_quality: tuple[int, int] | None = None
    degrade: bool = False

    @field_validator("blur_sigma", mode="before")
    @classmethod
    def _sigma_range(cls, value: Any) -> Any:
        return None if value is None else check_sigma_range(value)

    @field_validator("jpeg_quality", mode="before")
    @classmethod
    def _quality_range(cls, value: Any) -> Any:
        return None if value is None else check_quality_range(value)

    def resolved(self) -> dict[str, Any]:
        """Every knob's value: the preset's, overridden by the knobs given (and by ``degrade``)."""
        knobs = dict(AUGMENT_PRESETS[self.preset])
        if self.degrade:
            knobs.update(blur_p=DEGRADE_P, jpeg_p=DEGRADE_P)
        for key in knobs:
            value = getattr(self, key)
            if value is not None:
                knobs[key] = value
        return knobs

    def identity(self) -> dict[str, Any]:
        """What is hashed into the content id: ``resolved()`` less each degradation whose
        probability is 0 (its probability and range knobs)."""
        knobs = self.resolved()
        for p, range_knob in DEGRADATIONS.items():
            if knobs[p] == 0:
                del knobs[p], knobs[range_knob]
        return knobs


class DistillConfig(BaseModel):
    """Knowledge distillation from a full-precision teacher detector (``bnn.distill``).

    The student's loss is ``(1 - alpha) * BCE(logit, label) + alpha * KD``, with KD the binary
    cross-entropy of ``sigmoid(logit / T)`` against the teacher's ``sigmoid(teacher_logit / T)``,
    times ``T**2`` (Hinton et al., 2015). BNext and ReActNet distil with ``T = 1`` and no label
    term (``alpha = 1``); the defaults keep their ``T = 1`` and weigh both terms equally.

    Attributes:
        teacher: The teacher's checkpoint, a ``best.pt`` written by ``fit`` for a full-precision
            backbone. A study file may name a cell instead (``{cell: {backbone: resnet18}}``, see
            ``studies.teachers``); the study fills in that cell's ``best.pt`` and ``teacher_id``.
        teacher_id: Content id of the teacher's cell, set by the study. When set, the student's
            content id hashes it instead of ``teacher`` (a path on one machine).
        temperature: T, the softening of both probabilities.
        alpha: Weight of the distillation term; 0 is plain BCE, 1 is distillation only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str = Field(min_length=1)
    teacher_id: str | None = None
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)

    def identity(self) -> dict[str, Any]:
        """What of this block is hashed into the student's content id."""
        teacher = {"teacher_id": self.teacher_id} if self.teacher_id else {"teacher": self.teacher}
        return {**teacher, "temperature": self.temperature, "alpha": self.alpha}


class FitConfig(BaseModel):
    """Everything that defines one training run; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    backbone: str = "bnext_tiny"
    features: str = "rgb+fft+lbp"
    freeze_backbone: bool = False
    pretrained: str | bool | None = None
    compat: Literal["exact", "authors"] = "exact"
    head: Literal["linear", "bn_linear"] = "bn_linear"
    # The gradient surrogate of binary activations (bnn.backbones.quantizers); binary backbones only.
    input_quantizer: str = DEFAULT_QUANTIZER
    recipe: Literal["paper", "scratch"] | None = None
    # data
    dataset: str = "synthetic"
    data_root: str | None = None
    data_params: dict[str, Any] = Field(default_factory=dict)
    resolution: int = Field(224, ge=8)
    # Drop train images identical to a val or test image, and val images identical to a test image
    # (bnn.data.audit; the counts are logged as audit_dropped_train / audit_dropped_val).
    dedupe: bool = True
    # Where the checkpoint is selected: "val" (the default, right), or "test" as Lanzino et al.'s
    # code does for COCOFake and CIFAKE, to measure how much that inflates test accuracy; runs that
    # use it are tagged bnn.selection_split=test and every table and figure says so.
    selection_split: Literal["val", "test"] = "val"
    augment: AugmentConfig = AugmentConfig()
    distill: DistillConfig | None = None
    # optimisation
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    lr_decay_epochs: int = Field(5, ge=1)
    lr_schedule: Literal["linear", "cosine"] = "linear"
    warmup_epochs: float = Field(0.0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    binary_weight_decay: float | None = Field(None, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float | None = Field(1.0, gt=0)
    weight_temperature: float = Field(0.0, ge=0)
    weight_temperature_decay: float = Field(0.9, gt=0, le=1)
    amp: bool = True
    # execution
    device: str = "auto"
    num_workers: int | None = Field(None, ge=0)
    seed: int = 0
    max_train_samples: int | None = Field(None, ge=1)
    max_val_samples: int | None = Field(None, ge=1)
    max_test_samples: int | None = Field(None, ge=1)
    max_train_batches: int | None = Field(None, ge=1)
    max_eval_batches: int | None = Field(None, ge=1)
    output_dir: str | None = None
    log_every_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        """Keys the config leaves out take the recipe's values (``RECIPES``)."""
        if isinstance(data, dict) and data.get("recipe") is not None:
            recipe = RECIPES.get(data["recipe"])
            if recipe is not None:  # an unknown name is reported by the field's own validation
                data = {**recipe, **data}
        return data

    @field_validator("features", mode="before")
    @classmethod
    def _join_features(cls, value: Any) -> Any:
        """Accepts a list such as ``[rgb, fft, lbp]`` and stores the canonical ``rgb+fft+lbp``."""
        if isinstance(value, list | tuple):
            value = "+".join(value)
        if isinstance(value, str):
            try:
                return feature_set_label(parse_features(value))
            except KeyError as err:  # pydantic reports ValueErrors with the field's name
                raise ValueError(err.args[0]) from None
        return value

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        try:
            return BACKBONES.canonical(value)
        except KeyError as err:
            raise ValueError(err.args[0]) from None

    @field_validator("input_quantizer")
    @classmethod
    def _known_quantizer(cls, value: str, info: ValidationInfo) -> str:
        try:
            value = QUANTIZERS.canonical(value)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        backbone = info.data.get("backbone")
        if value != DEFAULT_QUANTIZER and backbone in BACKBONES and not BACKBONES.get(backbone).binary:
            raise ValueError(f"{backbone} has no binary activations; input_quantizer applies to binary "
                             f"backbones ({', '.join(n for n in BACKBONES.names() if BACKBONES.get(n).binary)})")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str, info: ValidationInfo) -> str:
        """A registered dataset name (kept as written: the content id hashes it)."""
        if _is_saved(info):
            return value
        try:
            DATASETS.canonical(value)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        return value

    @field_validator("data_params")
    @classmethod
    def _known_data_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Only the dataset's own parameters (``bnn.data.dataset_params``); an unknown one raises
        ``DatasetParamError``, which names it (``data_params.cout: unknown parameter; valid: ...``)."""
        dataset = info.data.get("dataset")
        if _is_saved(info) or dataset is None:  # None: the dataset itself is invalid, reported there
            return value
        valid = dataset_params(dataset)
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise DatasetParamError(DATASETS.canonical(dataset), unknown, valid)
        check = DATASETS.get(dataset).check_params
        if check is not None:  # values the reader can check without its files (synthetic generators)
            check(value)
        return value

    def content_id(self) -> str:
        """Short hash of the settings that change the result (not where outputs are written).

        Keys in ``LEGACY_VALUES`` are left out while they hold their legacy value, and
        ``augment`` is hashed as its resolved knobs less the degradations that are off
        (``AugmentConfig.identity``: a preset and the same knobs spelt out are one configuration).
        ``recipe`` is not hashed: the values it filled in are.
        """
        payload = self.model_dump(mode="json", exclude=NOT_HASHED)
        payload["augment"] = self.augment.identity()
        if self.distill is not None:  # the teacher's identity, not where its checkpoint lies
            payload["distill"] = self.distill.identity()
        for key, legacy in LEGACY_VALUES.items():
            if payload.get(key) == legacy:
                del payload[key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> FitConfig:
        """A config saved by ``fit`` (checkpoint ``config``); keys it predates take their legacy
        value, so a checkpoint of an older version rebuilds the detector it was trained as."""
        legacy = {key: value for key, value in LEGACY_VALUES.items() if key not in data}
        # Not re-checked against today's readers: the dataset or a parameter may have been renamed.
        return cls.model_validate({**legacy, **data}, context={SAVED: True})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> FitConfig:
        """Validates ``data``.

        Raises:
            ValueError: One line naming ``source`` (a file or ``--set``), the first bad key and how
                many more there are: ``run.yaml: data_params.cout: unknown parameter; valid: ...``.
        """
        try:
            return cls(**nest_dotted(data))
        except ValidationError as err:
            raise ValueError(validation_message(err, source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> FitConfig:
        """Reads a YAML file of FitConfig keys, then applies ``overrides``.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not a text file, a YAML syntax error (with its line), not a mapping, an
                invalid key or value (one line naming it, see ``from_mapping``), or out of the
                bounds of ``bnn.bounded_yaml`` (size, alias expansion).
        """
        path = Path(path)
        check_file(path)
        try:
            loader = yaml.SafeLoader(path.read_text())
            try:
                data = load_bounded(loader, path) or {}
            finally:
                loader.dispose()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text (YAML) file") from None
        except yaml.YAMLError as err:
            raise ValueError(yaml_message(err, str(path))) from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of FitConfig keys, got {type(data).__name__}")
        return cls.from_mapping({**data, **(overrides or {})}, str(path))


def create_detector_from_config(config: FitConfig, pretrained: str | bool | None = None) -> Detector:
    """The detector ``config`` describes (backbone, channels, frozen or not, grey levels, head and,
    for binary backbones, the input quantiser), freshly initialised.

    Args:
        config: The configuration.
        pretrained: Backbone ImageNet weights as in ``bnn.detector.create_detector`` (training
            passes ``config.pretrained``; a checkpoint's weights replace them anyway).
    """
    binary = BACKBONES.get(config.backbone).binary
    kwargs = {"input_quantizer": config.input_quantizer} if binary else {}
    return create_detector(config.backbone, config.features, config.freeze_backbone, pretrained=pretrained,
                           compat=config.compat, head=config.head, **kwargs)


# Validation context of a config read back from a checkpoint (``from_saved``).
SAVED = "saved"


def _is_saved(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(SAVED))


# Where outputs go and how the run is executed or logged: not part of a result's identity.
NOT_HASHED = {"output_dir", "num_workers", "device", "recipe", "log_every_seconds"}

# Keys added after the first release, with the value that reproduces the code before them.
LEGACY_VALUES: dict[str, Any] = {
    "augment": AugmentConfig(preset="paper").identity(),  # the paper's knobs, degradations off
    "lr_schedule": "linear",
    "warmup_epochs": 0.0,
    "binary_weight_decay": None,
    "head": "linear",
    "weight_temperature": 0.0,
    "weight_temperature_decay": 0.9,
    "distill": None,
    "selection_split": "val",
    "input_quantizer": DEFAULT_QUANTIZER,
    # Hashed only when off: on a dataset without cross-split duplicates (every study recorded before
    # it existed) dedupe changes nothing, and the split digests (bnn.data_digest) record what a run read.
    "dedupe": True,
}

# Named training recipes: values for the keys a config leaves out (docs/training.md justifies them).
RECIPES: dict[str, dict[str, Any]] = {
    # Fine-tuning from the official ImageNet weights, as Lanzino et al. train (their train.py).
    "paper": {
        "augment": {"preset": "paper"},
        "head": "linear",
        "lr": 1e-4,
        "min_lr": 1e-5,
        "lr_decay_epochs": 5,
        "lr_schedule": "linear",
        "weight_decay": 1e-2,
        "grad_clip_norm": 1.0,
    },
    # Training BNext from random weights as BNN practice does; docs/training.md has the runs behind it.
    "scratch": {
        "augment": {"preset": "standard"},
        "head": "bn_linear",
        "lr": 1e-3,
        "min_lr": 0.0,
        "lr_schedule": "cosine",
        "warmup_epochs": 0.5,
        "weight_decay": 1e-2,
        "binary_weight_decay": 0.0,
    },
}


def nest_dotted(data: dict[str, Any]) -> dict[str, Any]:
    """``{"distill": {...}, "distill.alpha": 1}`` -> ``{"distill": {..., "alpha": 1}}``: dotted
    keys (``--set distill.teacher=...``) merged into nested mappings, after the plain keys."""
    out = {k: v for k, v in data.items() if "." not in k}
    for key, value in data.items():
        if "." in key:
            *heads, last = key.split(".")
            target = out
            for head in heads:
                target[head] = dict(target.get(head) or {})
                target = target[head]
            target[last] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "features=[rgb, fft]"]`` -> ``{"epochs": 3, "features": ["rgb", "fft"]}``."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--set {key.strip()}: invalid YAML value {raw!r}: {problem}") from None
    return values
