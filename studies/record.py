"""The MLflow record of a study: its names, its one writer (``Tracker``) and its one reader.

Every tag, param and metric name that the runner writes and that ``analysis``, ``reports`` and
``python -m studies status`` read is a constant here (in the manner of MLflow's own
``mlflow.utils.mlflow_tags``); nothing else spells them. ``tests/test_record_contract.py`` writes a
study with the real runner and reads it back with the real reader on every store kind, so a name
changed on one side only fails a test.

The record:

- Experiment = the study name, tagged ``TAG_EXPERIMENT_KIND`` = ``EXPERIMENT_KIND`` (MLflow 3's UI
  then opens its model-training view, not the GenAI traces view) and with MLflow's primary-metric
  tags set from the study's objective.
- One parent run (``TAG_ROLE`` = ``ROLE_STUDY``, run name = study name) tagged ``TAG_STUDY``,
  ``TAG_GIT_COMMIT`` and ``TAG_SOURCE_NAME`` (the study file, also an artifact ``study/``); param
  ``PARAM_CELLS``.
- One nested child run per cell (``TAG_ROLE`` = ``ROLE_CELL``, ``TAG_PARENT_RUN_ID``), whose run
  name says what it is (``BNext-T rgb+fft trainable seed 1``, see ``run_name``). Tags ``TAG_CELL_ID``,
  ``TAG_CELL_STUDY``, ``TAG_MODEL``, ``TAG_FAMILY``, ``TAG_BINARY``, ``TAG_SYNTHETIC``,
  ``TAG_ATTEMPTS`` (a retried cell reuses its run), ``TAG_GIT_COMMIT``, ``version.<package>``; once
  finished ``TAG_DATA``, ``TAG_DATA_DIGEST``, ``TAG_DEVICE`` and one MLflow dataset input per split
  (name = the ``dataset`` param, digest = the split's file-list digest, source = its description,
  input tag ``mlflow.data.context`` = the split); when it failed ``TAG_FAILURE``; when its objective
  is NaN ``TAG_NOT_COMPARABLE`` (the reason; the run is FINISHED). Params: the flattened config
  (``PARAM_BACKBONE``, ``PARAM_FEATURES`` joined by ``+``, ``PARAM_FREEZE_BACKBONE``,
  ``PARAM_DATASET``, ``PARAM_SEED``, nested keys dotted, e.g. ``distill.teacher``) plus
  ``PARAM_AXES``. Metrics: ``EPOCH_METRICS`` with step = epoch; the final ``val_*``/``test_*``
  metrics of the checkpoint selected on validation (``FINAL_METRICS`` among them), ``COST_METRICS``,
  ``best_epoch``, ``skipped_images`` (step 0). Artifacts: ``config.yaml``, ``ARTIFACT_ROC``,
  ``predictions/``, ``plots/``, ``checkpoint/`` when the study logs checkpoints.

Old records stay readable: the commit was once the custom tag ``git_commit``
(``LEGACY_TAG_GIT_COMMIT``), which the reader still falls back to.

Results are not copied into Optuna. Optuna is the queue of cells: a trial keeps only what the
queue logic needs (user attributes ``ATTR_CELL_ID``, ``ATTR_RUN_ID``, ``ATTR_AXES``,
``ATTR_FAILURE``, ``ATTR_NOT_COMPARABLE``) and its objective value, which the search sampler uses
and Optuna stores anyway. ``studies status`` reads the accuracies and AUCs from MLflow through
``read_cell_metrics`` (one bounded search query; when MLflow cannot be read it still shows the
states from Optuna, with the reason), so the results have one home and cannot disagree.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

# MLflow's usage telemetry keeps its session id in os.environ and removes it from a background
# thread when it gives up (no internet here); a request iterating os.environ at that moment (the
# proxy lookup of ``requests``) fails with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'. Seen as a
# failed log_batch with 8 workers on an MLflow server (benchmarks/scaleout.py). Off unless the user
# set it; every process of a study (and the MLflow server ``studies ui`` starts) inherits this.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.utils import mlflow_tags  # noqa: E402  (after the telemetry switch above)

from studies.db_setup import retry_on_race, sqlite_path

if TYPE_CHECKING:
    from bnn.train import EpochStats, FitResult
    from studies.spec import Cell, Study

# --- experiment tags ------------------------------------------------------------------------------
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # read by MLflow 3's UI to pick its view
EXPERIMENT_KIND = "custom_model_development"  # the model-training view (not "genai_development")
TAG_PRIMARY_METRIC = mlflow_tags.MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME
TAG_PRIMARY_METRIC_GREATER_IS_BETTER = mlflow_tags.MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER

# --- MLflow's own run tags ------------------------------------------------------------------------
TAG_RUN_NAME = mlflow_tags.MLFLOW_RUN_NAME  # "mlflow.runName", set through run_name
TAG_PARENT_RUN_ID = mlflow_tags.MLFLOW_PARENT_RUN_ID  # "mlflow.parentRunId"
TAG_GIT_COMMIT = mlflow_tags.MLFLOW_GIT_COMMIT  # "mlflow.source.git.commit"
TAG_SOURCE_NAME = mlflow_tags.MLFLOW_SOURCE_NAME  # "mlflow.source.name": the study file
TAG_DATASET_CONTEXT = mlflow_tags.MLFLOW_DATASET_CONTEXT  # "mlflow.data.context" on a dataset input
LEGACY_TAG_GIT_COMMIT = "git_commit"  # written by older versions; read as a fallback only

# --- this project's run tags ----------------------------------------------------------------------
TAG_ROLE = "bnn.role"
ROLE_STUDY = "study"
ROLE_CELL = "cell"
TAG_STUDY = "bnn.study"  # parent: the study it records (found by it when the experiment is renamed)
TAG_CELL_ID = "cell_id"  # public interface: the cell's content id
TAG_CELL_STUDY = "study"  # child: the study name
TAG_MODEL = "bnn.model"  # backbone display name, e.g. BNext-T
TAG_FAMILY = "bnn.family"
TAG_BINARY = "bnn.binary"  # "true" | "false"
TAG_SYNTHETIC = "bnn.synthetic"  # "true" | "false"
TAG_ATTEMPTS = "bnn.attempts"  # starts of the cell's run, as a decimal string
TAG_DATA = "bnn.data"  # description of the training split
TAG_DATA_DIGEST = "bnn.data_digest"  # "train:<digest>,val:<digest>,test:<digest>"
TAG_DEVICE = "bnn.device"
TAG_FAILURE = "bnn.failure"  # why a run is FAILED or KILLED
TAG_NOT_COMPARABLE = "bnn.not_comparable"  # why a FINISHED run's objective is NaN
# + an extra test set's name / a perturbation's key: the definition its eval_<set>_* / robust_<key>_*
# metrics were computed with, so an entry changed in the study file is evaluated again.
# Latency (bnn.latency), on a cell's run: where and how it was measured, or why it was not.
TAG_LATENCY_HOST = "bnn.latency.host"  # CPU model
TAG_LATENCY_THREADS = "bnn.latency.threads"  # inference threads, decimal string
TAG_LATENCY_ENGINE = "bnn.latency.engine"  # e.g. "openvino 2026.0.0 binary"
TAG_LATENCY_SKIPPED = "bnn.latency.skipped"  # why a cell has no latency metrics
TAG_OBJECTIVES = "bnn.objectives"  # parent: JSON list of {"metric", "direction"}, selection first
TAG_EVAL_PREFIX = "bnn.eval."
TAG_ROBUST_PREFIX = "bnn.robust."
TAG_VERSION_PREFIX = "version."  # version.<package> = installed version
TRUE, FALSE = "true", "false"
PACKAGES = ("torch", "timm", "mlflow", "optuna", "bnn-deepfake")

# --- params -----------------------------------------------------------------------------------
PARAM_BACKBONE = "backbone"
PARAM_FEATURES = "features"  # names joined by "+"
PARAM_FREEZE_BACKBONE = "freeze_backbone"  # "True" | "False"
PARAM_DATASET = "dataset"
PARAM_SEED = "seed"
PARAM_AXES = "axes"  # "key=value|..." of the axes the study varies
NO_AXES = "(single cell)"
PARAM_CELLS = "cells"  # parent: number of cells
NONE = "None"  # a param that is not set
PARAM_MAX_LENGTH = 6000

# --- metrics ----------------------------------------------------------------------------------
METRIC_VAL_ACCURACY = "val_accuracy"
METRIC_VAL_AUC = "val_auc"
METRIC_TEST_ACCURACY = "test_accuracy"
METRIC_TEST_AUC = "test_auc"
FINAL_METRICS = (METRIC_VAL_ACCURACY, METRIC_VAL_AUC, METRIC_TEST_ACCURACY, METRIC_TEST_AUC)
METRIC_BOPS, METRIC_FLOPS, METRIC_OPS, METRIC_PARAMS = "bops", "flops", "ops", "params"
COST_METRICS = (
    METRIC_OPS,
    METRIC_BOPS,
    METRIC_FLOPS,
    METRIC_PARAMS,
    "binary_params",
    "trainable_params",
    "storage_bytes",
    "feature_flops",
)
EPOCH_PREFIX = "epoch_"
# EpochStats field -> per-epoch metric (step = epoch).
_EPOCH_FIELDS = {
    "train_loss": "epoch_train_loss",
    "val_loss": "epoch_val_loss",
    "val_accuracy": "epoch_val_accuracy",
    "val_auc": "epoch_val_auc",
    "lr": "epoch_lr",
    "epoch_seconds": "epoch_seconds",
    "train_images_per_second": "epoch_images_per_second",
}
EPOCH_METRICS = tuple(_EPOCH_FIELDS.values())

# --- artifacts and dataset inputs -------------------------------------------------------------
ARTIFACT_STUDY_DIR = "study"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_ROC = "metrics/roc_test.json"
ARTIFACT_PLOTS = "plots/test_roc_confusion.png"  # ROC and confusion matrix of the test split
ARTIFACT_CHECKPOINT_DIR = "checkpoint"  # best.pt, when the study logs checkpoints
ARTIFACT_PREDICTIONS = "predictions/test_predictions.csv"  # per test image, PREDICTION_COLUMNS
PREDICTION_COLUMNS = ("path", "label", "prob_fake", "source")
DATASET_SOURCE_TYPE = "local"
TAG_MAX_LENGTH = 5000

# --- the reader's columns -------------------------------------------------------------------------
# Tag -> column of a cell row; every other tag is left out.
TAG_COLUMNS = {
    TAG_CELL_ID: "cell_id",
    TAG_CELL_STUDY: "study",
    TAG_MODEL: "model",
    TAG_FAMILY: "family",
    TAG_BINARY: "binary",
    TAG_DATA: "data",
    TAG_SYNTHETIC: "synthetic",
    TAG_DATA_DIGEST: "data_digest",
    TAG_NOT_COMPARABLE: "not_comparable",
    TAG_FAILURE: "failure",
    TAG_ATTEMPTS: "attempts",
    TAG_GIT_COMMIT: "git_commit",
    TAG_PARENT_RUN_ID: "parent_run_id",
    TAG_LATENCY_HOST: "latency_host",
    TAG_LATENCY_THREADS: "latency_threads",
    TAG_LATENCY_ENGINE: "latency_engine",
    TAG_LATENCY_SKIPPED: "latency_skipped",
}
# Columns that describe a run rather than its configuration, in frame order.
RUN_COLUMNS = (
    "run_id",
    "run_name",
    "status",
    "cell_id",
    "study",
    "model",
    "family",
    "binary",
    "data",
    "synthetic",
    "data_digest",
    "not_comparable",
    "failure",
    "attempts",
    "git_commit",
    "parent_run_id",
    "latency_host",
    "latency_threads",
    "latency_engine",
    "latency_skipped",
    "start_time",
    "end_time",
    "duration_s",
)

# --- Optuna user attributes the runner's queue keeps (no results: see the module docstring) -------
ATTR_CELL_ID = "cell_id"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_AXES = "axes"
ATTR_FAILURE = "failure"
ATTR_NOT_COMPARABLE = "not_comparable"

STATUS_READ_TIMEOUT_S = 10  # one HTTP request of `studies status`, no retries


def filter_role(role: str) -> str:
    """The ``search_runs`` filter of a study's parent (``ROLE_STUDY``) or cell runs (``ROLE_CELL``)."""
    return f"tags.`{TAG_ROLE}` = '{role}'"


