"""``python -m studies ui``: the MLflow UI of a study, opened on its runs table.

MLflow 3's UI opens an experiment in its GenAI view (traces) unless told otherwise, nests the child
runs (one per cell) under the collapsed parent run and shows no metric column. ``studies ui``:

- links to ``/#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=<view>``: the
  runs tab in the "Model training" view; ``<view>`` is a saved view (the UI's "Views" menu) that this
  module stores on the experiment: sorted by the study's objective (which flattens the parent/child
  nesting), with the objective's column and the grid axes' parameters shown;
- tags the experiment ``mlflow.experimentKind=custom_model_development`` when it is missing (the
  fallback the UI uses when the URL names no ``workflowType``);
- starts ``mlflow ui`` in its own session (process group) with one worker on small machines and
  without MLflow's job consumers, and stops the whole group on Ctrl-C or SIGTERM;
- with ``--optuna``, starts optuna-dashboard (its own package, ``optuna-dashboard STORAGE``) on the
  study's Optuna storage in a second process group, linked to the study's page
  (``/dashboard/studies/<id>``), and stops it the same way.

The URL format follows MLflow 3.17's frontend (``mlflow/server/js/build``): ``workflowType`` is read
by the workflow-type context; the saved view is an experiment tag ``mlflow.sharedViewState.<id>``
whose value is ``{"name", "createdAt", "updatedAt", "state"}`` with ``state`` the JSON of the
search facets (``orderByKey``, ``orderByAsc``) and UI state (``selectedColumns``, ``columnWidths``);
a sort key is ``metrics.`name```. The runs table nests children only when it is sorted by
creation time with no filter, so a metric sort lists every cell as its own row.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from studies.cell_queue import open_storage
from studies.db_setup import open_shared
from studies.record import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, create_mlflow_schema

HOST = "127.0.0.1"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_ID = "studies-objective"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


class PortInUseError(ValueError):
    """The port asked for is taken (a ValueError: one line and exit code 2 on the command line)."""


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sort_key(metric: str) -> str:
    """The runs table's sort / column key of a metric (``metrics.`val_accuracy```)."""
    return f"metrics.`{metric}`"


def workers_for(cpu_count: int | None) -> int:
    """Uvicorn workers: one on small machines (<= 4 cores), two otherwise; one user needs no more."""
    return 1 if (cpu_count or 1) <= 4 else 2


def view_state(study) -> dict[str, Any]:
    """The saved view's state: objective sort (best first), objective + grid-axis columns."""
    objective = study.spec.objectives[0]
    key = sort_key(objective.metric)
    axes = list(study.spec.grid) or list(study.spec.search.space if study.spec.search else [])
    return {
        "orderByKey": key,
        "orderByAsc": objective.direction == "minimize",
        "selectedColumns": [key, *(f"params.`{axis}`" for axis in axes)],
        "columnWidths": {key: 170},
    }


def view_tag_value(study, now_ms: int, created_ms: int | None = None) -> str:
    objective = study.spec.objectives[0]
    best = "lowest" if objective.direction == "minimize" else "highest"
    return json.dumps({
        "name": f"study {study.name}: cells by {objective.metric}, {best} first",
        "createdAt": created_ms or now_ms,
        "updatedAt": now_ms,
        "state": json.dumps(view_state(study)),
    })


def runs_url(base: str, experiment_id: str | None, view_id: str | None = None,
             objective: tuple[str, str] | None = None) -> str:
    """The runs tab of an experiment in the model-training view.

    Args:
        base: ``http://host:port`` of the UI.
        experiment_id: ``None``: the experiments list (the study has no record yet).
        view_id: A saved view to open (it carries sort and columns).
        objective: ``(metric, direction)`` sorted by in the URL when there is no saved view.
    """
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments"
    query = {"workflowType": "machine_learning"}
    if view_id:
        query["viewStateShareKey"] = view_id
    elif objective:  # the UI ignores a saved view when the URL has sort/filter keys: one or the other
        query["orderByKey"] = sort_key(objective[0])
        query["orderByAsc"] = str(objective[1] == "minimize").lower()
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


