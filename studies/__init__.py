"""Declarative ablation studies: YAML study files, an Optuna runner, MLflow tracking.

``python -m studies run|plan|status|validate|ui FILE``; see ``studies.spec`` for the file format.

The names below are imported on first use (PEP 562), so that ``python -m studies`` starts with
nothing heavy imported and can hold signals from its first instruction (``studies.early_signals``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studies.spec import Cell, Study, load_study
    from studies.yaml_lines import StudyFileError

_EXPORTS = {"Cell": "studies.spec", "Study": "studies.spec", "load_study": "studies.spec",
            "StudyFileError": "studies.yaml_lines"}

__all__ = ["Cell", "Study", "StudyFileError", "load_study"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'studies' has no attribute {name!r}")
