"""The schema of a study file: its sections as pydantic models (``StudyFile``), and FitConfig keys.

``studies.spec`` reads a file into these models and expands it into cells; ``studies.teachers``
reads the teacher references of a ``StudyFile``. Unknown keys are errors (``extra="forbid"``).
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bnn.config import FitConfig
from bnn.latency import latency_metric_names
from studies.db_setup import DEFAULT_TRACKING_URI

FIT_KEYS = list(FitConfig.model_fields)


def set_dotted(target: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if rest:
        target[head] = dict(target.get(head) or {})
        set_dotted(target[head], rest, value)
    else:
        target[head] = value


# Study names become folder names (<runs_dir>/<name>/), MLflow experiment and Optuna study names.
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_NAME_LENGTH = 100


class Powerset(BaseModel):
    """All subsets of ``of`` added to ``base``: ``{powerset: [sobel, fft, lbp]}`` -> 8 feature sets."""

    model_config = ConfigDict(extra="forbid")
    powerset: list[str] = Field(min_length=1)
    base: list[str] = ["rgb"]

    def values(self) -> list[str]:
        subsets = [c for r in range(len(self.powerset) + 1) for c in itertools.combinations(self.powerset, r)]
        return ["+".join([*self.base, *subset]) for subset in subsets]


class SearchParam(BaseModel):
    """One dimension of an Optuna search space."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        if self.type == "categorical" and not self.choices:
            raise ValueError("categorical needs 'choices'")
        if self.type != "categorical" and (self.low is None or self.high is None):
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        return self


class Search(BaseModel):
    """Optuna TPE search over ``space`` with a budget of ``trials``."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(ge=1)
    space: dict[str, SearchParam] = Field(min_length=1)
    sampler_seed: int = 0


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"


LATENCY_ENV = "BNN_LATENCY"  # "off": latency.enabled defaults to false (the test suite sets it)


def _latency_default() -> bool:
    return os.environ.get(LATENCY_ENV, "on").strip().lower() != "off"


class Latency(BaseModel):
    """Measured speed of each cell's selected checkpoint on its worker's host (``bnn.latency``).

    ``enabled`` defaults to true unless the environment sets ``BNN_LATENCY=off``; a study file's
    own ``latency.enabled`` always wins."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default_factory=_latency_default)
    threads: int = Field(1, ge=1, le=256)  # PyTorch and OpenVINO intra-op threads while timing
    repeats: int = Field(20, ge=1, le=10_000)  # timed batch-1 runs per resolution
    resolutions: list[Annotated[int, Field(ge=8, le=4096)]] = []  # extra sizes, e.g. [224]
    # Only the cells of these seeds (None: every cell). Speed depends on the architecture, not on
    # the weights, so one seed per configuration can stand for all when time is short (make demo).
    seeds: list[int] | None = Field(None, min_length=1)

    def times(self, seed: int) -> bool:
        """Whether a cell of this seed is timed."""
        return self.enabled and (self.seeds is None or seed in self.seeds)

    def metric_names(self) -> list[str]:
        """The latency metrics a timed cell logs (``bnn.latency.latency_metric_names``): at its own
        resolution and at each of ``resolutions``."""
        return latency_metric_names(tuple(self.resolutions))


class StudyFile(BaseModel):
    """The schema of a study file (see docs/studies.md)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, pattern=STUDY_NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    description: str = ""
    dataset: str | None = None
    data_root: str | None = None
    data_params: dict[str, Any] | None = None
    tracking_uri: str = DEFAULT_TRACKING_URI
    storage: str | None = None
    runs_dir: str = "runs"
    defaults: dict[str, Any] = {}
    grid: dict[str, list[Any] | Powerset] = {}
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    search: Search | None = None
    # One objective, or a list (a multi-objective search; the first one selects in a grid study).
    objective: Objective | list[Objective] = Objective()
    latency: Latency = Field(default_factory=Latency)
    log_checkpoint: bool = True
    # The MLflow registered model of the study's best cell (docs/serving.md); default: the study name.
    registered_model: str | None = Field(None, pattern=STUDY_NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    evaluate: list[dict[str, Any]] = []
    robustness: list[dict[str, Any]] = []

    @property
    def objectives(self) -> list[Objective]:
        """The objectives in file order; the first selects (the best cell, the MLflow view's sort)."""
        return self.objective if isinstance(self.objective, list) else [self.objective]
