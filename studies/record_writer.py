"""The one writer of a study's MLflow record (``Tracker``); the names and the reader are ``studies.record``.

The runner writes every run, tag, param, metric and artifact of the record through ``Tracker``,
with the names of ``studies.record`` only; ``tests/test_record_contract.py`` writes a study with
the real runner and reads it back with the real reader. MLflow is imported inside the methods:
``studies.record`` switches MLflow's telemetry off before MLflow is first imported.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bnn.backbones import BACKBONES
from bnn.host import cpu_model
from bnn.serving import (
    CHECKPOINT_FILE,
    DETECTOR_ARTIFACT,
    INPUT_COLUMN,
    MODEL_CODE,
    ServedDetector,
    example_image,
    prepare_folder,
)
from studies.db_setup import retry_on_race, sqlite_path
from studies.record import (
    ARTIFACT_AUDIT,
    ARTIFACT_CHECKPOINT_DIR,
    ARTIFACT_CONFIG,
    ARTIFACT_PLOTS,
    ARTIFACT_PREDICTIONS,
    ARTIFACT_ROC,
    ARTIFACT_STUDY_DIR,
    DATASET_SOURCE_TYPE,
    EPOCH_FIELDS,
    EXPERIMENT_KIND,
    MODEL_NAMES,
    NO_AXES,
    OPENVINO_SUFFIX,
    PACKAGES,
    PARAM_AXES,
    PARAM_BACKBONE,
    PARAM_CELLS,
    PARAM_FEATURES,
    PARAM_FREEZE_BACKBONE,
    PARAM_MAX_LENGTH,
    PARAM_SEED,
    PREDICTION_COLUMNS,
    REGISTRY_ALIAS_BEST,
    ROLE_CELL,
    ROLE_STUDY,
    TAG_ATTEMPTS,
    TAG_AUDIT_DUPLICATES,
    TAG_AUDIT_WARNINGS,
    TAG_BINARY,
    TAG_CELL_ID,
    TAG_CELL_STUDY,
    TAG_DATA,
    TAG_DATA_DIGEST,
    TAG_DATASET_CONTEXT,
    TAG_DEVICE,
    TAG_EVAL_PREFIX,
    TAG_EXPERIMENT_KIND,
    TAG_FAILURE,
    TAG_FAMILY,
    TAG_GIT_COMMIT,
    TAG_LATENCY_ENGINE,
    TAG_LATENCY_SKIPPED,
    TAG_LATENCY_THREADS,
    TAG_MAX_LENGTH,
    TAG_MODEL,
    TAG_MODEL_ENGINE,
    TAG_NOT_COMPARABLE,
    TAG_OBJECTIVES,
    TAG_PARENT_RUN_ID,
    TAG_PRIMARY_METRIC,
    TAG_PRIMARY_METRIC_GREATER_IS_BETTER,
    TAG_ROBUST_PREFIX,
    TAG_ROLE,
    TAG_SELECTION_SPLIT,
    TAG_SOURCE_NAME,
    TAG_STALE,
    TAG_STUDY,
    TAG_SYNTHETIC,
    TAG_TRAIN_HOST,
    TAG_TRAIN_THREADS,
    TAG_VERSION_OBJECTIVE,
    TAG_VERSION_PREFIX,
    filter_role,
    search_all,
)
from studies.roc_figure import agg_figure, draw_roc

if TYPE_CHECKING:
    from bnn.train import EpochStats, FitResult
    from studies.spec import Cell, Study


def git_commit() -> str:
    """Commit of the code that runs (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def serving_requirements() -> list[str]:
    """The logged models' pip requirements: the installed versions of what ``bnn.serving`` imports
    (given, so MLflow does not load the model in a subprocess to infer them). ``bnn-deepfake`` is
    this project, not on PyPI: serve with ``--env-manager local`` in its environment."""
    names = ("bnn-deepfake", "mlflow", "torch", "torchvision", "timm", "openvino", "pillow", "numpy", "pandas")
    return [f"{name}=={version}" for name, version in package_versions(names).items()]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"a.b": "value"}`` strings, as MLflow params."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def stale_reasons(study: Study, runs) -> dict[str, str]:
    """run id -> the keys that differ (``"epochs=4"``) for each cell run of the study's experiment
    that is not a cell of its file now (the file was edited since the run). A search study's
    trials are drawn, not listed, so none of them is stale."""
    if study.is_search:
        return {}
    current = {cell.cell_id for cell in study.cells}
    values: dict[str, set[str]] = {}
    for cell in study.cells:
        for key, value in flatten(cell.config.model_dump(mode="json", exclude={"output_dir"})).items():
            values.setdefault(key, set()).add(value[:PARAM_MAX_LENGTH])
    out = {}
    for run in runs:
        cell_id = run.data.tags.get(TAG_CELL_ID)
        if cell_id is None or cell_id in current:
            continue
        differs = [f"{k}={v}" for k, v in sorted(run.data.params.items()) if k in values and v not in values[k]]
        out[run.info.run_id] = ", ".join(differs[:4]) + (", ..." if len(differs) > 4 else "") or \
            "a configuration this file no longer lists"
    return out


