"""Study files: reading, validation with file/line/key errors, and expansion into cells.

A study file declares ``defaults`` (keys of ``bnn.config.FitConfig``), a ``grid`` whose cartesian
product gives the cells (any FitConfig key can be an axis; ``features`` can be a ``powerset``), seeds
as replicates, an optional Optuna ``search`` space, where to track (MLflow) and where to keep the
Optuna storage. Each cell is a fully resolved ``FitConfig`` with a content id (hash of the config).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bnn.config import FitConfig
from bnn.data import DATASETS, SPLITS, dataset_params, list_datasets
from bnn.data.perturb import Perturbation, parse_robustness
from bnn.errors import KeyedValueError, validation_errors
from bnn.protocol import ALL_SPLITS, SET_NAME, TestSet
from studies.db_setup import sqlite_path
from studies.objective import objective_metric_names, unknown_metric_message
from studies.schema import (
    FIT_KEYS,
    MAX_NAME_LENGTH,
    STUDY_NAME_PATTERN,
    Powerset,
    StudyFile,
    set_dotted,
)
from studies.spec_errors import config_error, schema_error, suggest, unknown_key_error
from studies.teachers import Pending, Teacher, axis_label, pop_reference, resolve_teachers
from studies.yaml_lines import StudyFileError, line_of, load_with_lines

BUNDLED_DIR = Path(__file__).resolve().parent
# The most cells a study may expand to unless --max-cells raises it. The paper's ablation is 64
# cells and the largest bundled study 96; expanding a cell (a FitConfig and its content hash) takes
# about 0.1 ms and `plan` of 10,000 cells 26 s on 2 cores (docs/safety.md), memory in megabytes.
MAX_CELLS = 10_000
# A study file sets at least one of these (else it would train one default cell nobody asked for).
REQUIRED_ANY = ("dataset", "defaults", "grid", "search")
_MINIMUM = f"a study needs at least one of {', '.join(REQUIRED_ANY[:-1])} or {REQUIRED_ANY[-1]}"


@dataclass
class Cell:
    """One fully resolved training configuration of a study (``teacher``: the cell it distils from)."""

    cell_id: str
    config: FitConfig
    axes: dict[str, Any] = field(default_factory=dict)
    teacher: Teacher | None = None

    @classmethod
    def of(cls, config: FitConfig, axes: dict[str, Any], runs_dir: Path, teacher: Teacher | None = None) -> Cell:
        """The cell of ``config``: its content id, and its output folder ``<runs_dir>/<cell_id>``."""
        cell_id = config.content_id()
        return cls(cell_id, config.model_copy(update={"output_dir": str(runs_dir / cell_id)}), axes, teacher)

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

    def search_cell(self, values: dict[str, Any]) -> Cell:
        """The cell of a search trial: ``base`` with the sampled ``values`` (dotted keys allowed).

        Raises:
            pydantic.ValidationError: The values do not make a valid ``FitConfig``.
        """
        update = self.base.model_dump()
        for key, value in values.items():
            set_dotted(update, key, value)
        return Cell.of(FitConfig(**update), values, self.runs_dir, self.teacher)


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


def cell_count(spec: StudyFile) -> int:
    """The number of cells a grid expands to (product of the axis sizes x seeds), without building any."""
    count = len(spec.seeds)
    for values in spec.grid.values():
        count *= 2 ** len(values.powerset) if isinstance(values, Powerset) else len(values)
    return count


def _check_cell_count(path: Path, lines: dict, spec: StudyFile, max_cells: int) -> None:
    count = cell_count(spec)
    if count > max_cells:
        sizes = " x ".join(f"{key} {2 ** len(v.powerset) if isinstance(v, Powerset) else len(v)}"
                           for key, v in spec.grid.items())
        where = ("grid",) if spec.grid else ("seeds",)
        raise StudyFileError(
            path, line_of(lines, where), where[0],
            f"expands to {count:,} cells ({sizes or 'no axes'} x seeds {len(spec.seeds)}), more than the limit of "
            f"{max_cells:,}; split the study, shorten axes, or pass --max-cells {count} if you mean it",
        )


def _study_name(path: Path, lines: dict, spec: StudyFile) -> str:
    """``name:``, else the file name's stem; either must be a safe folder name."""
    name = spec.name or path.stem
    given = "name" if spec.name else "the file name (no name: key)"
    if not re.match(STUDY_NAME_PATTERN, name) or name in (".", "..") or len(name) > MAX_NAME_LENGTH:
        raise StudyFileError(
            path, line_of(lines, ("name",)) if spec.name else None, "name" if spec.name else None,
            f"study name {name[:MAX_NAME_LENGTH]!r} from {given} is not a valid name: it becomes a folder, an "
            f"MLflow experiment and an Optuna study, so use letters, digits, '_', '.', '-' (starting with a "
            f"letter or digit, at most {MAX_NAME_LENGTH} characters); set name: in the file",
        )
    return name


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


