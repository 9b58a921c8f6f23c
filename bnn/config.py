"""Typed configuration of one training run (``bnn.train.fit``). YAML is only its serialised form.

Defaults follow Lanzino et al., CVPRW 2024 (their ``train.py``/``model.py``): AdamW lr 1e-4,
weight decay 1e-2, linear decay to 1e-5 over 5 epochs, 5 epochs, batch size 128, BCE with
pos_weight = #real / #fake.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


class FitConfig(BaseModel):
    """Everything that defines one training run; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    backbone: str = "bnext_tiny"
    features: str = "rgb+fft+lbp"
    freeze_backbone: bool = False
    pretrained: str | bool | None = None
    compat: Literal["exact", "authors"] = "exact"
    # data
    dataset: str = "synthetic"
    data_root: str | None = None
    data_params: dict[str, Any] = Field(default_factory=dict)
    resolution: int = Field(224, ge=8)
    # optimisation
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    lr_decay_epochs: int = Field(5, ge=1)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float | None = Field(1.0, gt=0)
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

    @field_validator("features", mode="before")
    @classmethod
    def _join_features(cls, value: Any) -> Any:
        """Accepts a list such as ``[rgb, fft, lbp]`` and stores the canonical ``rgb+fft+lbp``."""
        from bnn.detector import feature_set_label, parse_features

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
        from bnn.backbones import BACKBONES

        try:
            return BACKBONES.canonical(value)
        except KeyError as err:
            raise ValueError(err.args[0]) from None

    def content_id(self) -> str:
        """Short hash of the settings that change the result (not where outputs are written)."""
        payload = self.model_dump(mode="json", exclude={"output_dir", "num_workers", "device"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> FitConfig:
        """Validates ``data``; errors name ``source`` (a file or ``--set``) and each bad key."""
        from pydantic import ValidationError

        try:
            return cls(**data)
        except ValidationError as err:
            lines = [f"{source}: invalid training config"]
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"]) or "(root)"
                lines.append(f"  {key}: {e['msg']}")
            raise ValueError("\n".join(lines)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> FitConfig:
        """Reads a YAML file of FitConfig keys, then applies ``overrides``."""
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of FitConfig keys, got {type(data).__name__}")
        return cls.from_mapping({**data, **(overrides or {})}, str(path))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "features=[rgb, fft]"]`` -> ``{"epochs": 3, "features": ["rgb", "fft"]}``."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(raw)
    return values