# ==================================================================================================
# Writer
# ==================================================================================================


def git_commit() -> str:
    """Commit of the code that runs (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"a.b": "value"}`` strings, as MLflow params."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def artifact_location(tracking_uri: str, study: str) -> str | None:
    """Artifacts of a SQLite-tracked study go to ``mlartifacts/<study>`` beside the database."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return (db.resolve().parent / "mlartifacts" / study).as_uri()
    return None


def create_mlflow_schema(url: str) -> None:
    """Builds MLflow's complete tracking schema (all migrations, the Default experiment) at the
    SQLite ``url``, as ``MlflowClient`` would on first use (for ``studies.db_setup.open_shared``)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(url, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_name(study: Study, cell: Cell, display_name: str) -> str:
    """What a cell's child run is called: ``<model> <features>`` plus what the study varies.

    ``frozen``/``trainable`` when the study varies ``freeze_backbone`` (else ``frozen`` for a frozen
    backbone), ``distilled`` for a student, ``key=value`` for every other axis (last part of a dotted
    key), and ``seed N`` when the study has several seeds, e.g. ``BNext-T rgb+fft trainable seed 1``.
    """
    config = cell.config
    words = [display_name, config.features]
    if PARAM_FREEZE_BACKBONE in cell.axes:
        words.append("frozen" if config.freeze_backbone else "trainable")
    elif config.freeze_backbone:
        words.append("frozen")
    if config.distill is not None:
        words.append("distilled")
    skip = {PARAM_BACKBONE, PARAM_FEATURES, PARAM_FREEZE_BACKBONE, PARAM_SEED}
    words += [f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in cell.axes.items() if key not in skip]
    if len(study.spec.seeds) > 1 or PARAM_SEED in cell.axes:
        words.append(f"seed {config.seed}")
    return " ".join(words)


def dataset_inputs(result: FitResult):
    """One MLflow dataset input per split of a finished cell (context tag = the split)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    name = result.config.dataset
    return [
        DatasetInput(Dataset(name=name, digest=digest, source_type=DATASET_SOURCE_TYPE,
                             source=result.data.get(split, "")[:TAG_MAX_LENGTH]),
                     tags=[InputTag(TAG_DATASET_CONTEXT, split)])
        for split, digest in result.data_digest.items()
    ]


