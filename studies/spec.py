"""Study files: schema, validation with file/line/key errors, and expansion into cells.

A study file declares ``defaults`` (keys of ``bnn.config.FitConfig``), a ``grid`` whose cartesian
product gives the cells (any FitConfig key can be an axis; ``features`` can be a ``powerset``), seeds
as replicates, an optional Optuna ``search`` space, where to track (MLflow) and where to keep the
Optuna storage. Each cell is a fully resolved ``FitConfig`` with a content id (hash of the config).
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bnn.config import FitConfig
from bnn.data import DATASETS, SPLITS, dataset_params, list_datasets
from bnn.data.perturb import Perturbation, parse_robustness
from bnn.errors import KeyedValueError, validation_errors
from bnn.latency import latency_metric_names
from bnn.protocol import ALL_SPLITS, SET_NAME, TestSet
from studies.db_setup import DEFAULT_TRACKING_URI, sqlite_path
from studies.distill import Pending, Teacher, axis_label, pop_reference, resolve_teachers
from studies.objective import objective_metric_names, unknown_metric_message
from studies.yaml_lines import StudyFileError, line_of, load_with_lines

BUNDLED_DIR = Path(__file__).resolve().parent
# A study file sets at least one of these (else it would train one default cell nobody asked for).
REQUIRED_ANY = ("dataset", "defaults", "grid", "search")
_MINIMUM = f"a study needs at least one of {', '.join(REQUIRED_ANY[:-1])} or {REQUIRED_ANY[-1]}"
FIT_KEYS = list(FitConfig.model_fields)


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
    """The schema of a study file (see README, "Study files")."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    evaluate: list[dict[str, Any]] = []
    robustness: list[dict[str, Any]] = []

    @property
    def objectives(self) -> list[Objective]:
        """The objectives in file order; the first selects (the best cell, the MLflow view's sort)."""
        return self.objective if isinstance(self.objective, list) else [self.objective]


@dataclass
class Cell:
    """One fully resolved training configuration of a study (``teacher``: the cell it distils from)."""

    cell_id: str
    config: FitConfig
    axes: dict[str, Any] = field(default_factory=dict)
    teacher: Teacher | None = None

    def axes_label(self) -> str:
        return "|".join(f"{k}={v}" for k, v in self.axes.items())


@dataclass
class Study:
    """A validated study: its file, settings and cells (empty for search studies; their trials
    distil from ``teacher`` when ``base`` names a teacher cell)."""

    name: str
    path: Path
    spec: StudyFile
    cells: list[Cell]
    tracking_uri: str
    storage: str
    base: FitConfig
    runs_dir: Path
    teacher: Teacher | None = None
    test_sets: list[TestSet] = field(default_factory=list)
    perturbations: list[Perturbation] = field(default_factory=list)

    @property
    def is_search(self) -> bool:
        return self.spec.search is not None

    def make_cell(self, config: FitConfig, axes: dict[str, Any]) -> Cell:
        """A cell for ``config`` with its output folder under the study's runs folder."""
        cell_id = config.content_id()
        return Cell(cell_id, config.model_copy(update={"output_dir": str(self.runs_dir / cell_id)}), axes, self.teacher)


def resolve_path(name: str | os.PathLike) -> Path:
    """A bare file name resolves to the bundled ``studies/`` folder when not found locally."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (BUNDLED_DIR / path.name, BUNDLED_DIR / f"{path.name}.yaml"):
        if path.parent == Path(".") and candidate.exists():
            return candidate
    bundled = ", ".join(sorted(p.name for p in BUNDLED_DIR.glob("*.yaml")))
    raise StudyFileError(path, None, None, f"no such study file (bundled studies: {bundled})")


def default_storage(tracking_uri: str) -> str:
    """An Optuna SQLite file beside the MLflow SQLite database, else ``optuna.db`` here."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return f"sqlite:///{(db.parent / 'optuna.db').as_posix()}"
    return "sqlite:///optuna.db"


