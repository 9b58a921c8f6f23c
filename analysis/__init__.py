"""analysis: a study's MLflow record -> pandas frames, Pareto fronts, paper-style tables, figures.

Reads MLflow only (the record written by ``studies``; see ``analysis.runs`` for the contract).

Modules:
    runs: ``load_runs``, ``group_replicates``, ``load_epoch_history``, ``load_roc``,
        ``load_predictions`` (per-image test predictions, cached per run).
    stats: seeded bootstrap confidence intervals.
    pareto: ``pareto_front`` for any (cost, quality) pair.
    literature: the published numbers of Lanzino et al. (CVPRW 2024), shipped as a CSV.
    provenance: study, run ids, git commit and time attached to every table and figure.
    protocol: the evaluation protocol's metrics (extra test sets, per source, robustness,
        calibration) and reliability points as frames per configuration.
    significance: paired tests (McNemar, AUC permutation test) and Holm's correction.
    paired: ablation rows against their RGB baseline on the same test images.
    tables: results tables (Tables 1-3 of the paper), the feature ablation (Table 4) with its
        significance marks, and the protocol's cross-dataset, per-source, robustness and
        calibration tables.
    plots: Figure 1 (accuracy against OPs), learning curves, ROC curves, the cross-dataset heat
        map, robustness curves and reliability diagrams (Agg backend).
"""

from __future__ import annotations

from analysis.pareto import pareto_front
from analysis.runs import (
    StudyNotFoundError,
    group_replicates,
    load_epoch_history,
    load_roc,
    load_runs,
)

__all__ = [
    "StudyNotFoundError",
    "group_replicates",
    "load_epoch_history",
    "load_roc",
    "load_runs",
    "pareto_front",
]