def protocol_tags(test_sets, perturbations) -> dict[str, str]:
    """``TAG_EVAL_PREFIX + name`` -> the set's definition and ``TAG_ROBUST_PREFIX + key`` -> the
    perturbation's description, for the entries evaluated (skipped sets left out)."""
    tags = {f"{TAG_EVAL_PREFIX}{s.name}": s.definition() for s in test_sets if not s.skip_reason}
    return tags | {f"{TAG_ROBUST_PREFIX}{p.key}": p.describe() for p in perturbations}


class Tracker:
    """Writes one study's MLflow record through an explicit ``MlflowClient`` (no global state)."""

    def __init__(self, study: Study) -> None:
        from mlflow import MlflowClient

        self.study = study
        self.client = MlflowClient(tracking_uri=study.tracking_uri)
        experiment = self.client.get_experiment_by_name(study.name)
        if experiment is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    study.name, artifact_location=artifact_location(study.tracking_uri, study.name),
                    tags=self._experiment_tags(),
                )
            except Exception:  # another worker created it first
                self.experiment_id = self.client.get_experiment_by_name(study.name).experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            self.experiment_id = experiment.experiment_id
            for key, value in self._experiment_tags().items():  # experiments of older versions
                if experiment.tags.get(key) != value:
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        self.parent_id = self._parent_run()
        objectives = json.dumps([objective.model_dump() for objective in self.study.spec.objectives])
        self.client.set_tag(self.parent_id, TAG_OBJECTIVES, objectives)  # the study file may have changed

    def _experiment_tags(self) -> dict[str, str]:
        objective = self.study.spec.objectives[0]
        return {
            TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
            TAG_PRIMARY_METRIC: objective.metric,
            TAG_PRIMARY_METRIC_GREATER_IS_BETTER: str(objective.direction == "maximize").lower(),
        }

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                       order_by=["attributes.start_time ASC"])

    def _parent_run(self) -> str:
        """The study's parent run; of parents created concurrently by several workers, the oldest wins."""
        parents = self._search(filter_role(ROLE_STUDY))
        if not parents:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study.name,
                tags={TAG_ROLE: ROLE_STUDY, TAG_STUDY: self.study.name, TAG_GIT_COMMIT: git_commit(),
                      TAG_SOURCE_NAME: str(self.study.path)},
            )
            self.client.log_artifact(run.info.run_id, str(self.study.path), artifact_path=ARTIFACT_STUDY_DIR)
            self.client.log_param(run.info.run_id, PARAM_CELLS, len(self.study.cells))
            parents = self._search(filter_role(ROLE_STUDY))
            if parents[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        return parents[0].info.run_id

    def cell_run(self, cell: Cell) -> str:
        """The cell's child run: reused when it exists (a retry), created otherwise."""
        from mlflow.entities import Param

        from bnn.backbones import BACKBONES

        existing = self._search(f"tags.{TAG_CELL_ID} = '{cell.cell_id}' and {filter_role(ROLE_CELL)}")
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, TAG_ATTEMPTS, str(int(existing[0].data.tags.get(TAG_ATTEMPTS, "1")) + 1))
            return run_id
        config = cell.config
        spec = BACKBONES.get(config.backbone)
        tags = {
            TAG_PARENT_RUN_ID: self.parent_id,
            TAG_ROLE: ROLE_CELL,
            TAG_CELL_ID: cell.cell_id,
            TAG_CELL_STUDY: self.study.name,
            TAG_MODEL: spec.display_name,
            TAG_FAMILY: spec.family,
            TAG_BINARY: str(spec.binary).lower(),
            TAG_SYNTHETIC: str(config.dataset == "synthetic").lower(),
            TAG_ATTEMPTS: "1",
            TAG_GIT_COMMIT: git_commit(),
            **{f"{TAG_VERSION_PREFIX}{k}": v for k, v in package_versions().items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name(self.study, cell, spec.display_name),
                                     tags=tags)
        params = flatten(config.model_dump(mode="json", exclude={"output_dir"}))
        params[PARAM_AXES] = cell.axes_label() or NO_AXES
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v[:PARAM_MAX_LENGTH]) for k, v in params.items()])
        return run.info.run_id

    def epoch_logger(self, run_id: str):
        """A ``fit`` callback that logs ``EPOCH_METRICS`` with step = epoch."""
        from mlflow.entities import Metric

        def log_epoch(stats: EpochStats) -> None:
            now = int(time.time() * 1000)
            metrics = [Metric(name, float(getattr(stats, field)), now, stats.epoch)
                       for field, name in _EPOCH_FIELDS.items()]
            self.client.log_batch(run_id, metrics=metrics)

        return log_epoch

    def logged_epochs(self, run_id: str) -> set[int]:
        """Epochs whose metrics the run already holds (the steps of ``epoch_val_accuracy``)."""
        return {m.step for m in self.client.get_metric_history(run_id, _EPOCH_FIELDS["val_accuracy"])}

    def log_result(self, run_id: str, result: FitResult, protocol: dict[str, float] | None = None,
                   protocol_tags: dict[str, str] | None = None) -> None:
        """Final metrics (``result.scalars()`` and the evaluation protocol's ``eval_*``/``robust_*``
        scalars, ``bnn.protocol``, with their ``protocol_tags``), cost, data provenance (tags and
        dataset inputs) and artifacts of a finished cell."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in {**result.scalars(), **(protocol or {})}.items()]
        tags = [*(RunTag(k, v[:TAG_MAX_LENGTH]) for k, v in (protocol_tags or {}).items()),
            RunTag(TAG_DATA, result.data["train"][:TAG_MAX_LENGTH]),
            RunTag(TAG_DATA_DIGEST, ",".join(f"{k}:{v}" for k, v in result.data_digest.items())),
            RunTag(TAG_DEVICE, result.device),
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        # Workers finishing together race to insert the same dataset row (a unique-key violation on
        # PostgreSQL); a retry finds the row and only links it to this run.
        retry_on_race(lambda: self.client.log_inputs(run_id, datasets=dataset_inputs(result)),
                      "logging the dataset inputs", attempts=3)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / ARTIFACT_CONFIG).write_text(result.config.to_yaml())
            self.client.log_artifact(run_id, str(tmp / ARTIFACT_CONFIG))
            self._log_predictions(run_id, result, tmp)
            self._log_plots(run_id, result, tmp)
        if self.study.spec.log_checkpoint:
            self.client.log_artifact(run_id, str(result.checkpoint), artifact_path=ARTIFACT_CHECKPOINT_DIR)

    def log_scalars(self, run_id: str, scalars: dict[str, float], tags: dict[str, str] | None = None) -> None:
        """Adds final metrics (and their ``protocol_tags``) to a finished cell's run: the protocol
        of entries added or changed later."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in scalars.items()]
        run_tags = [RunTag(k, v[:TAG_MAX_LENGTH]) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow's log_batch limit
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], tags=run_tags if start == 0 else [])
        if tags and TAG_LATENCY_ENGINE in tags and TAG_LATENCY_SKIPPED in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, TAG_LATENCY_SKIPPED)  # measured now, on a host that has the engine

    def protocol_records(self, run_ids: Iterable[str]) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
        """``{run_id: (final metrics, protocol and latency-threads tags)}`` of these cell runs, in one search."""
        wanted = set(run_ids)
        prefixes = (TAG_EVAL_PREFIX, TAG_ROBUST_PREFIX, TAG_LATENCY_THREADS)
        return {run.info.run_id: (dict(run.data.metrics), {k: v for k, v in run.data.tags.items() if k.startswith(prefixes)})
                for run in search_all(self.client, self.experiment_id, ROLE_CELL) if run.info.run_id in wanted}


    def _log_predictions(self, run_id: str, result: FitResult, tmp: Path) -> None:
        import pandas as pd

        pd.DataFrame(result.test_predictions, columns=list(PREDICTION_COLUMNS)).to_csv(
            tmp / Path(ARTIFACT_PREDICTIONS).name, index=False
        )
        predictions = Path(ARTIFACT_PREDICTIONS)
        self.client.log_artifact(run_id, str(tmp / predictions.name), artifact_path=predictions.parent.as_posix())
        roc = Path(ARTIFACT_ROC)
        (tmp / roc.name).write_text(json.dumps(result.test.roc))
        self.client.log_artifact(run_id, str(tmp / roc.name), artifact_path=roc.parent.as_posix())

    def _log_plots(self, run_id: str, result: FitResult, tmp: Path) -> None:
        """``ARTIFACT_PLOTS``: the test ROC curve and confusion matrix at 0.5, side by side. One
        figure with a fixed layout (no ``tight_layout``): it is drawn for every cell, and each
        ``savefig`` costs about 0.15 s on a 2-core CPU (``benchmarks/scaleout.py``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, (roc_ax, cm_ax) = plt.subplots(1, 2, figsize=(7.6, 3.6), dpi=100)
        fig.subplots_adjust(left=0.08, right=0.97, bottom=0.15, top=0.86, wspace=0.35)
        fig.suptitle(f"{result.config.backbone} {result.config.features} (test)", fontsize=10)
        if result.test.roc:
            roc_ax.plot(result.test.roc["fpr"], result.test.roc["tpr"], label=f"AUC {result.test.auc:.3f}")
            roc_ax.legend(loc="lower right")
        roc_ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        labels = np.array([p["label"] for p in result.test_predictions], dtype=int)
        predicted = np.array([p["prob_fake"] >= 0.5 for p in result.test_predictions], dtype=int)
        matrix = np.zeros((2, 2), dtype=int)
        np.add.at(matrix, (labels, predicted), 1)
        cm_ax.imshow(matrix, cmap="Blues")
        for (i, j), n in np.ndenumerate(matrix):
            cm_ax.text(j, i, str(n), ha="center", va="center", color="black")
        cm_ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
                  xlabel="predicted", ylabel="true", title="confusion matrix at 0.5")
        plot = Path(ARTIFACT_PLOTS)
        fig.savefig(tmp / plot.name)
        plt.close(fig)
        self.client.log_artifact(run_id, str(tmp / plot.name), artifact_path=plot.parent.as_posix())

    def end(self, run_id: str, status: str, message: str | None = None) -> None:
        """Terminates a run as FINISHED, FAILED or KILLED (with the reason as ``TAG_FAILURE``)."""
        if message:
            self.client.set_tag(run_id, TAG_FAILURE, message[:TAG_MAX_LENGTH])
        self.client.set_terminated(run_id, status=status)

    def mark_not_comparable(self, run_id: str, reason: str) -> None:
        """A finished cell whose objective is not a number (``studies.runner.NOT_COMPARABLE``): its
        metrics stay logged; ``TAG_NOT_COMPARABLE`` says why it cannot be ranked."""
        self.client.set_tag(run_id, TAG_NOT_COMPARABLE, reason[:TAG_MAX_LENGTH])

    def mark_killed_if_running(self, run_id: str) -> None:
        """A run left RUNNING by a killed worker becomes KILLED."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return
        if run.info.status == "RUNNING":
            self.end(run_id, "KILLED", "worker stopped without ending the run (heartbeat expired)")

    def finish_parent(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status=status)


