"""``python -m studies submit FILE --slurm``: the array job script, its errors, and real runs on a
throw-away one-node Slurm cluster.

The default tier checks the script text (``--dry-run``: array range, time limit and signal lead,
``--set`` passed through, paths with spaces quoted), the exit-2 errors and a submission through a
stand-in ``sbatch``. The ``e2e`` tests start MUNGE, slurmctld and slurmd (``slurm_cluster``), a
PostgreSQL cluster and an MLflow server on it (``pg_mlflow``; skipped when they cannot start,
failed under ``CI``) and submit tiny studies (BNext-micro, synthetic data) from a folder whose
path holds a space:

a. three array tasks run a six-cell study, each cell exactly once, the job visible in ``squeue``;
b. ``scancel`` of one array task mid-cell: the worker gets SIGTERM and records its cell KILLED
   (Optuna trial failed, ``interrupted by SIGTERM``) within ``KillWait``; submitting the same
   command again finishes it, and every cell ends COMPLETE once;
c. ``--time 2`` with a cell longer than two minutes: the worker gets ``--signal=B:TERM@12`` before
   the limit (Slurm checks limits every 30 s, so 12-42 s before it; two minutes leave a loaded
   machine's worker start-up, 12-25 s, far inside the first job), records the cell KILLED and exits by itself (the job FAILED, exit 130, not TIMEOUT);
   submitting the same command again resumes the cell from its last epoch until it finishes.

What each job did (job ids, which array task ran which cell) is appended to ``SLURM_TEST_LOG``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from pg_mlflow import mlflow_server_fixture, postgres_fixture  # noqa: F401
from slurm_cluster import slurm_fixture  # noqa: F401

from bnn.errors import EXIT_INVALID
from studies.__main__ import main as studies_main
from studies.slurm import SlurmError, format_time, parse_time, signal_lead

SLURM_TEST_LOG = Path(os.environ.get("BNN_SLURM_TEST_LOG", "/tmp/slurm_test_log.txt"))

STUDY = """\
name: {name}
dataset: synthetic
data_params: {{count: {count}, image_size: {size}, difficulty: 0.0}}
tracking_uri: {tracking}
storage: {storage}
defaults:
  backbone: bnext_micro
  resolution: {resolution}
  epochs: {epochs}
  batch_size: 16
  lr: 1.0e-3
grid:
  features: {features}