def _expand_env(value: Any) -> Any:
    """``$VAR`` / ``${VAR}`` in strings; an unset variable leaves ``None`` (the reader's env default)."""
    if isinstance(value, str) and "$" in value:
        names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", value)
        if any(name not in os.environ for name in names):
            return None
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _unknown_key_error(path: Path, lines: dict, where: tuple, key: str, valid: list[str]) -> StudyFileError:
    return StudyFileError(
        path, line_of(lines, (*where, key)), ".".join((*where, key)),
        f"unknown key; {_suggest(key, valid)}valid keys: {', '.join(valid)}",
    )


def _check_absolute_paths(path: Path, lines: dict, spec: StudyFile) -> None:
    """Shipped study files must not contain absolute data paths (use env variables)."""
    candidates = {("data_root",): spec.data_root, ("runs_dir",): spec.runs_dir}
    for key, value in (spec.data_params or {}).items():
        candidates[("data_params", key)] = value
    for key in ("data_root", "output_dir"):
        candidates[("defaults", key)] = spec.defaults.get(key)
    if isinstance(spec.defaults.get("distill"), dict):
        candidates[("defaults", "distill", "teacher")] = spec.defaults["distill"].get("teacher")
    for key, value in (spec.defaults.get("data_params") or {}).items():
        candidates[("defaults", "data_params", key)] = value
    for key, value in candidates.items():
        if isinstance(value, str) and (value.startswith("/") or re.match(r"^[A-Za-z]:\\", value)):
            raise StudyFileError(
                path, line_of(lines, key), ".".join(key),
                "absolute paths are not allowed in shipped study files; use an environment "
                "variable such as ${BNN_DATA_COCO2014} or leave it out (readers use their env variable)",
            )