# ==================================================================================================
# Reader
# ==================================================================================================


@dataclass
class CellRow:
    """One cell run as read back: run columns (``RUN_COLUMNS`` but the times), params as written
    (strings; ``"None"`` as ``None``), final metrics (no ``epoch_*``), dataset inputs by split."""

    meta: dict[str, Any]
    params: dict[str, str | None]
    metrics: dict[str, float]
    datasets: dict[str, dict[str, str]]
    start_time_ms: int | None
    end_time_ms: int | None



def search_all(client, experiment_id: str, role: str) -> list:
    """Every active run of one ``role`` in the experiment, oldest first, all pages."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_role(role),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def commit_of(tags: dict[str, str]) -> str | None:
    """The run's git commit: MLflow's tag, else the custom tag of older records."""
    return tags.get(TAG_GIT_COMMIT) or tags.get(LEGACY_TAG_GIT_COMMIT)


def read_datasets(run) -> dict[str, dict[str, str]]:
    """The run's dataset inputs: split (``mlflow.data.context``) -> name, digest, source."""
    inputs = getattr(run, "inputs", None)
    out = {}
    for item in (inputs.dataset_inputs if inputs is not None else []) or []:
        context = next((t.value for t in item.tags if t.key == TAG_DATASET_CONTEXT), item.dataset.name)
        out[context] = {"name": item.dataset.name, "digest": item.dataset.digest, "source": item.dataset.source,
                        "source_type": item.dataset.source_type}
    return out


