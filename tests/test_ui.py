"""``python -m studies ui``: the link it prints, the server it starts and stops, and (e2e) what a
browser sees on that link.

The e2e test drives the system's headless Chromium through its chromedriver (Debian: ``apt-get
install chromium chromium-driver``); nothing is downloaded (Selenium Manager is never used). Without
them it fails when ``CI`` is set and is skipped otherwise. Its screenshot goes to
``tests/artifacts/`` (git-ignored) and, when set, to ``$BNN_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from studies import load_study
from studies.__main__ import main
from studies.ui import (
    PortInUseError,
    check_port_free,
    dashboard_url,
    runs_url,
    sort_key,
    view_state,
    workers_for,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
START_TIMEOUT_S = 300  # a cold `mlflow ui` on a loaded 2-core machine

TINY = """\
name: tiny_ui
dataset: synthetic
data_params: {{count: 60, image_size: 18, difficulty: 0.0}}
tracking_uri: {tracking_uri}
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: 1
  batch_size: 32
  lr: 1.0e-2
grid:
  features: [rgb, rgb+fft, rgb+lbp]
objective: {{metric: val_accuracy, direction: maximize}}
log_checkpoint: false
"""


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the MLflow server and the studies it shows


def _tiny(tmp_path, tracking_uri: str | None = None) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "tiny_ui.yaml"
    path.write_text(TINY.format(root=tmp_path, tracking_uri=tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the link ----------------------------------------------------------------------------------


def test_runs_url_opens_the_model_training_runs_tab():
    assert runs_url("http://127.0.0.1:5000", "3", "studies-objective") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=studies-objective")
    # Without a saved view the URL sorts by itself (the UI ignores a saved view next to sort keys).
    assert runs_url("http://h:1/", "3", None, ("val_loss", "minimize")) == (
        "http://h:1/#/experiments/3/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val_loss%60&orderByAsc=true")
    assert runs_url("http://h:1", None) == "http://h:1/#/experiments"


def test_saved_view_sorts_by_the_objective_and_shows_it(tmp_path):
    study = load_study(_tiny(tmp_path))
    state = view_state(study)
    assert state["orderByKey"] == sort_key("val_accuracy") == "metrics.`val_accuracy`"
    assert state["orderByAsc"] is False  # maximize: best first
    assert state["selectedColumns"] == ["metrics.`val_accuracy`", "params.`features`"]


def test_one_worker_on_small_machines():
    assert workers_for(1) == workers_for(4) == workers_for(None) == 1
    assert workers_for(16) == 2


# --- errors and a server study ------------------------------------------------------------------


def test_a_taken_port_is_one_line_and_exit_2(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError):
            check_port_free(port)
        assert main(["ui", str(_tiny(tmp_path)), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: port {port} on 127.0.0.1 is in use"), err


def test_dashboard_links_the_study_page():
    assert dashboard_url("http://127.0.0.1:5001", 3) == "http://127.0.0.1:5001/dashboard/studies/3"
    assert dashboard_url("http://127.0.0.1:5001", None) == "http://127.0.0.1:5001/dashboard"


def test_a_taken_optuna_port_is_one_line_and_exit_2(tmp_path, capsys):
    path = _tiny(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert main(["ui", str(path), "--optuna", "--optuna-port", str(taken), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert f"port {taken} on 127.0.0.1 is in use" in err and "--optuna-port" in err
    assert "Traceback" not in err
    assert main(["ui", str(path), "--port", "5123", "--optuna", "--optuna-port", "5123", "--no-browser"]) == 2
    assert "is the MLflow UI's --port" in capsys.readouterr().err


def test_optuna_without_the_dashboard_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no optuna-dashboard beside it
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["ui", str(_tiny(tmp_path)), "--optuna", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "pip install optuna-dashboard" in err and "Traceback" not in err
    assert not (tmp_path / "optuna.db").exists()  # refused before anything was created


def test_a_study_on_a_tracking_server_gets_its_link_and_starts_nothing(tmp_path, capsys):
    port = _free_port()  # nothing listens: the link falls back to the server's experiments list
    path = _tiny(tmp_path, tracking_uri=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert main(["ui", str(path), "--no-browser"]) == 0
    assert time.monotonic() - started < 60
    out = capsys.readouterr().out
    assert f"open http://127.0.0.1:{port}/#/experiments\n" in out
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # no server was started on it


# --- the server's processes -----------------------------------------------------------------------


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(pid: int) -> list[int]:
    """Descendants of ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        children, found, todo = _proc_children(), [], [pid]
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        return found


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def _group(pgid: int) -> list[int]:
    """Live processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


class UI:
    """``python -m studies ui FILE --port PORT`` as a subprocess, its output collected."""

    def __init__(self, path: Path, port: int, *extra: str):
        self.port = port
        self.lines: list[str] = []
        self.url: str | None = None
        self.links: list[str] = []  # every "open URL" line, in order
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "studies", "ui", str(path), "--port", str(port), "--no-browser", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path.cwd(),
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("open http"):
                self.links.append(line.split(" ", 1)[1].strip())
                self.url = self.links[0]

    def wait_until_up(self, timeout: float = START_TIMEOUT_S, links: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if len(self.links) >= links:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    assert response.status == 200
                return self.url
            time.sleep(0.5)
        raise AssertionError("studies ui did not print its URL:\n" + "\n".join(self.lines[-30:]))

    def processes(self) -> tuple[list[int], list[int]]:
        """(descendants of studies ui, process groups they lead)."""
        tree = _tree(self.proc.pid)
        return tree, [pid for pid in tree if os.getpgid(pid) == pid]

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def _assert_all_gone(tree: list[int], groups: list[int], port: int) -> None:
    deadline = time.monotonic() + 10  # orphans are reaped by init a moment later
    while time.monotonic() < deadline and (any(_alive(p) for p in tree) or any(_group(g) for g in groups)):
        time.sleep(0.2)
    assert [p for p in tree if _alive(p)] == []
    assert [g for g in groups if _group(g)] == []
    check_port_free(port)  # raises PortInUseError if the port is still taken


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.integration
def test_a_signal_stops_every_process_and_frees_the_port(tmp_path, sig):
    port = _free_port()
    ui = UI(_tiny(tmp_path), port)  # no record yet: the link is the experiments list
    try:
        url = ui.wait_until_up()
        assert url == f"http://127.0.0.1:{port}/#/experiments"
        tree, groups = ui.processes()
        assert tree and groups, "the server runs in a process group of its own"
        assert not any("_job_runner" in Path(f"/proc/{p}/cmdline").read_text() for p in tree if _alive(p))
        started = time.monotonic()
        assert ui.stop(sig) == 0, "\n".join(ui.lines[-30:])  # a stop is the UI's normal end
        print(f"stopped in {time.monotonic() - started:.1f} s")
        _assert_all_gone(tree, groups, port)
    finally:
        if ui.proc.poll() is None:
            ui.proc.kill()


# --- e2e: what a browser sees ------------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    """(browser, driver) paths of the system's Chromium; fails in CI, skips elsewhere when absent."""
    browser = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
    driver = next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver", shutil.which("chromedriver"))
                   if p and os.access(p, os.X_OK)), None)
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e .[dev])")
    if missing:
        reason = f"no {' and no '.join(missing)} (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return browser, driver


