"""Study files, the Optuna runner and the MLflow record, against real SQLite stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from studies import StudyFileError, load_study
from studies.__main__ import main
from studies.record import ARTIFACT_PLOTS
from studies.runner import Runner
from studies.spec import BUNDLED_DIR

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted(p.name for p in BUNDLED_DIR.glob("*.yaml"))

TINY = """\
name: tiny
dataset: synthetic
data_params: {{count: {count}, image_size: 36, difficulty: 0.0}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 32
  epochs: {epochs}
  batch_size: 32
  lr: 1.0e-3
grid:
  features: [rgb, rgb+fft, rgb+lbp, rgb+sobel+fft+lbp]
log_checkpoint: {checkpoint}
"""


pytestmark = pytest.mark.usefixtures("isolated", "fast_heartbeat")  # tests/conftest.py


def _tiny(tmp_path, count=64, epochs=1, checkpoint="false") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(root=tmp_path, count=count, epochs=epochs, checkpoint=checkpoint))
    return path


def _write(tmp_path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- expansion -------------------------------------------------------------------------------


def test_quickstart_expands_to_the_eight_feature_sets_times_two_seeds():
    study = load_study("quickstart.yaml")
    sets = ["rgb", "rgb+sobel", "rgb+fft", "rgb+lbp", "rgb+sobel+fft", "rgb+sobel+lbp", "rgb+fft+lbp", "rgb+sobel+fft+lbp"]
    assert [c.config.features for c in study.cells] == [s for s in sets for _ in (0, 1)]
    assert [c.config.seed for c in study.cells] == [0, 1] * 8
    assert len({c.cell_id for c in study.cells}) == 16
    assert all(c.config.backbone == "bnext_micro" and c.config.dataset == "synthetic" for c in study.cells)
    assert all(c.config.head == "bn_linear" and c.config.lr_schedule == "cosine" for c in study.cells)  # scratch
    assert all(c.config.output_dir.endswith(c.cell_id) for c in study.cells)


def test_content_ids_are_stable_and_follow_the_config(tmp_path):
    first = [c.cell_id for c in load_study(_tiny(tmp_path)).cells]
    assert first == [c.cell_id for c in load_study(_tiny(tmp_path)).cells]
    changed = [c.cell_id for c in load_study(_tiny(tmp_path), overrides={"lr": 5e-4}).cells]
    assert set(first).isdisjoint(changed)
    moved = load_study(_tiny(tmp_path), overrides={"runs_dir": str(tmp_path / "elsewhere")})
    assert [c.cell_id for c in moved.cells] == first  # where outputs go is not part of the id


def test_grid_product_and_seeds(tmp_path):
    study = load_study(_write(tmp_path, """
grid:
  backbone: [bnext_micro, bnext_tiny]
  freeze_backbone: [true, false]
  features: {powerset: [fft, lbp]}
seeds: [0, 1, 2]
defaults: {resolution: 32}
"""))
    assert len(study.cells) == 2 * 2 * 4 * 3
    assert study.cells[0].axes == {"backbone": "bnext_micro", "freeze_backbone": True, "features": "rgb", "seed": 0}
    assert {c.config.seed for c in study.cells} == {0, 1, 2}


def test_environment_variables_expand_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DATA", str(tmp_path / "cifake"))
    study = load_study(_write(tmp_path, "dataset: cifake\ndata_root: ${MY_DATA}\n"))
    assert study.cells[0].config.data_root == str(tmp_path / "cifake")
    monkeypatch.delenv("MY_DATA")
    assert load_study(_write(tmp_path, "dataset: cifake\ndata_root: ${MY_DATA}\n")).cells[0].config.data_root is None


# --- bad files -------------------------------------------------------------------------------

BAD = {
    "unknown top key": ("name: x\ndefualts: {epochs: 1}\n", 2, "defualts", "did you mean 'defaults'"),
    "unknown config key": ("defaults:\n  epochs: 1\n  learnrate: 0.1\n", 3, "defaults.learnrate", "valid keys"),
    "duplicate key": ("defaults:\n  epochs: 1\n  epochs: 2\n", 3, "epochs", "duplicate key (first defined on line 2)"),
    "wrong type": ("defaults:\n  batch_size: many\n", 2, "defaults.batch_size", "valid integer"),
    "unknown backbone": ("grid:\n  backbone: [bnext_tiny, bnext_tyni]\n", 2, "grid.backbone", "bnext_tyni"),
    "unknown feature": ("grid:\n  features: [rgb, rgb+fourier]\n", 2, "grid.features", "fourier"),
    "bad powerset": ("grid:\n  features: {powerset: [fft], extra: 1}\n", 2, "grid.features", "extra"),
    "grid axis not a list": ("grid:\n  epochs: 3\n", 2, "grid.epochs", "a grid axis is a list"),
    "yaml syntax": ("defaults:\n  epochs: [1, 2\n", 3, None, "invalid YAML"),
    "grid and search": (
        "grid:\n  lr: [0.1]\nsearch:\n  trials: 2\n  space:\n    lr: {type: float, low: 1e-5, high: 1e-3}\n",
        3, "search", "either a grid or a search",
    ),
    "search out of range": (
        "search:\n  trials: 2\n  space:\n    epochs: {type: int, low: 0, high: 3}\n", 4, "search.space.epochs", "invalid",
    ),
    "twice": ("dataset: cifake\ndefaults:\n  dataset: folder\n", 1, "dataset", "given twice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_files_name_file_line_and_key(tmp_path, case, capsys):
    text, line, key, message = BAD[case]
    path = _write(tmp_path, text)
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    err = info.value
    assert err.path == str(path) and err.line == line and err.key == key
    assert message in str(err)
    # The CLI exits 2 with that message and creates nothing.
    assert main(["run", str(path)]) == 2
    assert f"{path}:{line}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_shipped_files_refuse_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.setattr("studies.spec.BUNDLED_DIR", tmp_path)
    path = _write(tmp_path, "dataset: cifake\ndata_root: /data/cifake\n")
    with pytest.raises(StudyFileError, match="absolute paths are not allowed") as info:
        load_study(path)
    assert info.value.line == 2


def test_set_overrides_and_unknown_override(tmp_path):
    study = load_study(_tiny(tmp_path), overrides={"epochs": 3, "data_params.count": 32, "seeds": [4, 5]})
    assert {c.config.epochs for c in study.cells} == {3}
    assert study.cells[0].config.data_params["count"] == 32 and len(study.cells) == 8
    with pytest.raises(StudyFileError, match="did you mean 'epochs'"):
        load_study(_tiny(tmp_path), overrides={"epoch": 3})


# --- shipped studies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.integration
def test_shipped_studies_validate_and_plan(name, capsys):
    assert main(["validate", name]) == 0
    assert main(["plan", name]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "cells" in out


@pytest.mark.parametrize("name", [n for n in BUNDLED if n != "quickstart.yaml"])
def test_paper_studies_fail_clearly_without_their_data(name, tmp_path, monkeypatch, capsys):
    for var in ("BNN_DATA_COCO2014", "BNN_DATA_COCOFAKE", "BNN_DATA_DFFD", "BNN_DATA_CIFAKE"):
        monkeypatch.setenv(var, str(tmp_path / "absent" / var))
    assert main(["run", name, "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert "data missing" in err and str(tmp_path / "absent") in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


# --- running ---------------------------------------------------------------------------------


def _record(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bnn.role") == "study"]
    children = [r for r in runs if r.data.tags.get("bnn.role") == "cell"]
    return client, parents, children


def _trials(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    return optuna.load_study(study_name="tiny", storage=storage).get_trials()


def _assert_each_cell_once(tmp_path, n_cells=4):
    trials = _trials(tmp_path)
    complete = [t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == n_cells
    _, parents, children = _record(tmp_path)
    assert len(parents) == 1
    assert sorted(r.data.tags["cell_id"] for r in children) == sorted(complete)
    assert all(r.info.status == "FINISHED" for r in children)


@pytest.mark.integration
def test_study_end_to_end_mlflow_record_and_rerun(tmp_path, capsys):
    path = _tiny(tmp_path, checkpoint="true")
    assert main(["run", str(path), "--quiet"]) == 0
    client, parents, children = _record(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "study")] == ["study/tiny.yaml"]
    assert len(children) == 4
    study = load_study(path)
    by_cell = {c.cell_id: c for c in study.cells}
    for run in children:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        cell = by_cell[tags["cell_id"]]
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id and tags["study"] == "tiny"
        assert tags["bnn.synthetic"] == "true" and "synthetic benchmark" in tags["bnn.data"]
        assert params["backbone"] == "bnext_micro" and params["features"] == cell.config.features
        assert params["freeze_backbone"] == "False" and params["dataset"] == "synthetic" and params["seed"] == "0"
        for key in ("val_accuracy", "val_auc", "test_accuracy", "test_auc", "test_eer", "test_ap",
                    "bops", "flops", "ops", "params", "binary_params", "storage_bytes"):
            assert key in metrics, key
        assert metrics["ops"] == metrics["flops"] + metrics["bops"] // 64
        history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert [m.step for m in history] == [0]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "checkpoint", "plots", "predictions", "metrics"} <= artifacts
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {ARTIFACT_PLOTS}
    trials = _trials(tmp_path)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}

    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 0  # re-run: nothing left to do
    assert "0 cells finished (0 not comparable), 0 failed, 4 already done before" in capsys.readouterr().out
    assert len(_trials(tmp_path)) == 4 and len(_record(tmp_path)[2]) == 4
    assert main(["status", str(path)]) == 0
    assert "4 done of 4 cells" in capsys.readouterr().out


def _worker(path: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "studies", "run", str(path), "--quiet"],
        cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_running_trial(tmp_path, process, timeout=120, after_epochs=0) -> None:
    """Waits until one cell is done and another is running (with ``after_epochs`` epochs logged)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            trials = _trials(tmp_path) if (tmp_path / "optuna.db").exists() else []
        except Exception:  # schema not created yet
            trials = []
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
        if any(t.state == TrialState.COMPLETE for t in trials) and running:
            if after_epochs == 0:
                return
            client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
            history = client.get_metric_history(running[0].user_attrs["mlflow_run_id"], "epoch_val_accuracy")
            if len(history) >= after_epochs:
                return
        time.sleep(0.1)
    raise AssertionError("no cell started in time")


@pytest.mark.slow
@pytest.mark.integration
def test_sigkilled_worker_is_detected_and_its_cell_rerun_once(tmp_path):
    path = _tiny(tmp_path, count=300, epochs=3)
    worker = _worker(path)
    _wait_for_running_trial(tmp_path, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    killed = [t for t in _trials(tmp_path) if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    assert main(["run", str(path), "--quiet"]) == 0
    _assert_each_cell_once(tmp_path)
    trials = {t.number: t for t in _trials(tmp_path)}
    assert trials[killed[0].number].state == TrialState.FAIL
    _, _, children = _record(tmp_path)
    retried = [r for r in children if r.data.tags["cell_id"] == killed[0].user_attrs["cell_id"]]
    assert len(retried) == 1 and retried[0].data.tags["bnn.attempts"] == "2"


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_ends_the_cell_cleanly_and_the_rerun_finishes(tmp_path):
    path = _tiny(tmp_path, count=300, epochs=4)
    worker = _worker(path)
    _wait_for_running_trial(tmp_path, worker, after_epochs=1)  # mid-training: 3 epochs to go
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 130, output
    interrupted = [t for t in _trials(tmp_path) if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and "SIGTERM" in interrupted[0].user_attrs["failure"]
    client, parents, children = _record(tmp_path)
    killed = client.get_run(interrupted[0].user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED" and parents[0].info.status == "KILLED"
    assert main(["run", str(path), "--quiet"]) == 0
    _assert_each_cell_once(tmp_path)


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_share_a_grid_with_each_cell_once(tmp_path):
    path = _tiny(tmp_path, count=120, epochs=2)
    workers = [_worker(path), _worker(path)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    _assert_each_cell_once(tmp_path)
    finished_by = [out.count("FINISHED") for out in outputs]
    assert sum(finished_by) == 4


@pytest.mark.integration
def test_waiting_trials_of_another_study_version_are_left_alone(tmp_path):
    path = _tiny(tmp_path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    foreign = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    foreign.enqueue_trial({}, user_attrs={"cell_id": "0123456789ab"})  # e.g. left by --set epochs=9
    assert main(["run", str(path), "--quiet"]) == 0
    _assert_each_cell_once(tmp_path)
    waiting = [t for t in _trials(tmp_path) if t.state == TrialState.WAITING]
    assert [t.user_attrs["cell_id"] for t in waiting] == ["0123456789ab"]


_OPEN_BOTH_STORES = """
import sys
from mlflow import MlflowClient
from studies.db_setup import open_shared
from studies.cell_queue import open_storage
tracking, storage = sys.argv[1:]
open_shared(tracking, lambda: MlflowClient(tracking).search_experiments(), "opening MLflow")
open_storage(storage).get_all_studies()
"""


@pytest.mark.slow
@pytest.mark.integration
def test_workers_creating_the_stores_together_leave_them_usable(tmp_path):
    """Unserialised, concurrent MLflow migrations on one SQLite file break it for good."""
    tracking, storage = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    workers = [
        subprocess.Popen([sys.executable, "-c", _OPEN_BOTH_STORES, tracking, storage],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs
    assert MlflowClient(tracking).create_experiment("after") is not None


@pytest.mark.integration
def test_a_worker_whose_trial_was_failed_as_stale_leaves_the_cell(tmp_path):
    """Another worker failing our trial (as ``fail_stale_trials`` does) must stop us at the epoch end."""
    study = load_study(_tiny(tmp_path, epochs=2))
    runner = Runner(study)
    stolen = []

    def steal_first_cell(kind, info):
        if kind == "epoch" and not stolen:
            running = runner.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            runner.storage.set_trial_state_values(runner.queue.trial_id(running[0]), state=TrialState.FAIL)
            stolen.append((info["cell"].cell_id, info["stats"].epoch))

    runner.on_event = steal_first_cell
    summary = runner.run()
    (cell_id, epoch), = stolen
    assert epoch == 0 and summary.taken_over == [cell_id] and not summary.failed
    _assert_each_cell_once(tmp_path)  # the stolen cell went back to the queue and ran once more
    _, _, children = _record(tmp_path)
    retried = next(r for r in children if r.data.tags["cell_id"] == cell_id)
    assert retried.data.tags["bnn.attempts"] == "2"


# --- scale-out: the PostgreSQL driver, a taken-over worker, --workers N ------------------------

MICRO = """\
name: tiny
dataset: synthetic
data_params: {{count: {count}, image_size: 20, difficulty: 0.0}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: {epochs}
  batch_size: 16
  lr: 1.0e-3
{grid}log_checkpoint: false
"""
FOUR_CELLS = "grid:\n  features: [rgb, rgb+fft, rgb+lbp, rgb+sobel]\n"


def _micro(tmp_path, count=60, epochs=1, grid=FOUR_CELLS) -> Path:
    """A study of tiny cells (BNext-micro at 16 px): 4 cells, or 1 with ``grid=""``."""
    return _write(tmp_path, MICRO.format(root=tmp_path, count=count, epochs=epochs, grid=grid), "tiny.yaml")


@pytest.mark.parametrize("url", ["postgresql://u@db/optuna", "postgresql+psycopg://u@db/optuna"])
def test_a_postgresql_url_without_its_driver_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, url):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else find_spec(name, *a))
    path = _micro(tmp_path, grid="")
    for command in (["run", str(path), "--set", f"storage={url}"], ["status", str(path), "--set", f"storage={url}"],
                    ["run", str(path), "--set", f"tracking_uri={url}"],
                    ["run", str(path), "--workers", "2", "--set", f"storage={url}"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.strip() == 'error: PostgreSQL needs the driver: pip install -e ".[postgres]"', err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.integration
def test_a_worker_taken_over_before_its_first_epoch_writes_nothing_more_into_the_run(tmp_path):
    """The claim is checked before each write: a stalled worker whose trial was failed as stale
    (here: before its cell trained) logs no epoch, no result and no end into the run, which now
    belongs to the worker that took the cell over; that worker logs each epoch once."""
    study = load_study(_micro(tmp_path, epochs=2))
    runner = Runner(study)
    window = []  # ["open"] from the steal until the taken-over attempt has left
    writes = []
    stolen = []

    def on_event(kind, info):
        if kind == "cell_start" and not stolen:
            trial = runner.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
            runner.storage.set_trial_state_values(runner.queue.trial_id(trial), state=TrialState.FAIL)
            stolen.append(info["cell"].cell_id)
            window.append("open")
        elif kind == "cell_end" and info["status"] == "TAKEN OVER":
            window.clear()

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            if window:
                writes.append(name)
            return fn(*args, **kwargs)
        return wrapped

    tracker = runner.tracker
    epoch_logger = tracker.epoch_logger
    tracker.epoch_logger = lambda run_id: spy("epoch", epoch_logger(run_id))
    tracker.log_result = spy("log_result", tracker.log_result)
    tracker.end = spy("end", tracker.end)
    runner.on_event = on_event
    summary = runner.run()
    assert summary.taken_over == stolen and not summary.failed
    assert writes == []
    _assert_each_cell_once(tmp_path)
    client, _, children = _record(tmp_path)
    retried = next(r for r in children if r.data.tags["cell_id"] == stolen[0])
    assert retried.data.tags["bnn.attempts"] == "2"
    for run in children:
        history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert sorted(m.step for m in history) == [0, 1]


class _Killed(BaseException):
    """Stands for a SIGKILL right after ``fit`` wrote an epoch's checkpoint, before it was logged."""


@pytest.mark.integration
def test_an_epoch_checkpointed_but_not_logged_by_a_killed_attempt_is_logged_by_the_retry(tmp_path):
    path = _micro(tmp_path, epochs=3, grid="")
    runner = Runner(load_study(path))
    epoch_logger = runner.tracker.epoch_logger

    def dies_at_epoch_1(run_id):
        log_epoch = epoch_logger(run_id)

        def log(stats):
            if stats.epoch == 1:
                raise _Killed
            log_epoch(stats)
        return log

    runner.tracker.epoch_logger = dies_at_epoch_1
    with pytest.raises(_Killed):
        runner.run()
    (trial,) = _trials(tmp_path)
    assert trial.state == TrialState.RUNNING
    runner.storage.set_trial_state_values(runner.queue.trial_id(trial), state=TrialState.FAIL)  # as fail_stale_trials does
    summary = Runner(load_study(path)).run()
    assert len(summary.completed) == 1 and not summary.failed
    _assert_each_cell_once(tmp_path, n_cells=1)
    client, _, (run,) = _record(tmp_path)
    history = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]  # epoch 1 from the checkpoint, 2 trained again
    assert run.data.tags["bnn.attempts"] == "2"


def _workers_parent(path: Path, n: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.Popen([sys.executable, "-m", "studies", "run", str(path), "--workers", str(n)],
                            cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _processes_running(path: Path) -> list[int]:
    """Ids of the processes whose command line names ``path`` (the parent and its workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                if (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.integration
def test_workers_option_runs_each_cell_once_with_single_threaded_workers(tmp_path):
    path = _micro(tmp_path, epochs=2)
    parent = _workers_parent(path, 2)
    output, _ = parent.communicate(timeout=300)
    assert parent.returncode == 0, output
    _assert_each_cell_once(tmp_path)
    assert "starting 2 workers (OMP_NUM_THREADS=1 each)" in output
    assert "w1 exit 0, w2 exit 0" in output
    assert sum(line.startswith(("[w1]", "[w2]")) and "FINISHED" in line for line in output.splitlines()) == 4
    assert not _processes_running(path)


@pytest.mark.slow
@pytest.mark.integration
def test_sigint_to_the_workers_parent_stops_every_worker_with_130(tmp_path):
    path = _micro(tmp_path, count=400, epochs=4)
    parent = _workers_parent(path, 2)
    deadline = time.time() + 180
    while time.time() < deadline:  # both workers are in a cell
        assert parent.poll() is None, parent.stdout.read()
        try:
            running = [t for t in _trials(tmp_path) if t.state == TrialState.RUNNING]
        except Exception:  # the stores are being created
            running = []
        if len(running) == 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the two workers did not start their cells in time")
    parent.send_signal(signal.SIGINT)
    output, _ = parent.communicate(timeout=120)
    assert parent.returncode == 130, output
    assert "w1 exit 130, w2 exit 130" in output
    assert not _processes_running(path)
    trials = _trials(tmp_path)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sorted("SIGINT" in t.user_attrs.get("failure", "") for t in trials if t.state == TrialState.FAIL) == [True, True]


@pytest.mark.parametrize("given", [None, "false"])
@pytest.mark.integration
def test_mlflow_telemetry_is_off_in_study_processes_unless_the_user_set_it(given):
    """MLflow's telemetry thread removes its session id from os.environ while requests iterate it
    (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID' in a log_batch with 8 workers): studies turn it off."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    if given is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = given
    code = "import os, studies.record; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == (given or "true")


@pytest.mark.integration
def test_plan_in_a_log_keeps_every_value_on_one_line(tmp_path):
    """stdout a pipe (a log file, a cluster job): the table is not wrapped at 80 columns, so each
    cell id and backbone name is whole on its cell's line."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    study = tmp_path / "wide.yaml"
    study.write_text("name: wide\ndataset: synthetic\ndefaults: {resolution: 32, epochs: 1}\n"
                     "grid:\n  backbone: [bnext_tiny, bnext_small, vit_base_patch32_224]\n"
                     "  features: [rgb+fft+lbp+sobel]\n  freeze_backbone: [true, false]\n"
                     f"tracking_uri: sqlite:///{tmp_path}/mlflow.db\nstorage: sqlite:///{tmp_path}/optuna.db\n")
    result = subprocess.run([sys.executable, "-m", "studies", "plan", str(study)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    cells = load_study(study).cells
    lines = result.stdout.splitlines()
    for cell in cells:
        (line,) = [line for line in lines if cell.cell_id in line]
        assert cell.config.backbone in line and "rgb+fft+lbp+sobel" in line
    assert max(len(line) for line in lines) > 80