def read_cell(run) -> CellRow:
    """One cell run -> ``CellRow`` (the reader of every per-run name)."""
    info, data = run.info, run.data
    tags = data.tags
    meta = {"run_id": info.run_id, "run_name": info.run_name, "status": info.status}
    for tag, column in TAG_COLUMNS.items():
        meta[column] = tags.get(tag)
    meta["git_commit"] = commit_of(tags)
    datasets = read_datasets(run)
    if meta["data_digest"] is None and datasets:  # dataset inputs hold the same digests
        meta["data_digest"] = ",".join(f"{split}:{d['digest']}" for split, d in datasets.items())
    if meta["data"] is None and "train" in datasets:
        meta["data"] = datasets["train"]["source"]
    metrics = {k: v for k, v in data.metrics.items() if not k.startswith(EPOCH_PREFIX)}
    params = {k: (None if v == NONE else v) for k, v in data.params.items()}
    return CellRow(meta, params, metrics, datasets, info.start_time, info.end_time)


def read_parent(run) -> dict[str, Any]:
    """The parent run's study name, run id, git commit and objectives (``[{"metric", "direction"}]``,
    the selection objective first; ``[]`` for studies recorded before ``TAG_OBJECTIVES``)."""
    try:
        objectives = json.loads(run.data.tags.get(TAG_OBJECTIVES) or "[]")
    except json.JSONDecodeError:
        objectives = []
    return {"study": run.data.tags.get(TAG_STUDY), "run_id": run.info.run_id,
            "git_commit": commit_of(run.data.tags), "objectives": objectives}