@contextlib.contextmanager
def _quick_http(uri: str) -> Iterator[None]:
    """Fail fast (no minutes of retries) when a tracking server does not answer."""
    if not is_server_uri(uri):
        yield
        return
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prepare_experiment(study) -> tuple[str | None, str | None]:
    """(experiment id, saved view id) of the study, tagging the experiment for the UI.

    The experiment is looked up by the study's name; ``(None, None)`` when the study has no record
    yet. The view id is ``None`` when the view could not be stored (the URL then sorts by itself).
    """
    from mlflow import MlflowClient

    with _quick_http(study.tracking_uri):
        client = MlflowClient(study.tracking_uri)
        experiment = client.get_experiment_by_name(study.name)
        if experiment is None:
            return None, None
        experiment_id = experiment.experiment_id
        tags = experiment.tags or {}
        try:
            if TAG_EXPERIMENT_KIND not in tags:
                client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            key = VIEW_TAG_PREFIX + VIEW_ID
            old = _view_envelope(tags.get(key))
            if old is None or json.loads(old["state"]) != view_state(study):
                now = int(time.time() * 1000)
                created = old["createdAt"] if old else None
                client.set_experiment_tag(experiment_id, key, view_tag_value(study, now, created))
        except Exception as err:  # a read-only server: the plain sorted URL still works
            print(f"note: could not tag the experiment ({type(err).__name__}: {err}); "
                  "the link sorts by the objective without the saved view", file=sys.stderr)
            return experiment_id, None
    return experiment_id, VIEW_ID


