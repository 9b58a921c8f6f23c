"""Throw-away PostgreSQL cluster and MLflow tracking server for tests of the scaled-out setup.

Context managers (usable anywhere) and pytest fixtures built on them:

- ``postgres_cluster(databases)``: ``initdb`` in a fresh temporary folder (as the ``postgres`` user
  when this process is root: PostgreSQL refuses to run as root), ``pg_ctl start`` on 127.0.0.1 on
  a free port with trust authentication, the given databases created; yields a ``PgCluster``
  whose ``url(db)`` is ``postgresql+psycopg://postgres@127.0.0.1:PORT/db``.
- ``mlflow_tracking_server(backend_uri)``: ``mlflow server`` on that backend, with proxied
  artifacts (``--serve-artifacts``) in a temporary folder, one worker; yields its
  ``http://127.0.0.1:PORT`` once ``/health`` answers.

Both stop and remove everything they started when the block ends, also on failure: the server's
process group is terminated (then killed), the cluster is stopped with ``pg_ctl stop -m
immediate`` (its postmaster killed if that fails) and the folders are removed. When PostgreSQL,
its driver or the server cannot be started, the test fails with the reason when the environment
variable ``CI`` is set (CI installs PostgreSQL; see ``.ci/run``) and is skipped with the reason
otherwise.

Fixtures (module scope: one cluster and one server per test module). Import them into a test
module under their function names; the fixture names are ``postgres`` and ``mlflow_server``::

    from pg_mlflow import mlflow_server_fixture, postgres_fixture  # noqa: F401

    def test_x(postgres, mlflow_server):
        postgres.url("optuna"), postgres.url("mlflow"), mlflow_server  # the server uses "mlflow"
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATABASES = ("optuna", "mlflow")
START_TIMEOUT_SECONDS = 180  # mlflow server imports a lot and migrates the schema; the machine may be loaded


def unavailable(reason: str) -> None:
    """Fails the test under CI (where the tools must exist), skips it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``, ``createdb``) from PATH or the
    Debian layout ``/usr/lib/postgresql/<version>/bin``, newest version first."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _as_postgres_user() -> list[str]:
    """Command prefix that runs a server program as a user PostgreSQL accepts (not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        unavailable("running as root and runuser is missing: cannot start PostgreSQL as the postgres user")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
    return [runuser, "-u", "postgres", "--"]


def _run(command: list[str], what: str, timeout: float = 120) -> None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(f"{what}: {err}")
    if out.returncode != 0:
        unavailable(f"{what} exited with {out.returncode}: {(out.stdout + out.stderr).strip()[-1500:]}")


@dataclass
class PgCluster:
    """A running throw-away cluster: ``url(db)`` for SQLAlchemy, ``create_database(name)``."""

    port: int
    root: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back with the same
        options (as when an administrator restarts it, or it restarts after a crash)."""
        pg_ctl = pg_bin("pg_ctl") or "pg_ctl"
        _run([*_as_postgres_user(), pg_ctl, "restart", "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "120",
              "-l", str(self.root / "server.log")], "pg_ctl restart")

    def create_database(self, name: str) -> str:
        """Creates ``name`` (trust auth as ``postgres``); returns its URL."""
        _run([pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
             f"createdb {name}")
        self.databases.append(name)
        return self.url(name)


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...] = DATABASES) -> Iterator[PgCluster]:
    """Starts a cluster in a new temporary folder, creates ``databases``, stops and removes it all
    at the end (see the module docstring)."""
    if importlib.util.find_spec("psycopg") is None:
        unavailable('the PostgreSQL driver is not installed: pip install -e ".[postgres]"')
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        unavailable("PostgreSQL is not installed (initdb/pg_ctl not found; apt-get install postgresql)")
    prefix = _as_postgres_user()
    # Not under pytest's tmp_path: that folder is private to root and the postgres user must enter it.
    root = Path(tempfile.mkdtemp(prefix="bnn-pg-"))
    data, sockets, logfile = root / "data", root / "sock", root / "server.log"
    started = False
    try:
        sockets.mkdir()
        if prefix:
            for path in (root, sockets):
                shutil.chown(path, "postgres", "postgres")
        _run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
              "--no-locale", "--no-sync"], "initdb")
        port = free_port()
        options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        started = True  # from here on a stop is attempted, even when the start reports a failure
        _run([*prefix, pg_ctl, "start", "-D", str(data), "-l", str(logfile), "-w", "-t", "120", "-o", options],
             f"pg_ctl start (log: {_tail(logfile)})")
        cluster = PgCluster(port=port, root=root)
        for name in databases:
            cluster.create_database(name)
        yield cluster
    finally:
        if started:
            _stop_postgres(prefix, pg_ctl, data)
        shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(prefix: list[str], pg_ctl: str, data: Path) -> None:
    try:
        subprocess.run([*prefix, pg_ctl, "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "60"],
                       capture_output=True, timeout=90)
    except (OSError, subprocess.TimeoutExpired):
        pass
    pid_file = data / "postmaster.pid"
    if pid_file.exists():  # pg_ctl failed: kill the postmaster (its backends follow it)
        with contextlib.suppress(ValueError, OSError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(none)"


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the group of ``process`` (started with ``start_new_session``), SIGKILL if it is
    still alive after ``timeout``; returns once ``process`` has exited."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children that outlived their leader
        os.killpg(process.pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_tracking_server(backend_uri: str, timeout: float = START_TIMEOUT_SECONDS, port: int | None = None,
                           root: Path | None = None) -> Iterator[str]:
    """``mlflow server`` on ``backend_uri`` with proxied artifacts in a temporary folder; yields
    ``http://127.0.0.1:PORT`` once ``/health`` answers; stops its process group and removes the
    folder at the end. With ``port`` and ``root`` (kept), a later server continues an earlier one."""
    keep = root is not None
    root = root if root is not None else Path(tempfile.mkdtemp(prefix="bnn-mlflow-"))
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = None
    try:
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            except OSError as err:
                unavailable(f"mlflow server could not be started: {err}")
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if process.poll() is not None:
                unavailable(f"mlflow server exited with {process.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                unavailable(f"mlflow server did not answer {url}/health within {timeout:.0f} s: {_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        if process is not None:
            stop_process_group(process, timeout=5)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", name="postgres")
def postgres_fixture() -> Iterator[PgCluster]:
    """A throw-away cluster with the databases ``optuna`` and ``mlflow``."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module", name="mlflow_server")
def mlflow_server_fixture(postgres: PgCluster) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of an MLflow server on the ``postgres`` fixture's ``mlflow`` database."""
    with mlflow_tracking_server(postgres.url("mlflow")) as url:
        yield url