@contextlib.contextmanager
def _bounded_http(tracking_uri: str) -> Iterator[None]:
    """For an HTTP tracking server: one try per request, ``STATUS_READ_TIMEOUT_S`` each (MLflow's
    defaults retry for minutes, too long for a status line)."""
    if not tracking_uri.startswith(("http://", "https://")):
        yield
        return
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(STATUS_READ_TIMEOUT_S)}
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def read_cell_metrics(tracking_uri: str, study: str, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Final metrics of a study's cell runs, by run id (for ``studies status``).

    Args:
        tracking_uri: The study's MLflow URI; a SQLite file that does not exist is not created.
        study: Study = experiment name.
        run_ids: Only these runs (default: every cell run).

    Returns:
        run id -> {metric: value}; empty when there is no such store or experiment.

    Raises:
        Exception: Whatever MLflow raises when the store cannot be read (one try over HTTP).
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return {}
    from mlflow import MlflowClient

    wanted = None if run_ids is None else set(run_ids)
    with _bounded_http(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(study)
        if experiment is None:
            return {}
        rows = (read_cell(run) for run in search_all(client, experiment.experiment_id, ROLE_CELL))
        return {row.meta["run_id"]: row.metrics for row in rows if wanted is None or row.meta["run_id"] in wanted}
