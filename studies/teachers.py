"""Distillation teachers in study files: a cell names its teacher by keys, the study resolves it.

``distill.teacher`` (``bnn.config.DistillConfig``) is a checkpoint path, or a reference to a cell
of this study or of another study in the same store::

    grid:
      backbone: [resnet18, bnext_tiny]
      distill: [null, {teacher: {cell: {backbone: resnet18}}, temperature: 1, alpha: 0.5}]
    # or, a teacher trained by another study file (beside this one, else as given, else bundled):
    #   distill: {teacher: {study: teachers.yaml, cell: {backbone: resnet18, seed: 0}}}

``cell`` holds FitConfig keys (dotted keys allowed). The teacher is the one cell that trains without
distillation (teachers do not distil, so there are no chains and no cycles) whose config holds those
values; they are compared after validation, so ``features: [rgb, fft]`` matches ``rgb+fft``. No
match, several matches, or a binary backbone are errors naming the file, line and key, with the
candidates. The reference is by keys, not by content id, so it survives ``--set``: ``--set
epochs=1`` changes the teacher's id and the reference follows it. Another study is loaded with
the same ``--set`` values and must use the same Optuna storage and MLflow tracking URI, so that
the runner can see when the teacher is done.

The student's config then holds the teacher's checkpoint ``<runs_dir>/<study>/<cell_id>/best.pt``
and ``teacher_id``, the teacher's content id, which its own content id hashes instead of the
path; the ``Cell`` keeps a ``Teacher`` for the runner, which runs teachers before their students
(``studies.runner``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bnn.backbones import BACKBONES
from bnn.config import DistillConfig, FitConfig
from studies.schema import FIT_KEYS, StudyFile, set_dotted
from studies.yaml_lines import StudyFileError, line_of

# Loads another study file (a path, or a bare name of a bundled study) with this study's ``--set``
# values and without resolving its own teachers: ``studies.spec.load_study``, passed in by it.
LoadStudy = Callable[[Path | str], Any]

# Stands in for a cell reference while the student's config is validated, before resolution.
UNRESOLVED = "(teacher cell, resolved by the study)"
REFERENCE_KEYS = ("cell", "study")


@dataclass(frozen=True)
class Teacher:
    """The cell a student distils from.

    Attributes:
        study: Name of the teacher's study (its Optuna study and MLflow experiment).
        cell_id: The teacher cell's content id.
        checkpoint: Where the teacher's ``fit`` writes its selected checkpoint (``best.pt``).
        label: The teacher cell's axes, for messages.
        path: The teacher's study file.
    """

    study: str
    cell_id: str
    checkpoint: Path
    label: str
    path: Path


@dataclass
class Pending:
    """A cell of the study being loaded, before its content id is known."""

    labels: dict[str, Any]
    config: FitConfig
    reference: Any = None  # the raw ``distill.teacher`` mapping, when it names a cell
    teacher: Teacher | None = None

    def label(self) -> str:
        return "|".join(f"{k}={v}" for k, v in self.labels.items()) or "(single cell)"


def pop_reference(resolved: dict[str, Any]) -> Any:
    """Takes a cell reference out of ``resolved["distill"]["teacher"]``, leaving ``UNRESOLVED``.

    Returns:
        The reference (a mapping), or ``None`` when there is no distillation or its teacher is a path.
    """
    distill = resolved.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("teacher"), dict):
        resolved["distill"] = {**distill, "teacher": UNRESOLVED}
        return distill["teacher"]
    return None


def axis_label(value: Any) -> Any:
    """A ``distill`` grid value for tables: ``{teacher: {cell: {backbone: resnet18}}, alpha: 0.7}``
    -> ``from backbone=resnet18 alpha=0.7``; other values unchanged."""
    if not isinstance(value, dict):
        return value
    teacher = value.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("cell"), dict):
        keys = " ".join(f"{k}={v}" for k, v in teacher["cell"].items())
        teacher = f"{teacher['study']}:{keys}" if teacher.get("study") else keys
    rest = " ".join(f"{k}={v}" for k, v in value.items() if k != "teacher")
    return f"from {teacher} {rest}".strip()


def _where(spec: StudyFile) -> tuple[str, ...]:
    """Where the study file sets the teacher: a grid axis, or ``defaults``."""
    if "distill" in spec.grid:
        return ("grid", "distill")
    for key in spec.grid:
        if key.startswith("distill.teacher"):
            return ("grid", key)
    return ("defaults", "distill", "teacher")


def _candidates_text(candidates: list[tuple[str, str, FitConfig]]) -> str:
    return "; ".join(f"{label} [{cell_id}]" for label, cell_id, _ in candidates) or "none"


def _matches(config: FitConfig, keys: dict[str, Any]) -> bool:
    """Whether ``config`` holds ``keys`` (dotted keys allowed), compared after validation."""
    update = config.model_dump()
    for key, value in keys.items():
        set_dotted(update, key, value)
    return FitConfig(**update) == config


def resolve_teachers(
    path: Path,
    lines: dict,
    spec: StudyFile,
    pending: list[Pending],
    study_name: str,
    runs_dir: Path,
    storage: str,
    load_study: LoadStudy,
) -> None:
    """Resolves every cell reference of ``pending`` in place (config, ``teacher``); a reference to
    another study loads it with ``load_study``.

    Raises:
        StudyFileError: A malformed reference, no or several matching cells, a binary teacher,
            or another study that is missing, invalid or in another store.
    """
    where = _where(spec)
    key = ".".join(where)
    line = line_of(lines, where)
    own = [(p.label(), p.config.content_id(), p.config) for p in pending if p.config.distill is None]
    others: dict[str, tuple[Any, list]] = {}
    found: dict[str, Teacher] = {}
    for entry in pending:
        ref = entry.reference
        if ref is None:
            continue
        memo = json.dumps(ref, sort_keys=True, default=str)
        if memo not in found:
            found[memo] = _resolve_one(path, line, key, ref, own, others, spec, study_name, runs_dir,
                                       storage, load_study)
        teacher = found[memo]
        distill = entry.config.distill.model_dump()
        distill.update(teacher=str(teacher.checkpoint), teacher_id=teacher.cell_id)
        entry.config = entry.config.model_copy(update={"distill": DistillConfig(**distill)})
        entry.teacher = teacher


def _resolve_one(path, line, key, ref, own, others, spec, study_name, runs_dir, storage, load_study) -> Teacher:
    shape = "a teacher is a checkpoint path or {cell: {key: value, ...}} with an optional study: FILE"
    if not isinstance(ref, dict) or set(ref) - set(REFERENCE_KEYS) or not isinstance(ref.get("cell"), dict) \
            or not ref["cell"]:
        raise StudyFileError(path, line, key, f"{shape}; got {ref!r}")
    keys = ref["cell"]
    for name in keys:
        if str(name).split(".")[0] not in FIT_KEYS:
            raise StudyFileError(path, line, f"{key}.cell.{name}", f"not a FitConfig key; valid keys: {', '.join(FIT_KEYS)}")
    if ref.get("study") is None:
        if spec.search is not None:
            raise StudyFileError(path, line, key, "a search study has no cells to teach from; name a cell of "
                                 "another study ({study: FILE, cell: {...}}) or a checkpoint path")
        candidates, t_study, t_runs, t_path = own, study_name, runs_dir, path
    else:
        candidates, t_study, t_runs, t_path = _other_study(path, line, key, str(ref["study"]), others, storage,
                                                           spec.tracking_uri, load_study)
    matched = []
    for candidate in candidates:
        try:
            if _matches(candidate[2], keys):
                matched.append(candidate)
        except (ValidationError, KeyError, ValueError) as err:
            detail = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
            raise StudyFileError(path, line, f"{key}.cell", f"invalid value in {keys}: {detail}") from None
    where_from = f"study '{t_study}'" if t_path != path else "this study"
    if len(matched) != 1:
        problem = "no cell" if not matched else f"{len(matched)} cells"
        listed = candidates if not matched else matched
        hint = "" if not matched else "; add keys (e.g. seed) to pick one"
        raise StudyFileError(path, line, f"{key}.cell",
                             f"{problem} of {where_from} without distillation match {keys} (teachers do not "
                             f"distil){hint}; {'candidates' if not matched else 'matches'}: {_candidates_text(listed)}")
    label, cell_id, config = matched[0]
    backbone = BACKBONES.get(config.backbone)
    if backbone.binary:
        full = ", ".join(n for n in BACKBONES.names() if not BACKBONES.get(n).binary)
        raise StudyFileError(path, line, f"{key}.cell",
                             f"the teacher {label} [{cell_id}] has the binary backbone {backbone.display_name}; "
                             f"a teacher must be full precision ({full})")
    return Teacher(t_study, cell_id, t_runs / cell_id / "best.pt", label, t_path)


def _other_study(path, line, key, name, others, storage, tracking_uri, load_study: LoadStudy):
    """Candidates of another study file: (candidates, study name, runs dir, file)."""
    if name not in others:
        beside = path.parent / name
        target = beside if beside.exists() else path.parent / f"{name}.yaml"
        try:
            other = load_study(target if target.exists() else name)
        except StudyFileError as err:
            raise StudyFileError(path, line, f"{key}.study", f"teacher study: {err}") from None
        if (other.storage, other.tracking_uri) != (storage, tracking_uri):
            raise StudyFileError(path, line, f"{key}.study",
                                 f"teacher study '{other.name}' uses storage {other.storage} and tracking "
                                 f"{other.tracking_uri}, this study {storage} and {tracking_uri}; a teacher's "
                                 "study must share both, so that its students can see when it is done")
        candidates = [(c.axes_label() or "(single cell)", c.cell_id, c.config)
                      for c in other.cells if c.config.distill is None]
        others[name] = (candidates, other.name, other.runs_dir, other.path)
    return others[name]
