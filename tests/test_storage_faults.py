"""Storage faults (case C15 and its kind): a write that fails because the storage did (a full disk,
a file-size limit, a full SQLite store) gives one line naming the path and the cause, leaves no
temporary file, marks what can still be marked, and re-running the same command resumes.

The tmpfs tests mount a real, too-small file system (root only; skipped elsewhere, failed under CI
where the runner is root)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bnn.errors import EXIT_PARTIAL, StorageError, storage_fault, user_error
from studies.record import TAG_CELL_ID

ROOT = Path(__file__).resolve().parents[1]
STUDY = """\
name: diskfull
dataset: synthetic
data_params: {count: 160, image_size: 36}
defaults: {backbone: bnext_micro, resolution: 32, epochs: EPOCHS, batch_size: 16}
seeds: [0, 1]
latency: {enabled: false}
"""


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "BNN_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


@pytest.mark.integration
def test_a_checkpoint_write_over_the_file_size_limit_is_one_storage_error_and_leaves_no_temp_file(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG), as a full disk refuses it (ENOSPC)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from pathlib import Path
        from bnn.checkpoint import save_atomic
        from bnn.errors import StorageError
        path = Path({str(tmp_path / "last.pt")!r})
        save_atomic({{"epoch": 0, "model": {{"w": torch.zeros(4)}}}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            save_atomic({{"epoch": 1, "model": {{"w": torch.zeros(100_000)}}}}, path)
        except StorageError as err:
            print(err.strerror)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path))
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"cannot write '{tmp_path / 'last.pt'}': file too large for this file system or limit"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["last.pt"]  # no *.tmp

    import torch

    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 0  # the previous one is intact


def test_storage_faults_are_recognised_through_the_libraries_that_wrap_them():
    import sqlite3

    import sqlalchemy.exc

    full = sqlite3.OperationalError("database or disk is full")
    wrapped = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, full)
    try:
        try:
            raise wrapped
        except Exception as err:
            raise RuntimeError("An exception is raised during the commit.") from err  # Optuna's wording
    except RuntimeError as outer:
        assert storage_fault(outer) == "the SQLite store cannot be written: database or disk is full"
        message, code = user_error(outer)
        assert code == EXIT_PARTIAL and "re-run the same command" in message and "\n" not in message
    assert storage_fault(OSError(28, "No space left on device", "/x/y.png")) == "cannot write '/x/y.png': no space left on device"
    assert storage_fault(StorageError(28, "cannot write 'a': no space left on device")) == "cannot write 'a': no space left on device"
    assert storage_fault(ValueError("bad value")) is None
    assert storage_fault(FileNotFoundError(2, "No such file or directory", "x")) is None


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        _mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _run(folder: Path, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studies", "run", "s.yaml", "--quiet"], cwd=folder,
                          capture_output=True, text=True, timeout=timeout, env=_env(tmp_path))


@pytest.mark.slow
@pytest.mark.integration
def test_runs_dir_on_a_full_disk_fails_the_cell_in_one_line_and_a_rerun_resumes(tmp_path, tmpfs):
    small = tmpfs("small", "3M")
    (tmp_path / "s.yaml").write_text(STUDY.replace("EPOCHS", "4") + f"runs_dir: {small}\n")
    first = _run(tmp_path, tmp_path)
    assert first.returncode == EXIT_PARTIAL, first.stderr[-2000:]
    out = first.stdout + first.stderr
    assert "no space left on device" in out and "cannot write '" in out and "Traceback" not in out
    assert not list(small.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=40M", str(small)], check=True)
    second = _run(tmp_path, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stdout + second.stderr
    assert not list(small.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.integration
def test_a_full_sqlite_store_ends_in_one_line_and_a_rerun_finishes_the_cells(tmp_path, tmpfs):
    folder = tmpfs("study", "60M")
    (folder / "s.yaml").write_text(STUDY.replace("EPOCHS", "8") + f"runs_dir: {tmp_path / 'runs'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "studies", "run", "s.yaml", "--quiet"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").rglob("last.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    for chunk in (2**20, 4096, 512):  # take every free byte: the next store write has no room
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
    os.close(fd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_PARTIAL, (out[-2000:], err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "database or disk is full" in last and "re-run the same command" in last
    assert "Traceback" not in err, err[-6000:]
    filler.unlink()
    second = _run(folder, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("diskfull")
    cells = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(TAG_CELL_ID)]
    assert len({r.data.tags[TAG_CELL_ID] for r in cells if r.info.status == "FINISHED"}) == 2
