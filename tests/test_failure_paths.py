"""Studies that cannot succeed end within a bounded number of attempts, a NaN objective finishes a
cell as "not comparable", a signal never raises inside library code, and the SQLite stores are
created whole (cases C01, C02, C03, C07 of issue 10 and the other members of their kinds)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from bnn.config import FitConfig
from bnn.signals import FitInterrupted, StopRequest
from bnn.splits import load_splits
from bnn.train import fit, scalar_names
from studies import objective
from studies.__main__ import main
from studies.cell_queue import MAX_ATTEMPTS, NOT_COMPARABLE, cell_states
from studies.db_setup import create_whole, open_shared
from studies.record import create_mlflow_schema
from studies.runner import Runner, check_inputs
from studies.spec import load_study
from studies.yaml_lines import StudyFileError

STUDY = """\
name: {name}
dataset: synthetic
data_params: {{count: {count}, image_size: 20, difficulty: 0.0}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: {epochs}
  batch_size: 16
{extra}
log_checkpoint: false
"""


pytestmark = pytest.mark.usefixtures("isolated", "fast_heartbeat")  # tests/conftest.py


def _study(tmp_path: Path, extra: str = "", name: str = "s", count: int = 60, epochs: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, root=tmp_path, count=count, epochs=epochs, extra=extra))
    return path


def _trials(tmp_path: Path, name: str = "s") -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _cell_runs(tmp_path: Path, name: str = "s") -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("bnn.role") == "cell"]


# --- the objective metric is validated --------------------------------------------------------


@pytest.mark.parametrize(("metric", "suggestion"), [("val_acc", "val_accuracy"), ("test_AUC", "test_auc"),
                                                    ("accuracy", "val_accuracy"), ("opps", "ops")])
def test_a_misspelt_objective_metric_is_an_error_naming_line_and_valid_names(tmp_path, metric, suggestion, capsys):
    path = _study(tmp_path, f"objective: {{metric: {metric}}}")
    with pytest.raises(StudyFileError) as err:
        load_study(path)
    message = str(err.value)
    assert f"{path}:11: objective.metric: unknown metric '{metric}'" in message
    assert f"did you mean '{suggestion}'" in message and "val_auc" in message and "test_eer" in message
    assert main(["validate", str(path)]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("metric", ["val_accuracy", "val_auc", "test_auc", "test_eer", "ops", "params"])
def test_every_metric_a_cell_logs_is_a_valid_objective(tmp_path, metric):
    study = load_study(_study(tmp_path, f"objective: {{metric: {metric}, direction: maximize}}"))
    assert study.spec.objective.metric == metric


def test_metric_families_added_by_later_features_become_valid_objectives(tmp_path, monkeypatch):
    path = _study(tmp_path, "objective: {metric: energy_mj, direction: minimize}")
    with pytest.raises(StudyFileError, match="unknown metric 'energy_mj'"):
        load_study(path)
    monkeypatch.setattr(objective, "METRIC_FAMILIES", [*objective.METRIC_FAMILIES, lambda spec: ["energy_mj"]])
    assert load_study(path).spec.objective.metric == "energy_mj"


@pytest.mark.integration
def test_scalar_names_are_the_names_a_finished_run_logs(tmp_path):
    """Every name known before a run is logged; the others are per-source names, which depend on
    the data (the synthetic benchmark's generator kinds)."""
    config = FitConfig(backbone="bnext_micro", features="rgb", dataset="synthetic", resolution=16, epochs=1,
                       batch_size=16, data_params={"count": 60, "image_size": 20}, output_dir=str(tmp_path / "r"))
    logged = set(fit(config).scalars())
    assert set(scalar_names()) <= logged
    assert {name for name in logged - set(scalar_names()) if not name.startswith("source_")} == set()
    assert {"source_real_accuracy", "source_real_count"} <= logged


# --- C01: a NaN objective finishes the cell once, as "not comparable" --------------------------


@pytest.mark.integration
def test_nan_objective_finishes_the_cell_once_as_not_comparable(tmp_path, capsys):
    """C01's kind: test_auc of a one-class test split (one test image) is NaN."""
    path = _study(tmp_path, "  max_test_samples: 1\nobjective: {metric: test_auc}")
    started = time.monotonic()
    assert main(["run", str(path), "--quiet"]) == 0
    assert time.monotonic() - started < 120
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "1 cells finished (1 not comparable), 0 failed" in out
    assert "objective test_auc is NaN: the test split has one class (1 image)" in out
    trials = _trials(tmp_path)
    assert len(trials) == 1 and trials[0].state == TrialState.PRUNED
    assert "one class" in trials[0].user_attrs["not_comparable"]
    (run,) = _cell_runs(tmp_path)
    assert run.info.status == "FINISHED" and "one class" in run.data.tags["bnn.not_comparable"]
    assert run.data.metrics["test_accuracy"] in (0.0, 1.0) and run.data.metrics["test_count"] == 1
    assert "val_accuracy" in run.data.metrics
    study = load_study(path)
    states = cell_states(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db"))
    assert states == {study.cells[0].cell_id: NOT_COMPARABLE}

    assert main(["run", str(path), "--quiet"]) == 0  # counts as done: nothing is run again
    assert "0 cells finished (0 not comparable), 0 failed, 1 already done before" in " ".join(
        capsys.readouterr().out.split())
    assert len(_trials(tmp_path)) == 1 and len(_cell_runs(tmp_path)) == 1
    assert main(["status", str(path)]) == 0
    assert "1 not comparable of 1 cells" in capsys.readouterr().out


def _cifake_like(tmp_path: Path, train: int = 30, test: int = 6) -> Path:
    """C01's layout: ``{train,test}/{REAL,FAKE}`` with Kaggle-style names, ``train``+``train`` images."""
    from PIL import Image

    root = tmp_path / "data"
    for label, cls in enumerate(("REAL", "FAKE")):
        for split, n in (("train", train), ("test", test)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (i * 8, label * 200, 0)).save(folder / f"{i:04d} ({i % 3}).png")
    return root


def _folder_study(tmp_path: Path, extra: str) -> Path:
    text = _study(tmp_path).read_text().replace(
        "dataset: synthetic\ndata_params: {count: 60, image_size: 20, difficulty: 0.0}",
        f"dataset: folder\ndata_root: {_cifake_like(tmp_path)}")
    path = tmp_path / "s.yaml"
    path.write_text(text + extra)
    return path


def test_an_empty_validation_split_is_an_error_before_anything_is_created(tmp_path, capsys):
    """C01's empty-val variant: no silent NaN objective; the split is refused before anything is
    created (exit 2), naming the split and what to change."""
    path = _folder_study(tmp_path, "data_params: {val_fraction: 0.0}\n")
    with pytest.raises(ValueError, match=r"the val split has no images \(raise data_params.val_fraction"):
        check_inputs(load_study(path))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "the val split has no images" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_fit_refuses_an_empty_validation_split_before_training(tmp_path):
    config = FitConfig(backbone="bnext_micro", dataset="folder", data_root=str(_cifake_like(tmp_path)), resolution=16,
                       epochs=1, data_params={"val_fraction": 0.0}, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="the val split has no images"):
        fit(config)
    assert not (tmp_path / "run").exists()  # nothing created


# --- C02: every attempt counts ----------------------------------------------------------------


@pytest.mark.integration
def test_a_search_whose_trials_fail_stops_at_its_budget(tmp_path, capsys):
    """C02's kind: each trial's values make training fail (here an empty val split); the search
    starts ``trials`` trials, exits 1 and lists the failures."""
    path = _folder_study(tmp_path, "search:\n  trials: 2\n  space:\n"
                                   "    data_params.val_fraction: {type: categorical, choices: [0.0]}\n")
    started = time.monotonic()
    assert main(["run", str(path), "--quiet"]) == 1
    assert time.monotonic() - started < 120
    out = " ".join(capsys.readouterr().out.split())
    assert "0 trials finished (0 not comparable), 2 failed" in out and "split has no images" in out
    trials = _trials(tmp_path)
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert len(_cell_runs(tmp_path)) == 1  # both trials are the same cell: one MLflow run, 2 attempts
    assert _cell_runs(tmp_path)[0].data.tags["bnn.attempts"] == "2"

    assert main(["run", str(path), "--quiet"]) == 1  # re-running tries again, within the budget
    assert len(_trials(tmp_path)) == 4


@pytest.mark.integration
def test_a_cell_whose_worker_keeps_dying_is_started_at_most_max_attempts_times(tmp_path):
    """A cell whose worker dies (OOM-killed, SIGKILL) leaves a trial with no recorded failure; it
    is retried, but not more than ``MAX_ATTEMPTS`` times in one invocation."""
    study = load_study(_study(tmp_path))
    runner = Runner(study)
    cell_id = study.cells[0].cell_id
    for attempt in range(MAX_ATTEMPTS + 1):
        runner.queue.enqueue(only_stale=True)
        waiting = runner.optuna_study.get_trials(states=(TrialState.WAITING,))
        if attempt == MAX_ATTEMPTS:
            assert waiting == []
            break
        assert [t.user_attrs["cell_id"] for t in waiting] == [cell_id]
        trial = runner.queue.claim()
        runner.storage.set_trial_state_values(runner.queue.trial_id(trial), state=TrialState.FAIL)  # died: no failure attr
    assert len(runner.optuna_study.get_trials()) == MAX_ATTEMPTS
    runner.queue.started = time.time() + 1  # a later invocation tries again
    runner.queue.enqueue(only_stale=True)
    assert len(runner.optuna_study.get_trials(states=(TrialState.WAITING,))) == 1


# --- C03: signals, and stores created whole ---------------------------------------------------


@pytest.mark.integration
def test_fit_stops_between_batches_and_resumes(tmp_path):
    config = FitConfig(backbone="bnext_micro", features="rgb", dataset="synthetic", resolution=16, epochs=2,
                       batch_size=8, data_params={"count": 60, "image_size": 20}, output_dir=str(tmp_path / "r"))
    calls = []

    def stop_in_second_epoch() -> bool:
        calls.append(1)
        return len(calls) > 9  # 6 training + 2 val batches of epoch 0, then one of epoch 1

    with pytest.raises(FitInterrupted, match="epoch 1"):
        fit(config, should_stop=stop_in_second_epoch)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"] == 0
    result = fit(config)
    assert result.resumed_from_epoch == 0 and len(result.history) == 2


def test_a_signal_only_sets_the_stop_flag():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler only records it
        for _ in range(100):
            if stop:
                break
            time.sleep(0.01)
        assert stop.signal == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.integration
def test_an_interrupted_creation_leaves_no_file(tmp_path):
    path = tmp_path / "mlflow.db"

    def crash_half_way(url: str) -> None:
        create_mlflow_schema(url)
        raise KeyboardInterrupt  # as if killed after the schema, before the rename

    with pytest.raises(KeyboardInterrupt):
        create_whole(path, crash_half_way)
    assert list(tmp_path.iterdir()) == []
    create_whole(path, create_mlflow_schema)
    assert MlflowClient(f"sqlite:///{path}").get_experiment_by_name("Default") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]


@pytest.mark.parametrize("damage", ["drop table alembic_version", "delete from alembic_version",
                                    "create table _alembic_tmp_params (key text)"])
@pytest.mark.integration
def test_a_half_created_store_of_an_older_version_is_rebuilt(tmp_path, caplog, damage):
    """C03's broken state: the tables exist but the migrations never recorded their version (every
    later open fails, "table ... already exists"). Holding no runs, it is moved aside and rebuilt."""
    path = tmp_path / "mlflow.db"
    create_whole(path, create_mlflow_schema)
    with sqlite3.connect(path) as db:
        db.execute(damage)
    client = open_shared(f"sqlite:///{path}", lambda: MlflowClient(f"sqlite:///{path}").search_experiments(),
                         "opening the MLflow store", attempts=1, initialise=create_mlflow_schema)
    assert [e.name for e in client] == ["Default"]
    assert "half-created" in caplog.text
    assert len(list(tmp_path.glob("mlflow.db.half-created-*"))) == 1


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"'{text}' not logged in time")


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_while_the_stores_are_created_then_the_rerun_works(tmp_path, delay=0.3):
    """Case C03: SIGINT while the first run creates its stores (0.3 s after MLflow's "Creating
    initial MLflow database tables"). The first run ends with 130, prints no traceback, and the
    re-run completes the study. (Other moments: ``test_an_interrupted_creation_leaves_no_file``.)"""
    path = _study(tmp_path, "grid:\n  features: [rgb, rgb+fft]", epochs=2)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-m", "studies", "run", str(path), "--quiet"], cwd=tmp_path,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(log, "Creating initial MLflow", first)
        time.sleep(delay)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    text = log.read_text()
    assert first.returncode == 130, text
    assert "interrupted" in text
    assert "Traceback" not in text and "Exception ignored" not in text
    second = subprocess.run([sys.executable, "-m", "studies", "run", str(path), "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sum(t.state == TrialState.COMPLETE for t in _trials(tmp_path)) == 2
    assert not list(tmp_path.glob(".*.creating"))


# --- C07: a training batch of one image -------------------------------------------------------


@pytest.mark.parametrize(("backbone", "resolution", "batch_size"), [
    ("bnext_tiny", 32, 11),  # the case: the last BNext stage is 1x1 at 32 px
    ("bnext_tiny", 32, 33),
    ("bnext_micro", 16, 11),  # the bn_linear head's BatchNorm1d alone
    ("resnet18", 32, 33),  # a timm baseline: 1x1 before its pooling too
])
@pytest.mark.integration
def test_a_final_training_batch_of_one_image_is_left_out(tmp_path, backbone, resolution, batch_size, monkeypatch):
    """C07's kind: train size = k * batch_size + 1 (34 train images; k = 3 or 1). A batch of one
    would reach train-mode BatchNorm with one value per channel. The training loop leaves it out
    whatever the backbone (the check is on the batch, before the model)."""
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    config = FitConfig(backbone=backbone, features="rgb", dataset="synthetic", resolution=resolution, epochs=1,
                       batch_size=batch_size, data_params={"count": 48, "image_size": 36}, max_eval_batches=1,
                       output_dir=str(tmp_path / "run"))
    assert len(load_splits(config)["train"]) % config.batch_size == 1
    result = fit(config)
    assert len(result.history) == 1 and result.checkpoint.exists()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 2.0])
@pytest.mark.integration
def test_ctrl_c_during_start_up_imports_is_never_swallowed(tmp_path, delay):
    """C03's second face: a Ctrl-C while `studies run` still imports torch/MLflow/Optuna used to be
    raised inside library code and lost (the study ran to the end, exit 0). It is now recorded
    from the first instruction: exit 130, no traceback, nothing created."""
    path = _study(tmp_path)
    run = subprocess.Popen([sys.executable, "-m", "studies", "run", str(path), "--quiet"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 130, output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert not (tmp_path / "runs").exists()