def _view_envelope(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        envelope = json.loads(value)
        json.loads(envelope["state"])
        return envelope
    except (ValueError, KeyError, TypeError):
        return None


def create_store(tracking_uri: str) -> None:
    """Creates a missing MLflow store whole (the server would create it half-way if interrupted)."""
    open_shared(tracking_uri, lambda: None, "creating the MLflow store", initialise=create_mlflow_schema)


def check_port_free(port: int, host: str = HOST, option: str = "--port") -> None:
    """Raises PortInUseError (naming ``option``) when something listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no owner
        try:
            sock.bind((host, port))
        except OSError as err:
            raise PortInUseError(f"port {port} on {host} is in use ({err.strerror}); "
                                 f"choose another with {option}") from None


def server_command(tracking_uri: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", HOST, "--port", str(port), "--workers", str(workers)]


def server_env() -> dict[str, str]:
    # MLflow's job execution (a runner and one Huey consumer process per job kind) serves GenAI
    # features (judges, scorers, trace rollups) that a training record does not use.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float = START_TIMEOUT_S) -> bool:
    """True once ``url`` answers; False when the server exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Orphans re-parented to a PID 1 that does not reap them stay as zombies: they do not count.
    return _group_members(pgid) != [] if os.path.isdir("/proc/self") else True


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc; [] where there is no /proc."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _descendants(pid: int) -> list[Any]:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, wait up to ``timeout``, then SIGKILL what is left.

    Descendants that left the group (a ``start_new_session`` child) are found with psutil when it
    is installed and get the same treatment.
    """
    pgid = proc.pid  # start_new_session: the server leads its own group
    strays = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for child in strays:
            with contextlib.suppress(Exception):
                child.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
            if proc.poll() is not None and not _group_alive(pgid) and not any(_alive(c) for c in strays):
                return
    proc.wait()


def _alive(child) -> bool:
    try:
        import psutil

        return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


class _Stop(BaseException):  # not an Exception: no `except Exception` on the way swallows it
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _Stop(signum)


def _has_gui() -> bool:
    # webbrowser falls back to console browsers (w3m, lynx) that would take over the terminal.
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def dashboard_command(storage_url: str, port: int) -> list[str]:
    """optuna-dashboard on ``storage_url`` at 127.0.0.1:``port`` (the console script beside this Python).

    Raises:
        DashboardMissingError: optuna-dashboard is not installed.
    """
    script = Path(sys.executable).with_name("optuna-dashboard")
    found = str(script) if script.exists() else shutil.which("optuna-dashboard")
    if found is None:
        raise DashboardMissingError("--optuna needs optuna-dashboard: pip install optuna-dashboard "
                                    '(it is in the dev extras: pip install -e ".[dev]")')
    return [found, storage_url, "--host", HOST, "--port", str(port), "--server", "wsgiref", "--quiet"]


class DashboardMissingError(ValueError):
    """``--optuna`` without optuna-dashboard installed (one line and exit code 2)."""


def dashboard_url(base: str, study_id: int | None) -> str:
    """optuna-dashboard's page of one Optuna study (``/dashboard/studies/<id>``), or its study list."""
    return f"{base}/dashboard/studies/{study_id}" if study_id is not None else f"{base}/dashboard"


def optuna_study_id(study) -> int | None:
    """The Optuna storage's id of the study (``None``: no trial stored yet); creates a missing
    SQLite storage whole, as a worker would, so the dashboard never creates one half-way."""
    storage = open_storage(study.storage, create=True)
    try:
        return storage.get_study_id_from_name(study.name)
    except KeyError:
        return None
    finally:
        storage.engine.dispose()


@dataclass
class _Server:
    """One server process this command starts: its command line, the URL that answers once it is
    up, and what to print."""

    name: str
    command: list[str]
    base: str
    health: str
    link: str
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None


def serve(study, port: int, open_browser: bool = True, say=None, optuna_port: int | None = None) -> int:
    """Starts ``mlflow ui`` on the study's store (and, with ``optuna_port``, optuna-dashboard on its
    Optuna storage) and blocks until one exits or the command is stopped.

    Returns:
        0 after a stop by SIGINT (Ctrl-C) or SIGTERM, the server's status when it ended by itself.

    Raises:
        PortInUseError: a port is taken. DashboardMissingError: ``optuna_port`` without optuna-dashboard.
    """
    import webbrowser

    say = say or (lambda message: print(message, flush=True))
    base = f"http://{HOST}:{port}"
    servers: list[_Server] = []
    if optuna_port is not None:
        if optuna_port == port:
            raise PortInUseError(f"--optuna-port {optuna_port} is the MLflow UI's --port; choose another")
        command = dashboard_command(study.storage, optuna_port)
        check_port_free(optuna_port, option="--optuna-port")
        optuna_base = f"http://{HOST}:{optuna_port}"
        servers.append(_Server("optuna-dashboard", command, optuna_base, f"{optuna_base}/api/meta",
                               dashboard_url(optuna_base, optuna_study_id(study))))
    if is_server_uri(study.tracking_uri):
        experiment_id, view_id = _lookup_on_server(study)
        say(f"study '{study.name}' is tracked on the server {study.tracking_uri}: no MLflow UI to start")
        say(f"open {runs_url(study.tracking_uri, experiment_id, view_id, _objective(study))}")
        if not servers:
            return 0
    else:
        check_port_free(port)
        create_store(study.tracking_uri)
        experiment_id, view_id = prepare_experiment(study)
        workers = workers_for(os.cpu_count())
        servers.insert(0, _Server(f"MLflow UI ({workers} worker{'s' * (workers > 1)})",
                                  server_command(study.tracking_uri, port, workers), base, f"{base}/health",
                                  runs_url(base, experiment_id, view_id, _objective(study)), server_env()))
        if experiment_id is None:
            say(f"study '{study.name}' has no MLflow record yet (python -m studies run {study.path.name})")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for server in servers:
            server.proc = subprocess.Popen(server.command, env=server.env, start_new_session=True)
            say(f"starting the {server.name} for study '{study.name}' on {server.base}")
        for server in servers:
            if not wait_until_up(server.proc, server.health):
                code = server.proc.poll()
                say(f"the {server.name} did not start (exit status {code})" if code is not None
                    else f"the {server.name} did not answer within {START_TIMEOUT_S:.0f} s")
                return code or 1
        for server in servers:
            say(f"open {server.link}")
        say("Ctrl-C stops " + ("it" if len(servers) == 1 else "them"))
        if open_browser and _has_gui():
            with contextlib.suppress(Exception):
                webbrowser.open(servers[0].link)
        return _wait_first([server.proc for server in servers])
    except _Stop:
        return 0
    finally:
        # A second Ctrl-C while stopping must not leave a group behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for server in servers:
            if server.proc is not None:
                stop_group(server.proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_first(procs: list[subprocess.Popen], poll_s: float = 0.5) -> int:
    """The exit status of the first of ``procs`` to end (the others are stopped by the caller)."""
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return code
        time.sleep(poll_s)


def _objective(study) -> tuple[str, str]:
    return study.spec.objectives[0].metric, study.spec.objectives[0].direction


def _lookup_on_server(study) -> tuple[str | None, str | None]:
    try:
        return prepare_experiment(study)
    except Exception as err:
        print(f"note: {study.tracking_uri} did not answer ({type(err).__name__}); "
              "linking the experiments list", file=sys.stderr)
        return None, None
