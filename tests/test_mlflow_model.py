"""The best detector as an MLflow model (``bnn.serving``, ``Tracker.log_detector_model`` and
``Tracker.register_best``; docs/serving.md).

A tiny study (``bnext_micro`` at 32 px on 64 synthetic images, one epoch, two feature sets, so two
cells) is run once by the real runner into a SQLite store; the tests then read what it logged:
one logged model per cell with its metrics linked, the best cell registered (torch and OpenVINO),
a re-run that registers nothing new, ``mlflow.pyfunc.load_model("models:/NAME/1")`` agreeing with
``python -m bnn detect`` (both engines) on the same image files, and a real ``mlflow models serve``
answering HTTP POST /invocations.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pg_mlflow import free_port
from PIL import Image

from bnn.__main__ import main as bnn_main
from bnn.checkpoint import save_best
from bnn.config import FitConfig, create_detector_from_config
from bnn.serving import (
    INPUT_COLUMN,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITY,
    ServedDetector,
    prepare_folder,
)
from studies import record as R
from studies.__main__ import main
from studies.spec import load_study
from studies.yaml_lines import StudyFileError

NAME = "tiny_detector"
STUDY = """\
name: served
dataset: synthetic
data_params: {{count: 64, image_size: 36, difficulty: 0.0}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 32
  epochs: 1
  batch_size: 32
grid:
  features: [rgb, rgb+fft+lbp]
latency: {{enabled: false}}
registered_model: {name}
"""
EXAMPLE_FILE = Path("/tmp/mlflow_serve_example.txt")


class Served:
    def __init__(self, root: Path, tracking_uri: str, exit_code: int, seconds: float):
        self.root, self.tracking_uri, self.exit_code, self.seconds = root, tracking_uri, exit_code, seconds
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = self.client.get_experiment_by_name("served")
        runs = R.search_all(self.client, self.experiment.experiment_id, R.ROLE_CELL)
        self.cells = {run.info.run_id: run for run in runs}

    def models(self, name: str = R.MODEL_NAME) -> list:
        return [m for m in self.client.search_logged_models([self.experiment.experiment_id]) if m.name == name]

    def rerun(self) -> int:
        return main(["run", str(self.root / "served.yaml"), "--quiet"])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served")
    (root / "served.yaml").write_text(STUDY.format(root=root, name=NAME))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("BNN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bnn-cache"))
        mp.setenv("BNN_HEARTBEAT_SECONDS", "1")
        started = time.monotonic()
        exit_code = main(["run", str(root / "served.yaml"), "--quiet"])
        seconds = time.monotonic() - started
    return Served(root, f"sqlite:///{root}/mlflow.db", exit_code, seconds)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six image files (PNG and JPEG, several sizes) of random pixels."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, fmt) in enumerate([(40, "PNG"), (36, "JPEG"), (64, "PNG"), (48, "JPEG"), (33, "PNG"), (50, "PNG")]):
        path = folder / f"image{i}.{fmt.lower().replace('jpeg', 'jpg')}"
        Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(path, format=fmt)
        paths.append(path)
    return paths


def _detect(capsys, paths: list[Path], checkpoint: Path, engine: str = "torch") -> list[float]:
    """``python -m bnn detect --json`` in-process: the probability per path, in order."""
    capsys.readouterr()
    assert bnn_main(["detect", *map(str, paths), "--checkpoint", str(checkpoint), "--json", "--engine", engine,
                     "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    return [row["prob_fake"] for row in rows]


def _frame(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: [p.read_bytes() for p in paths]})


def _best_run(served: Served):
    finished = [r for r in served.cells.values() if r.info.status == "FINISHED"]
    return max(finished, key=lambda r: (r.data.metrics["val_accuracy"], -r.info.start_time))


# --- unit: the study key ------------------------------------------------------------------------


def test_registered_model_is_validated_with_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndataset: synthetic\nregistered_model: 'no/slashes here'\n")
    with pytest.raises(StudyFileError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}:3: registered_model:"), str(err.value)
    path.write_text("name: good\ndataset: synthetic\n")
    assert load_study(path).spec.registered_model is None  # the study name is used


@pytest.mark.integration
def test_served_detector_refuses_what_is_not_image_bytes(tmp_path, capsys):
    """Paths are not read (a served model would read its server's files); bad rows are named."""
    config = FitConfig(backbone="bnext_micro", resolution=16, features="rgb", dataset="synthetic")
    save_best(tmp_path / "best.pt", config, 0, create_detector_from_config(config))
    detector = ServedDetector(prepare_folder(tmp_path / "best.pt", tmp_path / "detector"), device="cpu")
    with pytest.raises(ValueError, match="row 0: column 'image' is a string but not base64"):
        detector.predict(pd.DataFrame({INPUT_COLUMN: [str(tmp_path / "best.pt")]}))
    with pytest.raises(ValueError, match="row 1: unreadable image"):
        detector.predict(pd.DataFrame({INPUT_COLUMN: [_png(), b"not an image"]}))
    with pytest.raises(ValueError, match="needs a column 'image'"):
        detector.predict(pd.DataFrame({"path": ["x"]}))
    out = detector.predict(pd.DataFrame({INPUT_COLUMN: [_png(), base64.b64encode(_png()).decode()]}))
    assert list(out.columns) == [OUTPUT_PROBABILITY, OUTPUT_LABEL]
    assert out[OUTPUT_PROBABILITY].iloc[0] == out[OUTPUT_PROBABILITY].iloc[1]  # bytes = base64 of them


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the study's record -----------------------------------------------------------------------


@pytest.mark.integration
def test_each_finished_cell_logs_its_detector_with_its_metrics(served):
    assert served.exit_code == 0
    print(f"study with two cells, models and registration: {served.seconds:.1f} s")
    models = served.models()
    assert sorted(m.source_run_id for m in models) == sorted(served.cells)
    for model in models:
        run = served.cells[model.source_run_id]
        assert str(model.status).endswith("READY")
        assert model.tags[R.TAG_MODEL_ENGINE] == "torch"
        assert model.tags[R.TAG_CELL_ID] == run.data.tags[R.TAG_CELL_ID]
        linked = {m.key: m.value for m in model.metrics}
        for name in (*R.FINAL_METRICS, R.METRIC_OPS):
            assert linked[name] == pytest.approx(run.data.metrics[name], nan_ok=True), name
        assert model.params[R.PARAM_FEATURES] == run.data.params[R.PARAM_FEATURES]
        outputs = served.client.get_run(run.info.run_id).outputs.model_outputs
        assert model.model_id in [o.model_id for o in outputs]
        # the checkpoint artifact of the record stays where it was
        assert served.client.list_artifacts(run.info.run_id, R.ARTIFACT_CHECKPOINT_DIR)


@pytest.mark.integration
def test_the_best_cell_is_registered_once_with_its_openvino_twin(served):
    names = {m.name for m in served.client.search_registered_models()}  # the UI's Models page
    assert {NAME, NAME + R.OPENVINO_SUFFIX} <= names
    best = _best_run(served)
    (torch_model,) = [m for m in served.models() if m.source_run_id == best.info.run_id]
    (openvino_model,) = served.models(R.MODEL_NAME_OPENVINO)
    assert openvino_model.source_run_id == best.info.run_id
    for name, model in ((NAME, torch_model), (NAME + R.OPENVINO_SUFFIX, openvino_model)):
        (version,) = served.client.search_model_versions(f"name = '{name}'")
        assert version.version in ("1", 1) and version.source == f"models:/{model.model_id}"
        assert version.tags[R.TAG_CELL_ID] == best.data.tags[R.TAG_CELL_ID]
        assert version.tags[R.TAG_VERSION_OBJECTIVE].startswith("val_accuracy=")
        assert served.client.get_registered_model(name).aliases[R.REGISTRY_ALIAS_BEST] in ("1", 1)
    assert served.rerun() == 0  # nothing to run; the best is unchanged: no new version, no new model
    for name in (NAME, NAME + R.OPENVINO_SUFFIX):
        assert len(served.client.search_model_versions(f"name = '{name}'")) == 1
    assert len(served.models()) == 2 and len(served.models(R.MODEL_NAME_OPENVINO)) == 1


@pytest.mark.integration
def test_the_registered_models_predict_as_detect_does(served, images, capsys, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.tracking_uri)
    best = _best_run(served)
    checkpoint = Path(served.client.download_artifacts(best.info.run_id, "checkpoint/best.pt", str(tmp_path)))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    out = model.predict(_frame(images))
    assert list(out.columns) == [OUTPUT_PROBABILITY, OUTPUT_LABEL] and len(out) == len(images)
    probabilities = out[OUTPUT_PROBABILITY].to_numpy()
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(probabilities, _detect(capsys, images, checkpoint), rtol=0, atol=1e-6)
    assert out[OUTPUT_LABEL].tolist() == [bool(p >= 0.5) for p in probabilities]
    by_alias = mlflow.pyfunc.load_model(f"models:/{NAME}@{R.REGISTRY_ALIAS_BEST}").predict(_frame(images[:2]))
    np.testing.assert_allclose(by_alias[OUTPUT_PROBABILITY], probabilities[:2], rtol=0, atol=1e-6)
    # OpenVINO: the same answers as `detect --engine openvino` on the model's own export
    openvino = mlflow.pyfunc.load_model(f"models:/{NAME}{R.OPENVINO_SUFFIX}/1")
    exported = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}{R.OPENVINO_SUFFIX}/1",
                                                        dst_path=str(tmp_path / "ov"))) / "artifacts" / "detector"
    ov_probabilities = openvino.predict(_frame(images))[OUTPUT_PROBABILITY].to_numpy()
    np.testing.assert_allclose(ov_probabilities, _detect(capsys, images, exported, "openvino"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ov_probabilities, probabilities, atol=0.2)  # sign flips at round-off: docs/inference.md


def _stop(process: subprocess.Popen) -> None:
    """TERM to the server's process group, KILL after 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.mark.e2e
@pytest.mark.integration
def test_mlflow_models_serve_answers_invocations(served, images, capsys, tmp_path):
    port = free_port()
    # MLflow starts `uvicorn` by name: the environment's bin folder first on PATH, as when it is activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                message = f"mlflow models serve did not start: {(tmp_path / 'serve.log').read_text()[-3000:]}"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
            time.sleep(0.5)
        chosen = images[:3]
        body = json.dumps({"dataframe_split": {"columns": [INPUT_COLUMN],
                                               "data": [[base64.b64encode(p.read_bytes()).decode()] for p in chosen]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer = response.status, response.read().decode()
        predictions = json.loads(answer)["predictions"]
        best = _best_run(served)
        checkpoint = Path(served.client.download_artifacts(best.info.run_id, "checkpoint/best.pt", str(tmp_path)))
        expected = _detect(capsys, chosen, checkpoint)
        assert status == 200
        np.testing.assert_allclose([p[OUTPUT_PROBABILITY] for p in predictions], expected, rtol=0, atol=1e-6)
        assert [p[OUTPUT_LABEL] for p in predictions] == [e >= 0.5 for e in expected]
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"dataframe_records": [{INPUT_COLUMN: "bm90IGFuIGltYWdl"}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=60)
        assert refused.value.code == 400 and "row 0: unreadable image" in refused.value.read().decode()
        EXAMPLE_FILE.write_text(
            f"# {time.strftime('%Y-%m-%d')}: mlflow models serve -m models:/{NAME}/1 --env-manager local "
            f"--host 127.0.0.1 --port {port}; images: {', '.join(p.name for p in chosen)}\n"
            f"POST /invocations Content-Type: application/json\n{body}\n\nHTTP {status}\n{answer}\n")
    finally:
        _stop(process)
        log.close()
