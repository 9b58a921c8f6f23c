"""The MLflow record's contract (``studies.record``), written once and run against every store.

In the manner of optuna's ``testing/pytest_storages.py``: one test class, parametrised over the
stores a study can be tracked in (a SQLite file; an ``mlflow server`` on 127.0.0.1 with a
PostgreSQL backend, from ``tests/pg_mlflow.py``). Per store, a tiny study is written once by the
real runner (``python -m studies run`` in-process) and read back by the real reader
(``analysis.runs.load_runs``, ``studies.record``'s reader, ``python -m studies status``); the tests
assert that every name of ``studies.record`` round-trips: experiment tags, parent and child run
tags, run names, params, final and per-epoch metrics, dataset inputs, a not-comparable cell and a
failed cell. A tag renamed on the writer's side only fails here.

The study: ``bnext_micro`` at 16x16 pixels on 60 synthetic images, one epoch, objective
``test_auc``; grid ``freeze_backbone`` x ``max_test_samples`` = 4 cells. ``max_test_samples: 1``
leaves a one-class test split, so those cells' objective is NaN (not comparable); the frozen cell
with the whole test split fails (``fit`` raises for it).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from pg_mlflow import mlflow_server_fixture, postgres_fixture  # noqa: F401

from analysis.runs import load_runs
from bnn.backbones import BACKBONES
from bnn.host import cpu_model
from studies import record as R
from studies import runner as runner_module
from studies.__main__ import main
from studies.record_writer import run_name
from studies.spec import load_study

STUDY = """\
name: contract
dataset: synthetic
data_params: {{count: 60, image_size: 20, difficulty: 0.0}}
tracking_uri: {tracking_uri}
storage: {storage}
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: 1
  batch_size: 16
grid:
  freeze_backbone: [false, true]
  max_test_samples: [null, 1]
objective: {{metric: test_auc, direction: maximize}}
log_checkpoint: false
"""
FAILURE = "RuntimeError: contract test: this cell fails"
MODEL = BACKBONES.get("bnext_micro")
STORES = [
    "sqlite",
    pytest.param("server", marks=pytest.mark.e2e),  # mlflow server on PostgreSQL (tests/pg_mlflow.py)
]


def _value(value):
    """A frame cell, with pandas' missing values as None."""
    return None if pd.isna(value) else value


def _kind(cell) -> str:
    """finished | not_comparable | failed, by the cell's axes."""
    if cell.config.max_test_samples == 1:
        return "not_comparable"
    return "failed" if cell.config.freeze_backbone else "finished"


class Written:
    """What the runner wrote to one store, and how to read it."""

    def __init__(self, store: str, path: Path, tracking_uri: str, storage: str, exit_code: int, seconds: float,
                 status_out: str):
        self.store, self.path, self.tracking_uri, self.storage = store, path, tracking_uri, storage
        self.exit_code, self.seconds, self.status_out = exit_code, seconds, status_out
        self.study = load_study(path)
        self.cells = {c.cell_id: c for c in self.study.cells}
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = self.client.get_experiment_by_name("contract")
        runs = self.client.search_runs([self.experiment.experiment_id], max_results=100)
        self.parents = [r for r in runs if r.data.tags.get(R.TAG_ROLE) == R.ROLE_STUDY]
        self.children = {r.data.tags.get(R.TAG_CELL_ID): r for r in runs if r.data.tags.get(R.TAG_ROLE) == R.ROLE_CELL}

    def of_kind(self, kind: str) -> list:
        return [run for cell_id, run in self.children.items() if _kind(self.cells[cell_id]) == kind]


@pytest.fixture(scope="module", params=STORES)
def written(request, tmp_path_factory) -> Written:
    store = request.param
    root = tmp_path_factory.mktemp(f"record-{store}")
    if store == "sqlite":
        tracking_uri, storage = f"sqlite:///{root}/mlflow.db", f"sqlite:///{root}/optuna.db"
    else:
        postgres = request.getfixturevalue("postgres")
        tracking_uri, storage = request.getfixturevalue("mlflow_server"), postgres.url("optuna")
    path = root / "contract.yaml"
    path.write_text(STUDY.format(tracking_uri=tracking_uri, storage=storage, root=root))
    real_fit = runner_module.fit

    def fit(config, **kwargs):
        if config.freeze_backbone and config.max_test_samples is None:
            raise RuntimeError("contract test: this cell fails")
        return real_fit(config, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("BNN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bnn-cache"))
        mp.setenv("BNN_HEARTBEAT_SECONDS", "1")
        mp.setattr(runner_module, "fit", fit)
        started = time.monotonic()
        exit_code = main(["run", str(path), "--quiet"])
        seconds = time.monotonic() - started
        status_out = _status_output(path)
    return Written(store, path, tracking_uri, storage, exit_code, seconds, status_out)