def _cell_values(spec: StudyFile) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(axis values, overrides) for every grid combination x seed."""
    axes = {k: (v.values() if isinstance(v, Powerset) else v) for k, v in spec.grid.items()}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] or [{}]
    out = []
    for combo in combos:
        for seed in spec.seeds:
            labels = dict(combo)
            if len(spec.seeds) > 1:
                labels["seed"] = seed
            out.append((labels, {**combo, "seed": seed}))
    return out


def set_dotted(target: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if rest:
        target[head] = dict(target.get(head) or {})
        set_dotted(target[head], rest, value)
    else:
        target[head] = value


def load_study(name: str | os.PathLike, overrides: dict[str, Any] | None = None, resolve: bool = True) -> Study:
    """Reads, validates and expands a study file.

    Args:
        name: A path, or a bare file name of a bundled study (``quickstart.yaml``).
        overrides: ``--set`` values: ``key=value`` with study keys (``tracking_uri``, ``seeds``) or
            FitConfig keys (applied to ``defaults``; dotted keys like ``data_params.count``).
        resolve: Resolve distillation teachers named by cell (``studies.distill``); without it,
            students keep a placeholder teacher (used to read another study's teacher cells).

    Raises:
        StudyFileError: Anything invalid; the message names file, line and key.
    """
    path = resolve_path(name)
    data, lines = load_with_lines(path)
    if data is None or data == {}:  # nothing, only comments, or {}
        raise StudyFileError(path, None, None, f"empty study file; {_MINIMUM}")
    if not isinstance(data, dict):
        raise StudyFileError(path, 1, None, "a study file is a mapping of keys (name, defaults, grid, ...)")
    valid_top = list(StudyFile.model_fields)
    for key in data:
        if key not in valid_top:
            raise _unknown_key_error(path, lines, (), str(key), valid_top)
    if not any(key in data for key in REQUIRED_ANY):
        raise StudyFileError(path, None, None, f"nothing to train; {_MINIMUM} (this file has only "
                             f"{', '.join(map(str, data))})")
    data = dict(data)
    for key, value in (overrides or {}).items():
        top = key.split(".")[0]
        if top in valid_top and top not in ("defaults", "grid"):
            set_dotted(data, key, value)
        elif top in FIT_KEYS:
            data["defaults"] = dict(data.get("defaults") or {})
            set_dotted(data["defaults"], key, value)
        else:
            raise StudyFileError(path, None, f"--set {key}", f"unknown key; {_suggest(top, valid_top + FIT_KEYS)}"
                                 f"valid: study keys {', '.join(valid_top)} or FitConfig keys {', '.join(FIT_KEYS)}")
    try:
        spec = StudyFile(**data)
    except ValidationError as err:
        raise _schema_error(path, lines, err, data) from None

    for section in ("defaults", "grid"):
        for key in getattr(spec, section):
            if key.split(".")[0] not in FIT_KEYS:
                raise _unknown_key_error(path, lines, (section,), key, FIT_KEYS)
    if spec.search:
        for key in spec.search.space:
            if key.split(".")[0] not in FIT_KEYS:
                raise _unknown_key_error(path, lines, ("search", "space"), key, FIT_KEYS)
        if spec.grid:
            raise StudyFileError(path, line_of(lines, ("search",)), "search",
                                 "a study has either a grid or a search space; split it into one study per grid cell")
    for key in ("dataset", "data_root", "data_params"):
        if getattr(spec, key) is not None and key in spec.defaults:
            raise StudyFileError(path, line_of(lines, (key,)), key, f"given twice: at top level and in defaults.{key}")
        if key in spec.grid and getattr(spec, key) is not None:
            raise StudyFileError(path, line_of(lines, ("grid", key)), f"grid.{key}", f"also set at top level ({key})")
    if path.resolve().parent == BUNDLED_DIR:
        _check_absolute_paths(path, lines, spec)
    test_sets = _test_sets(path, lines, spec)
    perturbations = _perturbations(path, lines, spec)
    valid_metrics = objective_metric_names(spec)
    if not spec.objectives:
        raise StudyFileError(path, line_of(lines, ("objective",)), "objective",
                             "an empty list; give at least one {metric, direction}")
    for i, objective in enumerate(spec.objectives):
        if objective.metric in [o.metric for o in spec.objectives[:i]]:
            raise StudyFileError(path, line_of(lines, ("objective", i, "metric")), f"objective[{i}].metric",
                                 f"{objective.metric} is listed twice")
        listed = isinstance(spec.objective, list)
        where = ("objective", i, "metric") if listed else ("objective", "metric")
        key = f"objective[{i}].metric" if listed else "objective.metric"
        if objective.metric not in valid_metrics:
            raise StudyFileError(path, line_of(lines, where), key, unknown_metric_message(objective.metric, valid_metrics))
        if spec.latency.seeds is not None and objective.metric in spec.latency.metric_names():
            raise StudyFileError(path, line_of(lines, ("latency", "seeds")), "latency.seeds",
                                 f"the objective {objective.metric} needs the latency of every cell; remove "
                                 "latency.seeds or choose another objective")
        for test_set in test_sets:  # every cell would train and then be "not comparable"
            if test_set.skip_reason and objective.metric.startswith(f"eval_{test_set.name}_"):
                raise StudyFileError(path, line_of(lines, where), key,
                                     f"{objective.metric} comes from the evaluate entry {test_set.name!r}, which "
                                     f"would be skipped: {test_set.skip_reason}")

    study_name = spec.name or path.stem
    base = dict(spec.defaults)
    for key in ("dataset", "data_root", "data_params"):
        if getattr(spec, key) is not None:
            base[key] = getattr(spec, key)
    base = _expand_env(base)
    runs_dir = Path(os.path.expandvars(spec.runs_dir)) / study_name

    pending: list[Pending] = []
    combos = [({}, {"seed": spec.seeds[0]})] if spec.search else _cell_values(spec)
    for labels, values in combos:
        resolved = dict(base)
        for key, value in values.items():
            set_dotted(resolved, key, _expand_env(value))
        resolved.pop("output_dir", None)
        reference = pop_reference(resolved)
        try:
            config = FitConfig(**resolved)
        except (ValidationError, KeyError, ValueError) as err:
            raise _config_error(path, lines, spec, labels, err, overrides) from None
        labels = {k: axis_label(v) if k == "distill" else v for k, v in labels.items()}
        pending.append(Pending(labels, config, reference))
        if spec.search:
            break
    storage = spec.storage or default_storage(spec.tracking_uri)
    if resolve:
        resolve_teachers(path, lines, spec, pending, study_name, runs_dir, storage, overrides)
    first = pending[0].config
    if spec.search:
        _check_search_space(path, lines, spec, first)
        return Study(study_name, path, spec, [], spec.tracking_uri, storage, first, runs_dir, pending[0].teacher,
                     test_sets, perturbations)
    cells: list[Cell] = []
    seen: dict[str, dict] = {}
    for entry in pending:
        cell_id = entry.config.content_id()
        if cell_id in seen:
            raise StudyFileError(path, line_of(lines, ("grid",)), "grid",
                                 f"two grid entries resolve to the same configuration ({seen[cell_id]} and {entry.labels})")
        seen[cell_id] = entry.labels
        config = entry.config.model_copy(update={"output_dir": str(runs_dir / cell_id)})
        cells.append(Cell(cell_id, config, entry.labels, entry.teacher))
    return Study(study_name, path, spec, cells, spec.tracking_uri, storage, first, runs_dir, None, test_sets,
                 perturbations)


TEST_SET_KEYS = ("name", "dataset", "data_root", "data_params", "split")


def _test_sets(path: Path, lines: dict, spec: StudyFile) -> list[TestSet]:
    """The ``evaluate:`` entries as ``TestSet``s. A ``data_root`` naming an unset environment
    variable marks the entry skipped (warned when the cells are evaluated); a root that is given
    is checked before anything is created (``studies.runner.check_inputs``)."""
    sets: list[TestSet] = []
    datasets = sorted(list_datasets())
    for i, entry in enumerate(spec.evaluate):
        where = ("evaluate", str(i))

        def error(key: str | None, message: str, where: tuple = where, i: int = i) -> StudyFileError:
            full = (*where, key) if key else where
            return StudyFileError(path, line_of(lines, full), f"evaluate[{i}]" + (f".{key}" if key else ""), message)

        unknown = [k for k in entry if k not in TEST_SET_KEYS]
        if unknown:
            raise error(str(unknown[0]), f"unknown key; valid keys: {', '.join(TEST_SET_KEYS)}")
        for key in ("name", "dataset"):
            if not isinstance(entry.get(key), str):
                raise error(key if key in entry else None, f"an evaluate entry needs {key} (a string)")
        name = entry["name"]
        if not SET_NAME.match(name):
            raise error("name", f"invalid name {name!r}: lower-case letters, digits and _ (metrics are "
                        f"eval_<name>_<metric>)")
        if any(s.name == name for s in sets):
            raise error("name", f"duplicate test-set name {name!r}")
        if entry["dataset"] not in datasets:
            raise error("dataset", f"unknown dataset {entry['dataset']!r}; {_suggest(entry['dataset'], datasets)}"
                        f"valid: {', '.join(datasets)}")
        split = entry.get("split", "test")
        if split not in (*SPLITS, ALL_SPLITS):
            raise error("split", f"unknown split {split!r}; valid: {', '.join((*SPLITS, ALL_SPLITS))}")
        params = entry.get("data_params") or {}
        if not isinstance(params, dict):
            raise error("data_params", "data_params is a mapping of reader parameters")
        valid = dataset_params(entry["dataset"])
        for key in params:
            if key not in valid:
                raise StudyFileError(path, line_of(lines, (*where, "data_params", key)),
                                     f"evaluate[{i}].data_params.{key}", f"unknown parameter; valid: {', '.join(valid)}")
        check = DATASETS.get(entry["dataset"]).check_params
        try:
            if check is not None:
                check(params)
        except KeyedValueError as err:
            raise StudyFileError(path, line_of(lines, (*where, "data_params", err.key)),
                                 f"evaluate[{i}].data_params.{err.key}", err.detail) from None
        root, skip = entry.get("data_root"), None
        if root is not None:
            expanded = _expand_env(str(root))
            if expanded is None:
                skip = f"data_root {root} names an unset environment variable"
            root = expanded
        sets.append(TestSet(name, entry["dataset"], root, _expand_env(dict(params)), split, skip))
    return sets


def _perturbations(path: Path, lines: dict, spec: StudyFile) -> list[Perturbation]:
    """The ``robustness:`` list (``bnn.data.perturb.parse_robustness``), errors at file:line:key."""
    try:
        return parse_robustness(spec.robustness)
    except KeyedValueError as err:
        parts = tuple(p for p in re.split(r"[\[\].]+", err.key) if p)
        raise StudyFileError(path, line_of(lines, ("robustness", *parts)), f"robustness{err.key}", err.detail) from None


def _check_search_space(path: Path, lines: dict, spec: StudyFile, base: FitConfig) -> None:
    """Every bound of the search space must give a valid FitConfig."""
    for key, param in spec.search.space.items():
        samples = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in samples:
            if param.type == "int":
                value = int(value)
            update = base.model_dump()
            set_dotted(update, key, value)
            try:
                FitConfig(**update)
            except (ValidationError, KeyError, ValueError) as err:
                detail = str(err)
                if isinstance(err, ValidationError):
                    bad, detail = validation_errors(err)[0]
                    detail = detail if bad == key else f"{bad}: {detail}"
                raise StudyFileError(path, line_of(lines, ("search", "space", key)), f"search.space.{key}",
                                     f"value {value!r} is invalid: {detail}") from None


_SECTION_MODELS: dict[str, type[BaseModel]] = {"latency": Latency, "objective": Objective, "search": Search}


def _schema_error(path: Path, lines: dict, err: ValidationError, data: dict) -> StudyFileError:
    """The first schema error (``data``: the file's mapping), with grid axes explained (a list, or
    a powerset mapping), the valid keys of a section, and the objective's form that was written."""
    errors = err.errors()
    first = errors[0]
    if first["loc"][:1] == ("objective",):  # a mapping or a list of them: the errors of the branch written
        listed = [e for e in errors if "list[Objective]" in map(str, e["loc"])]
        branch = listed if isinstance(data.get("objective"), list) else [e for e in errors if e not in listed]
        first = (branch or errors)[0]
    loc = tuple(str(p) for p in first["loc"] if not str(p).startswith(("list[", "Powerset", "Objective")))
    message = first["msg"]
    within = [p for p in loc[1:-1] if not p.isdigit()]  # the key's path inside its section
    section = _SECTION_MODELS.get(loc[0]) if len(loc) >= 2 and not within else None
    if first["type"] == "extra_forbidden" and section is not None:
        valid = list(section.model_fields)
        message = f"unknown key; {_suggest(loc[-1], valid)}valid keys: {', '.join(valid)}"
    key = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    if loc[:1] == ("grid",) and len(loc) == 2:
        details = [
            f"{'.'.join(str(p) for p in e['loc'][3:]) or 'value'}: {e['msg']}"
            for e in errors
            if tuple(str(p) for p in e["loc"][:3]) == ("grid", loc[1], "Powerset")
        ]
        message = "a grid axis is a list of values or {powerset: [names], base: [rgb]}"
        if details and isinstance(err.errors()[0].get("input"), dict):
            message += f" ({'; '.join(details)})"
    return StudyFileError(path, line_of(lines, loc), key, message)


def _config_error(path: Path, lines: dict, spec: StudyFile, labels: dict, err: Exception,
                  overrides: dict[str, Any] | None = None) -> StudyFileError:
    """Maps a FitConfig error of one cell back to where the key was written: a ``--set`` override,
    a grid axis (the line of the offending value), a top-level key or ``defaults``."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        key, message = validation_errors(err)[0]
        if first["type"] == "extra_forbidden":
            message = f"unknown key; {_suggest(key, FIT_KEYS)}valid keys: {', '.join(FIT_KEYS)}"
    else:
        key, message = "", str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        for name in ("backbone", "features", "compat"):
            if name in message:
                key = name
    cell = f" (in grid cell {labels})" if labels else ""
    for given in overrides or {}:
        if key == given or key.startswith(f"{given}.") or given.startswith(f"{key}."):
            return StudyFileError(path, None, f"--set {given}", message + cell)
    parts = tuple(key.split("."))
    top = parts[0]
    if top in spec.grid:
        axis = spec.grid[top]
        where = ("grid", top)
        if isinstance(axis, list) and labels.get(top) in axis:  # the line of the offending value
            where = ("grid", top, str(axis.index(labels[top])), *parts[1:])
        return StudyFileError(path, line_of(lines, where), ".".join(("grid", *parts)), message + cell)
    if top in ("dataset", "data_root", "data_params") and getattr(spec, top) is not None:
        where = parts
    else:
        where = ("defaults", *parts)
    return StudyFileError(path, line_of(lines, where), ".".join(where), message + cell)
