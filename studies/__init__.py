"""Declarative ablation studies: YAML study files, an Optuna runner, MLflow tracking.

``python -m studies run|plan|status|validate|ui FILE``; see ``studies.spec`` for the file format.
"""

from __future__ import annotations

from studies.spec import Cell, Study, load_study
from studies.yaml_lines import StudyFileError

__all__ = ["Cell", "Study", "StudyFileError", "load_study"]