def _js_number(value: float) -> str:
    """A metric as the runs table shows it (JavaScript's Number#toString) for |value| in [1e-6, 1e21)."""
    if value == int(value):
        return str(int(value))
    return repr(value)


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    if os.environ.get("BNN_TEST_ARTIFACTS"):
        target = Path(os.environ["BNN_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


VISIBLE_CELLS = """
const [names, column] = arguments;
const out = {};
for (const row of document.querySelectorAll('.ag-row')) {
  const links = Array.from(row.querySelectorAll('a')).map(a => a.innerText.trim());
  for (const name of names) {
    if (links.includes(name)) {
      const id = row.getAttribute('row-id');
      const cell = document.querySelector(`.ag-row[row-id="${id}"] [col-id="${column}"]`);
      if (cell) {
        const box = cell.getBoundingClientRect();
        const inView = box.width > 0 && box.right <= window.innerWidth && box.bottom <= window.innerHeight;
        out[name] = {value: cell.innerText.trim(), inView: inView};
      }
    }
  }
}
return JSON.stringify(out);
"""


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc (Linux)")
@pytest.mark.integration
def test_browser_sees_each_cell_with_its_objective(tmp_path, capsys):
    browser, driver_path = _chromium()
    from mlflow import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    path = _tiny(tmp_path)
    assert main(["run", str(path), "--quiet"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny_ui")
    cells = client.search_runs([experiment.experiment_id], "tags.`bnn.role` = 'cell'")
    expected = {run.info.run_name: _js_number(run.data.metrics["val_accuracy"]) for run in cells}
    features = {run.info.run_name: run.data.params["features"] for run in cells}
    assert len(expected) == 3

    cell_ids = {run.data.tags["cell_id"] for run in cells}
    port, dashboard_port = _free_port(), _free_port()
    ui = UI(path, port, "--optuna", "--optuna-port", str(dashboard_port))
    driver = None
    try:
        url = ui.wait_until_up(links=2)
        dashboard = ui.links[1]
        assert dashboard.startswith(f"http://127.0.0.1:{dashboard_port}/dashboard/studies/")
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?")
        assert "workflowType=machine_learning" in url
        assert client.get_experiment(experiment.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
        tree, groups = ui.processes()

        # The same study tracked on that server: its link, nothing started.
        served = _tiny(tmp_path / "served", tracking_uri=f"http://127.0.0.1:{port}")
        assert main(["ui", str(served), "--no-browser"]) == 0
        assert f"open {url}\n" in capsys.readouterr().out
        assert ui.processes() == (tree, groups)

        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1600,1000", "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        driver.get(url)
        seen: dict = {}

        def cells_shown(d) -> bool:
            seen.clear()
            seen.update(json.loads(d.execute_script(VISIBLE_CELLS, list(expected), sort_key("val_accuracy"))))
            shown = json.loads(d.execute_script(VISIBLE_CELLS, list(expected), "params.`features`"))
            seen.update({f"{name} features": cell for name, cell in shown.items()})
            return all(name in seen and seen[name]["value"] for name in expected)

        try:
            WebDriverWait(driver, 120, poll_frequency=1).until(cells_shown)
        finally:
            shot = _screenshot(driver, "studies_ui_runs.png")
            print(f"screenshot: {shot}")
        assert {name: seen[name]["value"] for name in expected} == expected
        assert {name: seen[f"{name} features"]["value"] for name in expected} == features  # the rows line up
        assert all(seen[name]["inView"] for name in expected), seen
        assert "/runs?" in driver.current_url and "workflowType=machine_learning" in driver.current_url
        assert "Sort: val_accuracy" in driver.find_element("tag name", "body").text

        # optuna-dashboard on the study's Optuna storage: the study, one trial per cell, its cell_id.
        driver.get(f"{dashboard}/trials")
        text = {"body": ""}

        def trials_shown(d) -> bool:
            text["body"] = d.find_element("tag name", "body").text
            return f"{len(cell_ids)} Trials" in text["body"]

        try:
            WebDriverWait(driver, 120, poll_frequency=1).until(trials_shown)
            for number in range(len(cell_ids)):  # each trial's page lists its user attributes
                driver.find_element("xpath", f"//*[normalize-space(text())='Trial {number}']").click()
                WebDriverWait(driver, 30, poll_frequency=0.5).until(
                    lambda d, n=number: f"Trial {n} (trial_id=" in d.find_element("tag name", "body").text)
                text["body"] += driver.find_element("tag name", "body").text
        finally:
            shot = _screenshot(driver, "optuna_dashboard_trials.png")
            print(f"screenshot: {shot}")
        assert "tiny_ui" in text["body"]
        assert {cid for cid in cell_ids if f"cell_id {cid}" in text["body"]} == cell_ids, text["body"][-2000:]
    finally:
        if driver is not None:
            driver.quit()
        code = ui.stop(signal.SIGTERM) if ui.proc.poll() is None else ui.proc.returncode
    assert code == 0
    _assert_all_gone(tree, groups, port)
    check_port_free(dashboard_port)
