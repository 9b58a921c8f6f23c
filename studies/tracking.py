"""MLflow record of a study: one parent run per study, one nested child run per cell.

Schema (analysis/ and outside checks rely on it): experiment = study name; parent run tagged
``bnn.role=study``; child runs tagged ``bnn.role=cell``, ``cell_id``, ``study``, ``mlflow.parentRunId``,
with params flattened from the resolved config (``backbone``, ``features`` joined by ``+``,
``freeze_backbone``, ``dataset``, ``seed``, ``distill`` = ``None`` or ``distill.teacher``,
``distill.teacher_id``, ``distill.temperature``, ``distill.alpha``, ...), per-epoch metrics ``epoch_*`` (step = epoch),
final ``val_*``/``test_*`` metrics, cost metrics, and artifacts (config, checkpoint, plots,
predictions). A retried cell reuses its child run, so each cell has exactly one.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bnn.backbones import BACKBONES
from bnn.train import EpochStats, FitResult
from studies.db_setup import sqlite_path
from studies.spec import Cell, Study

PACKAGES = ("torch", "timm", "mlflow", "optuna", "bnn-deepfake")


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


class Tracker:
    """Writes one study's MLflow record through an explicit ``MlflowClient`` (no global state)."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.client = MlflowClient(tracking_uri=study.tracking_uri)
        experiment = self.client.get_experiment_by_name(study.name)
        if experiment is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    study.name, artifact_location=artifact_location(study.tracking_uri, study.name)
                )
            except Exception:  # another worker created it first
                self.experiment_id = self.client.get_experiment_by_name(study.name).experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            self.experiment_id = experiment.experiment_id
        self.parent_id = self._parent_run()

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                       order_by=["attributes.start_time ASC"])

    def _parent_run(self) -> str:
        """The study's parent run; of parents created concurrently by several workers, the oldest wins."""
        parents = self._search("tags.`bnn.role` = 'study'")
        if not parents:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study.name,
                tags={"bnn.role": "study", "bnn.study": self.study.name, "git_commit": git_commit(),
                      "mlflow.source.name": str(self.study.path)},
            )
            self.client.log_artifact(run.info.run_id, str(self.study.path), artifact_path="study")
            self.client.log_param(run.info.run_id, "cells", len(self.study.cells))
            parents = self._search("tags.`bnn.role` = 'study'")
            if parents[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        return parents[0].info.run_id

    def cell_run(self, cell: Cell) -> str:
        """The cell's child run: reused when it exists (a retry), created otherwise."""
        existing = self._search(f"tags.cell_id = '{cell.cell_id}' and tags.`bnn.role` = 'cell'")
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "bnn.attempts", str(int(existing[0].data.tags.get("bnn.attempts", "1")) + 1))
            return run_id
        config = cell.config
        spec = BACKBONES.get(config.backbone)
        run_name = f"{spec.display_name} {config.features}{' frozen' if config.freeze_backbone else ''}"
        if config.distill is not None:
            run_name += " distilled"
        if len(self.study.spec.seeds) > 1:
            run_name += f" seed {config.seed}"
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "bnn.role": "cell",
            "cell_id": cell.cell_id,
            "study": self.study.name,
            "bnn.model": spec.display_name,
            "bnn.family": spec.family,
            "bnn.binary": str(spec.binary).lower(),
            "bnn.synthetic": str(config.dataset == "synthetic").lower(),
            "bnn.attempts": "1",
            "git_commit": git_commit(),
            **{f"version.{k}": v for k, v in package_versions().items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        params = flatten(config.model_dump(mode="json", exclude={"output_dir"}))
        params["axes"] = cell.axes_label() or "(single cell)"
        self.client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        return run.info.run_id

    def epoch_logger(self, run_id: str):
        """A ``fit`` callback that logs ``epoch_*`` metrics with step = epoch."""

        def log_epoch(stats: EpochStats) -> None:
            now = int(time.time() * 1000)
            values = {
                "epoch_train_loss": stats.train_loss,
                "epoch_val_loss": stats.val_loss,
                "epoch_val_accuracy": stats.val_accuracy,
                "epoch_val_auc": stats.val_auc,
                "epoch_lr": stats.lr,
                "epoch_seconds": stats.epoch_seconds,
                "epoch_images_per_second": stats.train_images_per_second,
            }
            metrics = [Metric(k, float(v), now, stats.epoch) for k, v in values.items()]
            self.client.log_batch(run_id, metrics=metrics)

        return log_epoch

    def log_result(self, run_id: str, result: FitResult) -> None:
        """Final metrics, cost, data provenance tags and artifacts of a finished cell."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in result.scalars().items()]
        tags = [
            RunTag("bnn.data", result.data["train"][:5000]),
            RunTag("bnn.data_digest", ",".join(f"{k}:{v}" for k, v in result.data_digest.items())),
            RunTag("bnn.device", result.device),
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "config.yaml").write_text(result.config.to_yaml())
            self.client.log_artifact(run_id, str(tmp / "config.yaml"))
            self._log_predictions(run_id, result, tmp)
            self._log_plots(run_id, result, tmp)
        if self.study.spec.log_checkpoint:
            self.client.log_artifact(run_id, str(result.checkpoint), artifact_path="checkpoint")

    def _log_predictions(self, run_id: str, result: FitResult, tmp: Path) -> None:
        import pandas as pd

        pd.DataFrame(result.test_predictions, columns=["path", "label", "prob_fake"]).to_csv(
            tmp / "test_predictions.csv", index=False
        )
        self.client.log_artifact(run_id, str(tmp / "test_predictions.csv"), artifact_path="predictions")
        (tmp / "roc_test.json").write_text(json.dumps(result.test.roc))
        self.client.log_artifact(run_id, str(tmp / "roc_test.json"), artifact_path="metrics")

    def _log_plots(self, run_id: str, result: FitResult, tmp: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        title = f"{result.config.backbone} {result.config.features} (test)"
        if result.test.roc:
            fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
            ax.plot(result.test.roc["fpr"], result.test.roc["tpr"], label=f"AUC {result.test.auc:.3f}")
            ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
            ax.legend(loc="lower right")
            fig.tight_layout()
            fig.savefig(tmp / "roc.png")
            plt.close(fig)
            self.client.log_artifact(run_id, str(tmp / "roc.png"), artifact_path="plots")
        labels = np.array([p["label"] for p in result.test_predictions], dtype=int)
        predicted = np.array([p["prob_fake"] >= 0.5 for p in result.test_predictions], dtype=int)
        matrix = np.zeros((2, 2), dtype=int)
        np.add.at(matrix, (labels, predicted), 1)
        fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center", color="black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
               xlabel="predicted", ylabel="true", title=title)
        fig.tight_layout()
        fig.savefig(tmp / "confusion_matrix.png")
        plt.close(fig)
        self.client.log_artifact(run_id, str(tmp / "confusion_matrix.png"), artifact_path="plots")

    def end(self, run_id: str, status: str, message: str | None = None) -> None:
        """Terminates a run as FINISHED, FAILED or KILLED (with the reason as a tag)."""
        if message:
            self.client.set_tag(run_id, "bnn.failure", message[:5000])
        self.client.set_terminated(run_id, status=status)

    def mark_not_comparable(self, run_id: str, reason: str) -> None:
        """A finished cell whose objective is not a number (``studies.runner.NOT_COMPARABLE``): its
        metrics stay logged; the tag says why it cannot be ranked."""
        self.client.set_tag(run_id, "bnn.not_comparable", reason[:5000])

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
