"""Where in a study file an invalid value was written: errors that name the file, line and key.

``studies.spec`` validates a study file in several steps (the schema, ``StudyFile``; each cell's
``FitConfig``); these map each step's error back to the key the user wrote (a ``--set`` override,
a grid axis value, a top-level key or ``defaults``), with the valid keys and a close match.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bnn.errors import validation_errors
from studies.schema import FIT_KEYS, Latency, Objective, Search, StudyFile
from studies.yaml_lines import StudyFileError, line_of


def suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def unknown_key_error(path: Path, lines: dict, where: tuple, key: str, valid: list[str]) -> StudyFileError:
    return StudyFileError(
        path, line_of(lines, (*where, key)), ".".join((*where, key)),
        f"unknown key; {suggest(key, valid)}valid keys: {', '.join(valid)}",
    )


_SECTION_MODELS: dict[str, type[BaseModel]] = {"latency": Latency, "objective": Objective, "search": Search}


def schema_error(path: Path, lines: dict, err: ValidationError, data: dict) -> StudyFileError:
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
        message = f"unknown key; {suggest(loc[-1], valid)}valid keys: {', '.join(valid)}"
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


def config_error(path: Path, lines: dict, spec: StudyFile, labels: dict, err: Exception,
                  overrides: dict[str, Any] | None = None) -> StudyFileError:
    """Maps a FitConfig error of one cell back to where the key was written: a ``--set`` override,
    a grid axis (the line of the offending value), a top-level key or ``defaults``."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        key, message = validation_errors(err)[0]
        if first["type"] == "extra_forbidden":
            message = f"unknown key; {suggest(key, FIT_KEYS)}valid keys: {', '.join(FIT_KEYS)}"
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