def _status_output(path: Path) -> str:
    """``python -m studies status`` output, on a console wide enough for every column."""
    import io

    from studies import __main__ as cli

    buffer = io.StringIO()
    console = cli.console
    cli.console = type(console)(file=buffer, width=400)
    try:
        assert main(["status", str(path)]) == 0
    finally:
        cli.console = console
    return buffer.getvalue()


# --- names that are public interface (DESIGN.md): a rename is an interface change ---------------


def test_public_names_keep_their_values():
    assert R.TAG_CELL_ID == "cell_id"
    assert (R.PARAM_BACKBONE, R.PARAM_FEATURES, R.PARAM_FREEZE_BACKBONE, R.PARAM_DATASET, R.PARAM_SEED) == (
        "backbone", "features", "freeze_backbone", "dataset", "seed")
    assert R.FINAL_METRICS == ("val_accuracy", "val_auc", "test_accuracy", "test_auc")
    assert (R.METRIC_BOPS, R.METRIC_FLOPS, R.METRIC_OPS, R.METRIC_PARAMS) == ("bops", "flops", "ops", "params")
    # MLflow's own names, and the experiment kind its UI reads.
    assert (R.TAG_RUN_NAME, R.TAG_PARENT_RUN_ID, R.TAG_GIT_COMMIT) == (
        "mlflow.runName", "mlflow.parentRunId", "mlflow.source.git.commit")
    assert (R.TAG_EXPERIMENT_KIND, R.EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")


def test_run_names_say_what_varies(tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text("name: names\ndataset: synthetic\ndefaults: {backbone: bnext_micro}\n"
                    "grid:\n  freeze_backbone: [false, true]\n  lr: [0.001]\nseeds: [0, 1]\n")
    study = load_study(path)
    names = [run_name(study, cell, "BNext-T") for cell in study.cells]
    assert names == [f"BNext-T rgb+fft+lbp {mode} lr=0.001 seed {seed}"
                     for mode in ("trainable", "frozen") for seed in (0, 1)]
    path.write_text("name: names\ndataset: synthetic\ndefaults: {backbone: bnext_micro, features: rgb}\n")
    single = load_study(path)
    assert [run_name(single, cell, "BNext-T") for cell in single.cells] == ["BNext-T rgb"]
    frozen = load_study(path, overrides={"freeze_backbone": True})
    assert [run_name(frozen, cell, "BNext-T") for cell in frozen.cells] == ["BNext-T rgb frozen"]


def test_status_reads_mlflow_once_and_briefly_when_the_server_is_down(monkeypatch):
    """``studies status`` tries an unreachable server once (MLflow's default retries take minutes)."""
    from pg_mlflow import free_port

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.monotonic()
    with pytest.raises(Exception, match="127.0.0.1"):
        R.read_cell_metrics(f"http://127.0.0.1:{free_port()}", "contract")
    assert time.monotonic() - started < 2 * R.STATUS_READ_TIMEOUT_S
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored


# --- the contract, per store --------------------------------------------------------------------


@pytest.mark.usefixtures("written")
class TestRecordContract:
    @pytest.mark.integration
    def test_the_run_itself(self, written):
        assert written.exit_code == 1  # one cell failed
        print(f"{written.store}: study written in {written.seconds:.1f} s")
        assert sorted(written.children) == sorted(written.cells)
        assert [_kind(c) for c in written.cells.values()].count("not_comparable") == 2

    def test_experiment(self, written):
        tags = written.experiment.tags
        assert written.experiment.name == written.study.name
        assert tags[R.TAG_EXPERIMENT_KIND] == R.EXPERIMENT_KIND
        assert tags[R.TAG_PRIMARY_METRIC] == "test_auc" and tags[R.TAG_PRIMARY_METRIC_GREATER_IS_BETTER] == R.TRUE

    def test_parent_run(self, written):
        (parent,) = written.parents
        tags = parent.data.tags
        assert tags[R.TAG_STUDY] == "contract" and tags[R.TAG_RUN_NAME] == parent.info.run_name == "contract"
        assert len(tags[R.TAG_GIT_COMMIT]) in (40, 7) and tags[R.TAG_SOURCE_NAME] == str(written.path)
        assert parent.data.params == {R.PARAM_CELLS: "4"}
        assert [a.path for a in written.client.list_artifacts(parent.info.run_id, R.ARTIFACT_STUDY_DIR)] == [
            f"{R.ARTIFACT_STUDY_DIR}/contract.yaml"]
        assert parent.info.status == "FAILED"  # a cell failed

    def test_cell_tags_params_and_names(self, written):
        (parent,) = written.parents
        for cell_id, run in written.children.items():
            cell, tags, params = written.cells[cell_id], run.data.tags, run.data.params
            assert tags[R.TAG_PARENT_RUN_ID] == parent.info.run_id
            assert tags[R.TAG_CELL_STUDY] == "contract"
            assert (tags[R.TAG_MODEL], tags[R.TAG_FAMILY], tags[R.TAG_BINARY]) == (
                MODEL.display_name, MODEL.family, str(MODEL.binary).lower())
            assert tags[R.TAG_SYNTHETIC] == R.TRUE and tags[R.TAG_ATTEMPTS] == "1"
            assert tags[R.TAG_GIT_COMMIT] == parent.data.tags[R.TAG_GIT_COMMIT]
            assert tags[f"{R.TAG_VERSION_PREFIX}mlflow"] and tags[f"{R.TAG_VERSION_PREFIX}torch"]
            mode = "frozen" if cell.config.freeze_backbone else "trainable"
            expected = f"{MODEL.display_name} rgb+fft+lbp {mode} max_test_samples={cell.config.max_test_samples}"
            assert run.info.run_name == tags[R.TAG_RUN_NAME] == expected
            assert params[R.PARAM_BACKBONE] == "bnext_micro" and params[R.PARAM_FEATURES] == "rgb+fft+lbp"
            assert params[R.PARAM_FREEZE_BACKBONE] == str(cell.config.freeze_backbone)
            assert params[R.PARAM_DATASET] == "synthetic" and params[R.PARAM_SEED] == "0"
            assert params[R.PARAM_AXES] == cell.axes_label() and params["data_params.count"] == "60"

    @pytest.mark.integration
    def test_finished_cells_metrics_and_data(self, written):
        for run in written.of_kind("finished") + written.of_kind("not_comparable"):
            tags, metrics = run.data.tags, run.data.metrics
            assert run.info.status == "FINISHED"
            for name in (*R.FINAL_METRICS, *R.COST_METRICS, "best_epoch", "skipped_images"):
                assert name in metrics, name
            for name in R.EPOCH_METRICS:
                assert [m.step for m in written.client.get_metric_history(run.info.run_id, name)] == [0], name
            digests = dict(part.split(":") for part in tags[R.TAG_DATA_DIGEST].split(","))
            assert set(digests) == {"train", "val", "test"} and "synthetic" in tags[R.TAG_DATA]
            assert tags[R.TAG_DEVICE] == "cpu"
            assert tags[R.TAG_TRAIN_HOST] == cpu_model() and int(tags[R.TAG_TRAIN_THREADS]) == torch.get_num_threads()
            inputs = R.read_datasets(written.client.get_run(run.info.run_id))
            assert {split: d["digest"] for split, d in inputs.items()} == digests
            assert all(d["name"] == "synthetic" and d["source_type"] == R.DATASET_SOURCE_TYPE for d in inputs.values())
            assert inputs["train"]["source"] == tags[R.TAG_DATA]
            artifacts = {a.path for a in written.client.list_artifacts(run.info.run_id)}
            assert {R.ARTIFACT_CONFIG, "plots", "predictions", Path(R.ARTIFACT_ROC).parent.as_posix()} <= artifacts

    def test_not_comparable_and_failed_cells(self, written):
        for run in written.of_kind("not_comparable"):
            assert run.info.status == "FINISHED" and "one class" in run.data.tags[R.TAG_NOT_COMPARABLE]
            assert math.isnan(run.data.metrics["test_auc"])
            assert R.TAG_FAILURE not in run.data.tags
        (failed,) = written.of_kind("failed")
        assert failed.info.status == "FAILED" and failed.data.tags[R.TAG_FAILURE] == FAILURE
        assert "test_accuracy" not in failed.data.metrics and R.TAG_NOT_COMPARABLE not in failed.data.tags
        assert R.read_datasets(written.client.get_run(failed.info.run_id)) == {}
        (finished,) = written.of_kind("finished")
        assert R.TAG_NOT_COMPARABLE not in finished.data.tags and R.TAG_FAILURE not in finished.data.tags

    def test_reader_load_runs(self, written):
        frame = load_runs("contract", written.tracking_uri, include_unfinished=True)
        assert sorted(frame["cell_id"]) == sorted(written.cells)
        assert frame.attrs["parent_run_id"] == written.parents[0].info.run_id
        assert frame.attrs["parent_git_commit"] == written.parents[0].data.tags[R.TAG_GIT_COMMIT]
        assert frame.attrs["study"] == "contract" and frame.attrs["unfinished"] == {"FAILED": 1}
        for _, row in frame.iterrows():
            run = written.children[row["cell_id"]]
            cell, tags = written.cells[row["cell_id"]], run.data.tags
            assert (row["run_id"], row["run_name"], row["status"]) == (
                run.info.run_id, run.info.run_name, run.info.status)
            assert (row["model"], row["family"], row["binary"], row["synthetic"]) == (
                MODEL.display_name, MODEL.family, MODEL.binary, True)
            assert row["study"] == "contract" and row["parent_run_id"] == tags[R.TAG_PARENT_RUN_ID]
            assert row["git_commit"] == tags[R.TAG_GIT_COMMIT] and row["attempts"] == 1
            assert _value(row["data"]) == tags.get(R.TAG_DATA)
            assert _value(row["data_digest"]) == tags.get(R.TAG_DATA_DIGEST)
            assert row[R.PARAM_FREEZE_BACKBONE] == cell.config.freeze_backbone and row[R.PARAM_SEED] == 0
            assert row[R.PARAM_BACKBONE] == "bnext_micro" and row[R.PARAM_DATASET] == "synthetic"
            kind = _kind(cell)
            assert _value(row["not_comparable"]) == tags.get(R.TAG_NOT_COMPARABLE)
            assert (_value(row["not_comparable"]) is not None) == (kind == "not_comparable")
            assert _value(row["failure"]) == (FAILURE if kind == "failed" else None)
            for name in (*R.FINAL_METRICS, R.METRIC_OPS, R.METRIC_BOPS, R.METRIC_FLOPS, R.METRIC_PARAMS):
                want = run.data.metrics.get(name, math.nan)
                assert row[name] == pytest.approx(want, nan_ok=True), name
        assert not any(c.startswith(R.EPOCH_PREFIX) for c in frame.columns)
        finished = load_runs("contract", written.tracking_uri)
        assert len(finished) == 3 and set(finished["status"]) == {"FINISHED"}

    @pytest.mark.integration
    def test_status_reads_results_from_mlflow_not_optuna(self, written):
        trials = optuna.load_study(study_name="contract", storage=written.storage).get_trials()
        allowed = {R.ATTR_CELL_ID, R.ATTR_RUN_ID, R.ATTR_AXES, R.ATTR_FAILURE, R.ATTR_NOT_COMPARABLE}
        assert all(set(t.user_attrs) <= allowed for t in trials), [t.user_attrs for t in trials]
        out = written.status_out
        assert "1 done, 2 not comparable, 1 failed of 4 cells" in out and "results not read" not in out
        metrics = R.read_cell_metrics(written.tracking_uri, "contract")
        (finished,) = written.of_kind("finished")
        assert metrics[finished.info.run_id] == {k: v for k, v in finished.data.metrics.items()
                                                 if not k.startswith(R.EPOCH_PREFIX)}
        line = next(line for line in out.splitlines() if finished.data.tags[R.TAG_CELL_ID] in line)
        for name in (R.METRIC_VAL_ACCURACY, R.METRIC_TEST_ACCURACY, R.METRIC_TEST_AUC):
            assert f"{finished.data.metrics[name]:.4f}" in line, name
