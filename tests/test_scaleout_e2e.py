"""Scale-out with the real components: PostgreSQL for Optuna, an MLflow server on PostgreSQL, three
worker processes, one of them SIGKILLed mid-cell and restarted.

Starts a throw-away PostgreSQL cluster and MLflow server (``pg_mlflow``; skipped when they cannot
start, failed under ``CI``). The grid is 12 tiny cells (4 feature sets x 3 seeds; BNext-micro at
16 px, 2 epochs, a few seconds each); heartbeats every second (stale after the 10 s minimum).

What a killed attempt leaves (the project keeps one MLflow child run per cell): its Optuna trial
is FAIL (failed as stale, without a ``failure`` attribute: the worker died, it did not fail); the
cell's run is reused by the retry, so it ends FINISHED with ``bnn.attempts`` = 2; the retry
resumes from the killed attempt's last checkpoint, and each epoch appears once in the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from pg_mlflow import (  # noqa: F401
    free_port,
    mlflow_server_fixture,
    mlflow_tracking_server,
    postgres_fixture,
    stop_process_group,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

STUDY = """\
name: scaleout_e2e
dataset: synthetic
data_params: {{count: 60, image_size: 20, difficulty: 0.0}}
tracking_uri: {tracking}
storage: {storage}
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: 2
  batch_size: 16
  lr: 1.0e-3
grid:
  features: [rgb, rgb+fft, rgb+lbp, rgb+sobel]
seeds: [0, 1, 2]
log_checkpoint: false
"""
CELLS, EPOCHS = 12, 2
START = re.compile(r"cell (\w+) start")


def _start_worker(path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "BNN_HEARTBEAT_SECONDS": "1", "OMP_NUM_THREADS": "1",
           "BNN_CACHE_DIR": str(path.parent / "cache")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "studies", "run", str(path), "--quiet"], cwd=path.parent,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _trials(storage_url: str, study: str = "scaleout_e2e") -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(storage_url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []
    finally:
        storage.engine.dispose()


def _wait_mid_cell(worker: subprocess.Popen, log: Path, storage_url: str, client: MlflowClient,
                   timeout: float = 240, study: str = "scaleout_e2e") -> optuna.trial.FrozenTrial:
    """The RUNNING trial of ``worker``'s current cell, once its run holds one finished epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()
        started = START.findall(log.read_text(errors="replace"))
        if started:
            running = [t for t in _trials(storage_url, study) if t.state == TrialState.RUNNING
                       and t.user_attrs.get("cell_id") == started[-1] and "mlflow_run_id" in t.user_attrs]
            if running and client.get_metric_history(running[0].user_attrs["mlflow_run_id"], "epoch_val_accuracy"):
                return running[0]
        time.sleep(0.2)
    raise AssertionError(f"worker did not get into a cell in {timeout:.0f} s:\n{log.read_text()}")


@pytest.mark.integration
def test_three_workers_on_postgresql_and_an_mlflow_server_survive_a_sigkill(tmp_path, postgres, mlflow_server):
    started = time.monotonic()
    storage_url = postgres.url("optuna")
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(tracking=mlflow_server, storage=storage_url, root=tmp_path))
    client = MlflowClient(mlflow_server)
    logs = [tmp_path / f"worker{k}.log" for k in range(3)]
    workers = [_start_worker(path, log) for log in logs]
    try:
        killed = _wait_mid_cell(workers[0], logs[0], storage_url, client)
        os.killpg(workers[0].pid, signal.SIGKILL)  # mid-cell: one epoch logged, more to go
        workers[0].wait(timeout=30)
        after_kill = {t.number: t for t in _trials(storage_url)}
        assert after_kill[killed.number].state == TrialState.RUNNING, "the worker finished its cell before the kill"
        workers.append(_start_worker(path, logs[0]))  # the restarted worker
        for worker, log in zip(workers[1:], [*logs[1:], logs[0]], strict=True):
            assert worker.wait(timeout=600) == 0, log.read_text()
    finally:
        for worker in workers:
            stop_process_group(worker, timeout=10)
    wall = time.monotonic() - started

    # Optuna: one COMPLETE trial per cell; the killed attempt is a FAIL trial of its cell.
    trials = _trials(storage_url)
    complete = [t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == CELLS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed_now = next(t for t in trials if t.number == killed.number)
    assert killed_now.state == TrialState.FAIL and "failure" not in killed_now.user_attrs

    # MLflow: one parent run FINISHED; one FINISHED child run per cell; nothing left RUNNING.
    experiment = client.get_experiment_by_name("scaleout_e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bnn.role") == "study"]
    children = [r for r in runs if r.data.tags.get("bnn.role") == "cell"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["cell_id"] for r in children) == sorted(complete)
    assert [r.info.status for r in runs if r.info.status != "FINISHED"] == []
    attempts = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.FAIL):
            attempts[t.user_attrs["cell_id"]] = attempts.get(t.user_attrs["cell_id"], 0) + 1
    for run in children:
        cell_id = run.data.tags["cell_id"]
        assert run.data.tags["bnn.attempts"] == str(attempts[cell_id]), cell_id
        history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert sorted(m.step for m in history) == list(range(EPOCHS)), (cell_id, [m.step for m in history])
    retried = next(r for r in children if r.data.tags["cell_id"] == killed.user_attrs["cell_id"])
    assert retried.info.run_id == killed.user_attrs["mlflow_run_id"]  # the retry reused the cell's run
    assert retried.data.tags["bnn.attempts"] == "2"
    print(f"\nscale-out e2e: {CELLS} cells, 3 workers (one SIGKILLed and restarted) in {wall:.0f} s")