def load_study(name: str | os.PathLike, overrides: dict[str, Any] | None = None, resolve: bool = True,
               max_cells: int = MAX_CELLS) -> Study:
    """Reads, validates and expands a study file.

    Args:
        name: A path, or a bare file name of a bundled study (``quickstart.yaml``).
        overrides: ``--set`` values: ``key=value`` with study keys (``tracking_uri``, ``seeds``) or
            FitConfig keys (applied to ``defaults``; dotted keys like ``data_params.count``).
        resolve: Resolve distillation teachers named by cell (``studies.teachers``); without it,
            students keep a placeholder teacher (used to read another study's teacher cells).
        max_cells: Refuse a grid that expands to more cells (``MAX_CELLS``; ``--max-cells``),
            counted from the axis sizes before any cell is built.

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
            raise unknown_key_error(path, lines, (), str(key), valid_top)
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
            raise StudyFileError(path, None, f"--set {key}", f"unknown key; {suggest(top, valid_top + FIT_KEYS)}"
                                 f"valid: study keys {', '.join(valid_top)} or FitConfig keys {', '.join(FIT_KEYS)}")
    try:
        spec = StudyFile(**data)
    except ValidationError as err:
        raise schema_error(path, lines, err, data) from None

    for section in ("defaults", "grid"):
        for key in getattr(spec, section):
            if key.split(".")[0] not in FIT_KEYS:
                raise unknown_key_error(path, lines, (section,), key, FIT_KEYS)
    if spec.search:
        for key in spec.search.space:
            if key.split(".")[0] not in FIT_KEYS:
                raise unknown_key_error(path, lines, ("search", "space"), key, FIT_KEYS)
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

    study_name = _study_name(path, lines, spec)
    if not spec.search:
        _check_cell_count(path, lines, spec, max_cells)
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
            raise config_error(path, lines, spec, labels, err, overrides) from None
        labels = {k: axis_label(v) if k == "distill" else v for k, v in labels.items()}
        pending.append(Pending(labels, config, reference))
        if spec.search:
            break
    storage = spec.storage or default_storage(spec.tracking_uri)
    if resolve:
        resolve_teachers(path, lines, spec, pending, study_name, runs_dir, storage,
                         lambda other: load_study(other, overrides, resolve=False, max_cells=max_cells))
    first = pending[0].config
    if spec.search:
        _check_search_space(path, lines, spec, first)
        return Study(study_name, path, spec, [], spec.tracking_uri, storage, first, runs_dir, pending[0].teacher,
                     test_sets, perturbations)
    cells: list[Cell] = []
    seen: dict[str, dict] = {}
    for entry in pending:
        cell = Cell.of(entry.config, entry.labels, runs_dir, entry.teacher)
        if cell.cell_id in seen:
            raise StudyFileError(path, line_of(lines, ("grid",)), "grid", "two grid entries resolve to the same "
                                 f"configuration ({seen[cell.cell_id]} and {entry.labels})")
        seen[cell.cell_id] = entry.labels
        cells.append(cell)
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
            raise error("dataset", f"unknown dataset {entry['dataset']!r}; {suggest(entry['dataset'], datasets)}"
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


