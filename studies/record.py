"""The MLflow record of a study: its names and its one reader (the one writer, ``Tracker``, is
``studies.record_writer``), and the creation of an empty MLflow store.

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
  finished ``TAG_DATA``, ``TAG_DATA_DIGEST``, ``TAG_DEVICE``, ``TAG_TRAIN_HOST``,
  ``TAG_TRAIN_THREADS`` and one MLflow dataset input per split
  (name = the ``dataset`` param, digest = the split's file-list digest, source = its description,
  input tag ``mlflow.data.context`` = the split); when it failed ``TAG_FAILURE``; when its objective
  is NaN ``TAG_NOT_COMPARABLE`` (the reason; the run is FINISHED); ``TAG_SELECTION_SPLIT`` (where
  the checkpoint was selected); once finished, the data audit's ``TAG_AUDIT_WARNINGS`` and
  ``TAG_AUDIT_DUPLICATES``, its ``audit_*`` metrics and the artifact ``ARTIFACT_AUDIT``. Params: the flattened config
  (``PARAM_BACKBONE``, ``PARAM_FEATURES`` joined by ``+``, ``PARAM_FREEZE_BACKBONE``,
  ``PARAM_DATASET``, ``PARAM_SEED``, nested keys dotted, e.g. ``distill.teacher``) plus
  ``PARAM_AXES``. Metrics: ``EPOCH_METRICS`` with step = epoch; the final ``val_*``/``test_*``
  metrics of the checkpoint selected on validation (``FINAL_METRICS`` among them), ``COST_METRICS``,
  ``best_epoch``, ``skipped_images`` (step 0). Artifacts: ``config.yaml``, ``ARTIFACT_ROC``,
  ``predictions/``, ``plots/``, ``checkpoint/`` when the study logs checkpoints,
and then the logged model ``MODEL_NAME`` (see its section below).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# MLflow's usage telemetry keeps its session id in os.environ and removes it from a background
# thread when it gives up (no internet here); a request iterating os.environ at that moment (the
# proxy lookup of ``requests``) fails with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'. Seen as a
# failed log_batch with 8 workers on an MLflow server (benchmarks/scaleout.py). Off unless the user
# set it; every process of a study (and the MLflow server ``studies ui`` starts) inherits this.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# No progress bars in a study's log for the artifacts MLflow downloads itself (logging a detector
# model validates its input example on a downloaded copy). Off unless the user set it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.utils import mlflow_tags  # noqa: E402  (after the telemetry switch above)

from studies.db_setup import sqlite_path

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
# child: set by `studies run` on cell runs that are no longer cells of the study file (it was edited);
# the value names the differing keys ("epochs=4"). Reports leave such runs out by default.
TAG_STALE = "bnn.stale"
TAG_MODEL = "bnn.model"  # backbone display name, e.g. BNext-T
TAG_FAMILY = "bnn.family"
TAG_BINARY = "bnn.binary"  # "true" | "false"
TAG_SYNTHETIC = "bnn.synthetic"  # "true" | "false"
TAG_ATTEMPTS = "bnn.attempts"  # starts of the cell's run, as a decimal string
TAG_DATA = "bnn.data"  # description of the training split
TAG_DATA_DIGEST = "bnn.data_digest"  # "train:<digest>,val:<digest>,test:<digest>"
TAG_DEVICE = "bnn.device"
# Where the cell trained: a cell's numbers repeat exactly only on the same CPU model (kernel choice)
# with the same intra-op thread count (reduction order); docs/reports.md#what-repeats.
TAG_TRAIN_HOST = "bnn.train.host"  # CPU model
TAG_TRAIN_THREADS = "bnn.train.threads"  # torch intra-op threads, decimal string
TAG_FAILURE = "bnn.failure"  # why a run is FAILED or KILLED
TAG_NOT_COMPARABLE = "bnn.not_comparable"  # why a FINISHED run's objective is NaN
TAG_SELECTION_SPLIT = "bnn.selection_split"  # "val" | "test": where the checkpoint was selected (also a param)
# The data audit (bnn.data.audit) of a finished cell; its numbers are the audit_* metrics.
TAG_AUDIT_WARNINGS = "bnn.audit.warnings"  # its warnings joined by " | ", "" when none
TAG_AUDIT_DUPLICATES = "bnn.audit.duplicates"  # JSON {"train-test": pairs, ...} before dedupe
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
EPOCH_FIELDS = {
    "train_loss": "epoch_train_loss",
    "val_loss": "epoch_val_loss",
    "val_accuracy": "epoch_val_accuracy",
    "val_auc": "epoch_val_auc",
    "lr": "epoch_lr",
    "epoch_seconds": "epoch_seconds",
    "train_images_per_second": "epoch_images_per_second",
}
EPOCH_METRICS = tuple(EPOCH_FIELDS.values())
# The epoch metrics that measure wall time: no two runs share them (nor latency_*/throughput_*,
# ``bnn.latency``). Every other metric of a cell repeats exactly under the conditions of
# docs/reports.md#what-repeats.
WALL_CLOCK_EPOCH_METRICS = (EPOCH_FIELDS["epoch_seconds"], EPOCH_FIELDS["train_images_per_second"])

# --- artifacts and dataset inputs -------------------------------------------------------------
ARTIFACT_STUDY_DIR = "study"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_ROC = "metrics/roc_test.json"
ARTIFACT_PLOTS = "plots/test_roc_confusion.png"  # ROC and confusion matrix of the test split
ARTIFACT_CHECKPOINT_DIR = "checkpoint"  # best.pt, when the study logs checkpoints
ARTIFACT_AUDIT = "audit/data_audit.json"  # the whole AuditReport
ARTIFACT_PREDICTIONS = "predictions/test_predictions.csv"  # per test image, PREDICTION_COLUMNS
PREDICTION_COLUMNS = ("path", "label", "prob_fake", "source")
DATASET_SOURCE_TYPE = "local"
TAG_MAX_LENGTH = 5000

# --- the selected detector as an MLflow logged model (bnn.serving), and the registered best ------
# Each finished cell of a study that logs checkpoints logs MODEL_NAME (engine torch), its final
# metrics linked to it; when the study finishes, its best cell by the first objective is a version
# of the registered model (study key registered_model, default the study name) with alias
# REGISTRY_ALIAS_BEST, and that cell's MODEL_NAME_OPENVINO a version of <name>OPENVINO_SUFFIX.
MODEL_NAME = "detector"
MODEL_NAME_OPENVINO = "detector_openvino"
MODEL_NAMES = {"torch": MODEL_NAME, "openvino": MODEL_NAME_OPENVINO}  # bnn.serving.ENGINES
TAG_MODEL_ENGINE = "bnn.engine"  # logged model: torch | openvino (also TAG_CELL_ID, TAG_CELL_STUDY)
REGISTRY_ALIAS_BEST = "best"  # models:/<name>@best is the current best cell
OPENVINO_SUFFIX = "-openvino"
TAG_VERSION_OBJECTIVE = "bnn.objective"  # model version: "<metric>=<value>" it was selected by

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
    TAG_STALE: "stale",
    TAG_AUDIT_WARNINGS: "audit_warnings",
    TAG_AUDIT_DUPLICATES: "audit_duplicates",
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
    "stale",
    "audit_warnings",
    "audit_duplicates",
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


def create_mlflow_schema(url: str) -> None:
    """Builds MLflow's complete tracking schema (all migrations, the Default experiment) at the
    SQLite ``url``, as ``MlflowClient`` would on first use (for ``studies.db_setup.open_shared``)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(url, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()


# --- reader ---------------------------------------------------------------------------------------


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


def read_cell_runs(tracking_uri: str, study: str) -> list:
    """Every active cell run of a study (for ``studies status``/``plan``); empty when there is no
    such store (a SQLite file that does not exist is not created) or experiment."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return []
    from mlflow import MlflowClient

    with _bounded_http(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(study)
        return [] if experiment is None else search_all(client, experiment.experiment_id, ROLE_CELL)


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