@pytest.mark.integration
def test_a_postgresql_restart_mid_cell_is_bridged_and_each_cell_finishes_once(tmp_path, postgres, mlflow_server):
    """Optuna on PostgreSQL, MLflow's server on PostgreSQL: the server restarts while a cell trains;
    the worker reconnects (SQLAlchemy's pool pre-ping, MLflow's HTTP retries) and every cell ends
    FINISHED once, with each epoch logged once."""
    storage_url = postgres.url("optuna")
    path = tmp_path / "study.yaml"
    study = STUDY.replace("name: scaleout_e2e", "name: pg_restart").replace(
        "features: [rgb, rgb+fft, rgb+lbp, rgb+sobel]", "features: [rgb, rgb+fft]").replace("seeds: [0, 1, 2]", "seeds: [0]")
    path.write_text(study.format(tracking=mlflow_server, storage=storage_url, root=tmp_path))
    client = MlflowClient(mlflow_server)
    log = tmp_path / "worker.log"
    worker = _start_worker(path, log)
    try:
        trial = _wait_mid_cell(worker, log, storage_url, client, study="pg_restart")
        postgres.restart()
        assert worker.wait(timeout=600) == 0, log.read_text()
    finally:
        stop_process_group(worker, timeout=10)
    trials = _trials(storage_url, "pg_restart")
    complete = [t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 2 and trial.user_attrs["cell_id"] in complete
    experiment = client.get_experiment_by_name("pg_restart")
    children = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("bnn.role") == "cell"]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    for run in children:
        history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert sorted(m.step for m in history) == list(range(EPOCHS))


@pytest.mark.integration
def test_an_mlflow_server_outage_mid_cell_is_bridged(tmp_path, postgres):
    """The tracking server is stopped for 20 s while a cell trains, then started again on the same
    port: MLflow's HTTP retries bridge the gap and the cells finish once each."""
    backend = postgres.create_database("mlflow_outage")
    port, root = free_port(), tmp_path / "server"
    root.mkdir()
    storage_url = postgres.create_database("optuna_outage")
    path = tmp_path / "study.yaml"
    study = STUDY.replace("name: scaleout_e2e", "name: outage").replace(
        "features: [rgb, rgb+fft, rgb+lbp, rgb+sobel]", "features: [rgb, rgb+fft]").replace("seeds: [0, 1, 2]", "seeds: [0]")
    url = f"http://127.0.0.1:{port}"
    path.write_text(study.format(tracking=url, storage=storage_url, root=tmp_path))
    log = tmp_path / "worker.log"
    worker = None
    try:
        with mlflow_tracking_server(backend, port=port, root=root):
            worker = _start_worker(path, log)
            _wait_mid_cell(worker, log, storage_url, MlflowClient(url), study="outage")
        time.sleep(20)  # the server is down
        with mlflow_tracking_server(backend, port=port, root=root):
            assert worker.wait(timeout=600) == 0, log.read_text()
            client = MlflowClient(url)
            experiment = client.get_experiment_by_name("outage")
            children = [r for r in client.search_runs([experiment.experiment_id])
                        if r.data.tags.get("bnn.role") == "cell"]
            assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
            for run in children:
                history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
                assert sorted(m.step for m in history) == list(range(EPOCHS))
    finally:
        if worker is not None:
            stop_process_group(worker, timeout=10)
    complete = [t.user_attrs["cell_id"] for t in _trials(storage_url, "outage") if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 2