seeds: {seeds}
log_checkpoint: false
"""
START = re.compile(r"cell (\w+) start: (.*)")
SIGTERM_AT = re.compile(r"(\d\d:\d\d:\d\d) WARNING \S+: SIGTERM received")
END = re.compile(r"cell (\w+) (FINISHED|KILLED|FAILED|TAKEN OVER|NOT COMPARABLE)")


def _write_study(folder: Path, name: str, tracking: str = "sqlite:///mlflow.db", storage: str = "null", count: int = 60,
                 size: int = 20, resolution: int = 16, epochs: int = 1, features: str = "[rgb]",
                 seeds: str = "[0]") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, tracking=tracking, storage=storage, count=count, size=size,
                                 resolution=resolution, epochs=epochs, features=features, seeds=seeds))
    return path


def _exec_argv(script: str) -> list[str]:
    """The worker's command line: the script's ``exec`` line with its continuations, as bash splits it."""
    joined = script.replace("\\\n", " ")
    line = next(li for li in joined.splitlines() if li.startswith("exec "))
    return shlex.split(line)[1:]


def _directives(script: str) -> dict[str, str]:
    return dict(li.removeprefix("#SBATCH --").split("=", 1) for li in script.splitlines() if li.startswith("#SBATCH"))


# --- the script and the errors (default tier) ---------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("1", 60), ("90", 5400), ("5:30", 330), ("02:00:00", 7200),
                                           ("1-0", 86400), ("1-2:30", 95400), ("2-00:00:10", 172810)])
def test_time_limits_in_slurm_formats(text, seconds):
    assert parse_time(text) == seconds
    assert parse_time(format_time(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "0:00", "1:2:3:4", "-5", "1.5", "1-", "24h"])
def test_bad_time_limits_are_refused(text):
    with pytest.raises(SlurmError, match="--time"):
        parse_time(text)


def test_the_signal_comes_a_tenth_of_the_limit_before_it_between_10_s_and_5_min():
    assert [signal_lead(s) for s in (60, 300, 1200, 3000, 86400)] == [10, 30, 120, 300, 300]
    assert signal_lead(None) == 300  # the partition's default limit


def test_dry_run_prints_the_array_script_and_writes_nothing(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "my studies"
    path = _write_study(folder, "tiny", tracking="http://127.0.0.1:5999", storage="postgresql://bnn@db/optuna")
    monkeypatch.chdir(folder)
    code = studies_main(["submit", path.name, "--slurm", "--workers", "3", "--time", "90", "--gres", "gpu:1",
                         "--partition", "gpu", "--cpus-per-task", "4", "--set", "epochs=2",
                         "--set", "runs_dir=out dir/runs", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    sbatch = _directives(out)
    assert sbatch["array"] == "0-2" and sbatch["job-name"] == "tiny"
    assert sbatch["time"] == "01:30:00" and sbatch["signal"] == "B:TERM@300"
    assert sbatch["gres"] == "gpu:1" and sbatch["partition"] == "gpu" and sbatch["cpus-per-task"] == "4"
    assert sbatch["chdir"] == f'"{folder}"'  # quoted: sbatch's parser splits at spaces otherwise
    assert sbatch["output"] == f'"{folder}/out dir/runs/tiny/slurm/%x-%A_%a.out"'
    assert _exec_argv(out) == [sys.executable, "-m", "studies", "run", str(path), "--quiet",
                               "--set", "epochs=2", "--set", "runs_dir=out dir/runs"]
    assert out.startswith("#!/bin/bash\n") and "\nexec " in out
    if sys.prefix != sys.base_prefix:
        assert f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}" in out
    assert "nothing written or submitted" in err
    assert not (folder / "out dir").exists()


def test_one_minute_gets_a_10_s_signal_a_bundled_name_its_absolute_path_and_max_cells_passes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert studies_main(["submit", "quickstart.yaml", "--slurm", "--time", "1", "--max-cells", "50", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _directives(out)["time"] == "00:01:00" and _directives(out)["signal"] == "B:TERM@10"
    assert Path(_exec_argv(out)[4]).is_absolute() and _directives(out)["chdir"] == str(tmp_path)
    assert _exec_argv(out)[-2:] == ["--max-cells", "50"]


@pytest.mark.parametrize("args, message", [
    (["--workers", "3"], "keeps its stores in local files (sqlite:///mlflow.db, sqlite:///optuna.db): 3 array tasks"),
    (["--workers", "2", "--nodelist", "a,b"], "keeps its stores in local files"),
    (["--time", "1:xx"], "--time '1:xx': not a Slurm time limit"),
    (["--time", "0"], "must be more than zero"),
    (["--gres", "gpu 1"], "--gres 'gpu 1': not a Slurm name"),
], ids=["sqlite-several-nodes", "sqlite-node-list", "bad-time", "zero-time", "bad-gres"])
def test_submit_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    path = _write_study(tmp_path, "tiny")
    monkeypatch.chdir(tmp_path)
    assert studies_main(["submit", str(path), "--slurm", *args, "--dry-run"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_sqlite_stores_with_several_workers_on_one_node_are_allowed(tmp_path, capsys, monkeypatch):
    path = _write_study(tmp_path, "tiny")
    monkeypatch.chdir(tmp_path)
    assert studies_main(["submit", str(path), "--slurm", "--workers", "2", "--nodelist", "node1", "--dry-run"]) == 0
    assert _directives(capsys.readouterr().out)["nodelist"] == "node1"


def test_submit_needs_slurm_and_sbatch(tmp_path, capsys, monkeypatch):
    path = _write_study(tmp_path, "tiny")
    monkeypatch.chdir(tmp_path)
    assert studies_main(["submit", str(path)]) == EXIT_INVALID
    assert "submit needs a scheduler: --slurm" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert studies_main(["submit", str(path), "--slurm"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "sbatch not found on PATH: install Slurm" in err and "--dry-run" in err and err.count("\n") == 1


def _fake_sbatch(folder: Path, body: str) -> None:
    folder.mkdir()
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\n{body}\n")
    sbatch.chmod(0o755)


def test_submit_writes_the_script_and_prints_the_job_id(tmp_path, capsys, monkeypatch):
    path = _write_study(tmp_path, "tiny")
    monkeypatch.chdir(tmp_path)
    _fake_sbatch(tmp_path / "bin", 'echo "$@" > "$(dirname "$0")/args"; echo "4242;cluster"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert studies_main(["submit", str(path), "--slurm"]) == 0
    out = capsys.readouterr().out
    script = tmp_path / "runs" / "tiny" / "slurm" / "tiny.sbatch"
    assert "submitted job 4242" in out and str(script) in out and "tiny-4242_<task>.out" in out
    assert (tmp_path / "bin" / "args").read_text().split() == ["--parsable", str(script)]
    assert _directives(script.read_text())["array"] == "0-0" and os.access(script, os.X_OK)


def test_an_sbatch_refusal_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    path = _write_study(tmp_path, "tiny")
    monkeypatch.chdir(tmp_path)
    _fake_sbatch(tmp_path / "bin", 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert studies_main(["submit", str(path), "--slurm", "--partition", "gpu"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "sbatch refused" in err and "invalid partition specified: gpu" in err and err.count("\n") == 1


# --- on a real cluster (e2e) -------------------------------------------------------------------

def _log(text: str) -> None:
    with open(SLURM_TEST_LOG, "a") as out:
        out.write(text.rstrip("\n") + "\n")


def _submit(slurm, path: Path, *args: str) -> str:
    """``python -m studies submit PATH --slurm ARGS`` from the study's folder; the job id."""
    env = {**slurm.env, "BNN_HEARTBEAT_SECONDS": "1", "OMP_NUM_THREADS": "1",
           "BNN_CACHE_DIR": str(path.parent / "cache")}
    out = subprocess.run([sys.executable, "-m", "studies", "submit", str(path), "--slurm", *args], cwd=path.parent,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = re.search(r"submitted job (\d+)", out.stdout).group(1)
    _log(f"$ python -m studies submit {path.name} --slurm {' '.join(args)}\n  -> job {job_id}")
    return job_id


def _task_log(path: Path, job_id: str, task: int) -> Path:
    return path.parent / "runs" / path.stem / "slurm" / f"{path.stem}-{job_id}_{task}.out"


def _record_tasks(slurm, path: Path, job_id: str, tasks: int) -> tuple[dict[str, str], dict[int, list[str]]]:
    """Each array task's state and which cells it started and ended (from its log), appended to the
    test log; returns (task -> job state, task -> cells started)."""
    records = slurm.job_records(job_id)
    states = {task: fields.get("JobState", "?") for task, fields in records.items()}
    ran = {}
    for task in range(tasks):
        log = _task_log(path, job_id, task)
        text = log.read_text(errors="replace") if log.exists() else ""
        ends = {cell: status for cell, status in END.findall(text)}
        ran[task] = [cell for cell, _ in START.findall(text)]
        cells = ", ".join(f"{cell} ({axes}) {ends.get(cell, 'no end logged')}" for cell, axes in START.findall(text))
        fields = records.get(str(task), {})
        when = f"{fields.get('StartTime', '?')[-8:]}-{fields.get('EndTime', '?')[-8:]}, exit {fields.get('ExitCode', '?')}"
        term = SIGTERM_AT.search(text)
        signal = f" [SIGTERM received {term.group(1)}]" if term else ""
        _log(f"  job {job_id}_{task} ({states.get(str(task), '?')}, {when}){signal}: {cells or 'no cell'}")
    return states, ran


def _trials(storage_url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(storage_url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def _check_each_cell_once(storage_url: str, client: MlflowClient, study: str, cells: int) -> dict[str, object]:
    """One COMPLETE trial per cell, none RUNNING or WAITING; one FINISHED child run per cell."""
    trials = _trials(storage_url, study)
    complete = [t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == cells, [(t.number, t.state, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = {r.data.tags["cell_id"]: r for r in runs if r.data.tags.get("bnn.role") == "cell"}
    assert sorted(children) == sorted(complete) and len(children) == sum(r.data.tags.get("bnn.role") == "cell"
                                                                           for r in runs)
    assert [r.info.status for r in runs if r.info.status != "FINISHED"] == []
    return children


def _wait_mid_cell(log: Path, storage_url: str, client: MlflowClient, study: str,
                   timeout: float = 300) -> optuna.trial.FrozenTrial:
    """The RUNNING trial of the cell the task writing ``log`` works on, once one epoch is logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = START.findall(log.read_text(errors="replace")) if log.exists() else []
        if started:
            running = [t for t in _trials(storage_url, study) if t.state == TrialState.RUNNING
                       and t.user_attrs.get("cell_id") == started[-1][0] and "mlflow_run_id" in t.user_attrs]
            if running and client.get_metric_history(running[0].user_attrs["mlflow_run_id"], "epoch_val_accuracy"):
                return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no cell running in {log} after {timeout:.0f} s")


@pytest.fixture
def study_dir(tmp_path) -> Path:
    """A folder whose path holds a space (the script's paths must be quoted)."""
    return tmp_path / "study dir"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_three_array_tasks_run_each_cell_once(study_dir, slurm, postgres, mlflow_server):
    started = time.monotonic()
    name, cells = "slurm_a", 6
    storage_url = postgres.url("optuna")
    path = _write_study(study_dir, name, tracking=mlflow_server, storage=storage_url,
                        features="[rgb, rgb+fft, rgb+lbp]", seeds="[0, 1]")
    _log(f"\n=== (a) {cells} cells, --workers 3 ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    job = _submit(slurm, path, "--workers", "3")
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        tasks = slurm.tasks(job)
        if not tasks:
            break
        seen.update(tasks)
        time.sleep(1)
    assert seen, "squeue never showed the job"
    assert not slurm.tasks(job), f"job {job} still queued after 600 s"
    _log(f"  squeue showed: {seen}")
    states, ran = _record_tasks(slurm, path, job, 3)
    assert set(states.values()) == {"COMPLETED"}, states
    done = [cell for task in ran.values() for cell in task]
    assert len(done) == len(set(done)) == cells, ran  # each cell started once, by one task
    _check_each_cell_once(storage_url, MlflowClient(mlflow_server), name, cells)
    _log(f"  -> {cells} cells COMPLETE once each, {len(seen)} squeue entries seen, {time.monotonic() - started:.0f} s")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_scancel_of_a_task_mid_cell_records_it_killed_and_a_resubmission_finishes_it(
        study_dir, slurm, postgres, mlflow_server):
    started = time.monotonic()
    name, cells = "slurm_b", 4
    storage_url = postgres.url("optuna")
    client = MlflowClient(mlflow_server)
    path = _write_study(study_dir, name, tracking=mlflow_server, storage=storage_url, count=120, epochs=6,
                        features="[rgb, rgb+fft]", seeds="[0, 1]")
    _log(f"\n=== (b) {cells} cells of 6 epochs, --workers 2, scancel of task 0 mid-cell "
         f"({time.strftime('%Y-%m-%d %H:%M:%S')})")
    job = _submit(slurm, path, "--workers", "2")
    trial = _wait_mid_cell(_task_log(path, job, 0), storage_url, client, name)
    cell_id, run_id = trial.user_attrs["cell_id"], trial.user_attrs["mlflow_run_id"]
    slurm.command("scancel", f"{job}_0")
    _log(f"  $ scancel {job}_0   (mid-cell: cell {cell_id}, trial {trial.number}, one epoch logged)")
    slurm.wait_gone(job, timeout=60, task="0")
    killed = next(t for t in _trials(storage_url, name) if t.number == trial.number)
    # Stopped cleanly within KillWait: the worker itself failed the trial and ended the run KILLED.
    assert killed.state == TrialState.FAIL and killed.user_attrs.get("failure") == "interrupted by SIGTERM", killed
    assert client.get_run(run_id).info.status == "KILLED"
    _log(f"  -> cell {cell_id}: Optuna trial {killed.number} {killed.state.name} "
         f"({killed.user_attrs['failure']}), MLflow run {run_id[:8]} KILLED")
    slurm.wait_gone(job, timeout=600)
    states, _ = _record_tasks(slurm, path, job, 2)
    assert states.get("0") == "CANCELLED", states
    assert cell_id not in [t.user_attrs["cell_id"] for t in _trials(storage_url, name)
                           if t.state == TrialState.COMPLETE]

    again = _submit(slurm, path, "--workers", "2")
    slurm.wait_gone(again, timeout=600)
    _, ran = _record_tasks(slurm, path, again, 2)
    assert [c for task in ran.values() for c in task] == [cell_id], ran  # only the killed cell was left
    children = _check_each_cell_once(storage_url, client, name, cells)
    assert children[cell_id].info.run_id == run_id and children[cell_id].data.tags["bnn.attempts"] == "2"
    history = client.get_metric_history(run_id, "epoch_val_accuracy")
    assert sorted(m.step for m in history) == list(range(6))  # each epoch once over both attempts
    _log(f"  -> job {again} finished cell {cell_id} (same MLflow run, bnn.attempts 2); {cells} cells COMPLETE once "
         f"each; {time.monotonic() - started:.0f} s")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_time_limit_signals_the_worker_first_and_resubmissions_finish_the_cell(
        study_dir, slurm, postgres, mlflow_server):
    started = time.monotonic()
    name, epochs = "slurm_c", 120
    storage_url = postgres.url("optuna")
    client = MlflowClient(mlflow_server)
    path = _write_study(study_dir, name, tracking=mlflow_server, storage=storage_url, count=200, size=36,
                        resolution=32, epochs=epochs)
    _log(f"\n=== (c) one cell of {epochs} epochs, --time 2 ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    job = _submit(slurm, path, "--time", "2")
    slurm.wait_gone(job, timeout=240)
    states, _ = _record_tasks(slurm, path, job, 1)
    text = _task_log(path, job, 0).read_text(errors="replace")
    assert "SIGTERM received" in text, text
    assert states == {"0": "FAILED"}, states  # exited by itself (130) before the limit: not TIMEOUT
    trials = _trials(storage_url, name)
    assert [(t.state, t.user_attrs.get("failure")) for t in trials] == [(TrialState.FAIL, "interrupted by SIGTERM")]
    run_id = trials[0].user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    logged = len(client.get_metric_history(run_id, "epoch_val_accuracy"))
    assert 0 < logged < epochs
    _log(f"  -> cell {trials[0].user_attrs['cell_id']}: trial FAIL (interrupted by SIGTERM), MLflow run "
         f"{run_id[:8]} KILLED after {logged} epochs")
    for _ in range(6):  # the same command again until the cell is done, each job resuming from its last epoch
        again = _submit(slurm, path, "--time", "2")
        slurm.wait_gone(again, timeout=240)
        _record_tasks(slurm, path, again, 1)
        if any(t.state == TrialState.COMPLETE for t in _trials(storage_url, name)):
            break
    children = _check_each_cell_once(storage_url, client, name, 1)
    (run,) = children.values()
    assert run.info.run_id == run_id
    history = client.get_metric_history(run_id, "epoch_val_accuracy")
    assert sorted(m.step for m in history) == list(range(epochs))
    _log(f"  -> job {again} finished it (bnn.attempts {run.data.tags['bnn.attempts']}, every epoch once); "
         f"{time.monotonic() - started:.0f} s")