def stale_summary(study: Study, runs) -> str | None:
    """One line for ``status``/``plan``/``run`` about the runs ``stale_reasons`` finds, or None."""
    reasons = stale_reasons(study, runs)
    if not reasons:
        return None
    differing = sorted(set(reasons.values()))
    shown = "; ".join(differing[:3]) + (f"; and {len(differing) - 3} more" if len(differing) > 3 else "")
    return (f"{len(reasons)} run(s) in experiment '{study.name}' are not cells of this file (stale: it was edited "
            f"since they ran; theirs: {shown}); `reports render` leaves them out (--include-stale shows them)")


def artifact_location(tracking_uri: str, study: str) -> str | None:
    """Artifacts of a SQLite-tracked study go to ``mlartifacts/<study>`` beside the database."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return (db.resolve().parent / "mlartifacts" / study).as_uri()
    return None


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
        self.mark_stale()

    def mark_stale(self) -> None:
        """Tags the experiment's cell runs that are not cells of the study file now ``TAG_STALE`` (with
        the differing keys), and untags those that are again (an edit undone), so every reader of
        the record (reports, the MLflow UI) can tell which runs the current file describes."""
        runs = search_all(self.client, self.experiment_id, ROLE_CELL)
        reasons = stale_reasons(self.study, runs)
        for run in runs:
            reason, tagged = reasons.get(run.info.run_id), run.data.tags.get(TAG_STALE)
            if reason is not None and tagged != reason:
                self.client.set_tag(run.info.run_id, TAG_STALE, reason[:TAG_MAX_LENGTH])
            elif reason is None and tagged is not None:
                self.client.delete_tag(run.info.run_id, TAG_STALE)

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
            TAG_SELECTION_SPLIT: config.selection_split,
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
                       for field, name in EPOCH_FIELDS.items()]
            self.client.log_batch(run_id, metrics=metrics)

        return log_epoch

    def logged_epochs(self, run_id: str) -> set[int]:
        """Epochs whose metrics the run already holds (the steps of ``epoch_val_accuracy``)."""
        return {m.step for m in self.client.get_metric_history(run_id, EPOCH_FIELDS["val_accuracy"])}

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
            RunTag(TAG_TRAIN_HOST, cpu_model()[:TAG_MAX_LENGTH]),
            RunTag(TAG_TRAIN_THREADS, str(torch.get_num_threads())),
        ]
        if result.audit is not None:
            tags += [RunTag(TAG_AUDIT_WARNINGS, " | ".join(result.audit.warnings)[:TAG_MAX_LENGTH]),
                     RunTag(TAG_AUDIT_DUPLICATES, json.dumps(result.audit.duplicate_pairs, sort_keys=True)[:TAG_MAX_LENGTH])]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        # Workers finishing together race to insert the same dataset row (a unique-key violation on
        # PostgreSQL); a retry finds the row and only links it to this run.
        retry_on_race(lambda: self.client.log_inputs(run_id, datasets=dataset_inputs(result)),
                      "logging the dataset inputs", attempts=3)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / ARTIFACT_CONFIG).write_text(result.config.to_yaml())
            self.client.log_artifact(run_id, str(tmp / ARTIFACT_CONFIG))
            if result.audit is not None:
                audit_file = tmp / Path(ARTIFACT_AUDIT).name
                audit_file.write_text(json.dumps(result.audit.to_json(), indent=1))
                self.client.log_artifact(run_id, str(audit_file), artifact_path=str(Path(ARTIFACT_AUDIT).parent))
            self._log_predictions(run_id, result, tmp)
            self._log_plots(run_id, result, tmp)
        if self.study.spec.log_checkpoint:
            self.client.log_artifact(run_id, str(result.checkpoint), artifact_path=ARTIFACT_CHECKPOINT_DIR)
            self.log_detector_model(run_id, result.checkpoint)  # after the metrics: they link to it

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
        """``ARTIFACT_PLOTS``: the test ROC curve (``studies.roc_figure``) and confusion matrix at 0.5,
        side by side. One figure with a fixed layout (no ``tight_layout``): it is drawn for every
        cell, and each ``savefig`` costs about 0.15 s on a 2-core CPU (``benchmarks/scaleout.py``)."""
        fig = agg_figure(7.6, 3.6)
        roc_ax, cm_ax = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.08, right=0.97, bottom=0.15, top=0.86, wspace=0.35)
        fig.suptitle(f"{result.config.backbone} {result.config.features} (test)", fontsize=10)
        if result.test.roc:
            draw_roc(roc_ax, {"": result.test.roc}, auc={"": result.test.auc})
            roc_ax.legend(loc="lower right")
        else:
            draw_roc(roc_ax, {})
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
        self.client.log_artifact(run_id, str(tmp / plot.name), artifact_path=plot.parent.as_posix())

    # --- the selected detector as an MLflow model (bnn.serving) ---------------------------------
    def logged_detector(self, run_id: str, engine: str = "torch"):
        """The READY logged model of ``engine`` whose source is this cell run, or None."""
        found = self.client.search_logged_models(
            [self.experiment_id], max_results=10,
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAMES[engine]}'")
        ready = [m for m in found if str(m.status) in ("READY", "LoggedModelStatus.READY")]
        return ready[0] if ready else None

    def log_detector_model(self, run_id: str, checkpoint: str | Path, engine: str = "torch") -> str:
        """Logs the cell's ``best.pt`` as an MLflow logged model (``MODEL_NAMES[engine]``) of its run,
        the run's step-0 metrics (the final ones) linked to it; returns its model id. A run that
        has one already (a retried cell) keeps it."""
        import mlflow
        import pandas as pd
        from mlflow.models import Model, infer_signature
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        existing = self.logged_detector(run_id, engine)
        if existing is not None:
            return existing.model_id
        run = self.client.get_run(run_id)
        tags = {TAG_MODEL_ENGINE: engine, TAG_CELL_ID: run.data.tags.get(TAG_CELL_ID, ""),
                TAG_CELL_STUDY: self.study.name}
        with tempfile.TemporaryDirectory() as tmp:
            folder = prepare_folder(checkpoint, Path(tmp) / DETECTOR_ARTIFACT, engine)
            code = Path(tmp) / "detector_model.py"
            code.write_text(MODEL_CODE)
            example = pd.DataFrame({INPUT_COLUMN: [example_image()]})
            signature = infer_signature(example, ServedDetector(folder, device="cpu").predict(example))
            model = self.client.create_logged_model(self.experiment_id, name=MODEL_NAMES[engine], source_run_id=run_id,
                                                    tags=tags, params=dict(run.data.params))
            # mlflow.pyfunc.log_model is Model.log(flavor=mlflow.pyfunc) on the active run; called
            # directly, it takes this cell's run explicitly (no global active run) and links the
            # run's step-0 metrics (the final ones) to the model.
            with _use_tracking_uri(self.study.tracking_uri), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # pandas' deprecations inside MLflow's checks
                try:
                    Model.log(artifact_path=None, name=MODEL_NAMES[engine], flavor=mlflow.pyfunc,
                              python_model=str(code), artifacts={DETECTOR_ARTIFACT: str(folder)},
                              signature=signature, input_example=example,
                              pip_requirements=serving_requirements(), run_id=run_id, model_id=model.model_id)
                except BaseException:
                    self.client.finalize_logged_model(model.model_id, "FAILED")  # never taken for a model
                    raise
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def register_best(self) -> dict[str, str]:
        """Registers the best finished cell (first objective; not stale, not comparable, with a
        logged model) as a version of the study's registered model with alias ``best``, and its
        OpenVINO model under ``<name>-openvino``. Idempotent: a model already registered gets no
        new version (the alias moves to its version). Returns registered name -> version ("" none)."""
        name = self.study.spec.registered_model or self.study.name
        objective = self.study.spec.objectives[0]
        ranked = []
        for run in search_all(self.client, self.experiment_id, ROLE_CELL):
            tags, value = run.data.tags, run.data.metrics.get(objective.metric)
            if run.info.status != "FINISHED" or TAG_NOT_COMPARABLE in tags or TAG_STALE in tags:
                continue
            if value is None or value != value:  # NaN
                continue
            ranked.append((-value if objective.direction == "maximize" else value, run.info.start_time or 0, run))
        for _, _, run in sorted(ranked, key=lambda r: r[:2]):
            model = self.logged_detector(run.info.run_id)
            if model is None:
                continue
            label = f"{objective.metric}={run.data.metrics[objective.metric]:.6g}"
            versions = {name: self._register(name, model.model_id, run, label)}
            openvino = self.logged_detector(run.info.run_id, "openvino")
            if openvino is None:
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = self.client.download_artifacts(
                        run.info.run_id, f"{ARTIFACT_CHECKPOINT_DIR}/{CHECKPOINT_FILE}", tmp)
                    openvino_id = self.log_detector_model(run.info.run_id, checkpoint, "openvino")
            else:
                openvino_id = openvino.model_id
            versions[name + OPENVINO_SUFFIX] = self._register(name + OPENVINO_SUFFIX, openvino_id, run, label)
            return versions
        return {}

    def _register(self, name: str, model_id: str, run, label: str) -> str:
        """The version of ``name`` holding ``model_id`` (created when none does), aliased ``best``."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, tags={TAG_CELL_STUDY: self.study.name})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        versions = self.client.search_model_versions(f"name = '{name}'", max_results=1000)
        same = [v for v in versions if v.model_id == model_id or v.source == f"models:/{model_id}"]
        if same:
            version = same[0].version
        else:
            version = self.client.create_model_version(
                name, f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
                tags={TAG_CELL_ID: run.data.tags.get(TAG_CELL_ID, ""), TAG_VERSION_OBJECTIVE: label},
                description=f"{run.info.run_name}: the best cell of study {self.study.name} by {label}").version
        current = self.client.get_registered_model(name).aliases.get(REGISTRY_ALIAS_BEST)
        if str(current) != str(version):
            self.client.set_registered_model_alias(name, REGISTRY_ALIAS_BEST, str(version))
        return str(version)

    def end(self, run_id: str, status: str, message: str | None = None) -> None:
        """Terminates a run as FINISHED, FAILED or KILLED (with the reason as ``TAG_FAILURE``)."""
        if message:
            self.client.set_tag(run_id, TAG_FAILURE, message[:TAG_MAX_LENGTH])
        self.client.set_terminated(run_id, status=status)

    def mark_not_comparable(self, run_id: str, reason: str) -> None:
        """A finished cell whose objective is not a number (``studies.cell_queue.NOT_COMPARABLE``): its
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
