"""Measured latency (``bnn.latency``) and multi-objective studies (issue 13).

``measure`` is checked on real OpenVINO exports: names, units, ``latency_network_ms <=
latency_ms``, the engine kind per backbone family, PyTorch's thread setting restored, and the
engine-missing error. Studies are run for real (SQLite, MLflow, Optuna): latency metrics and host
tags on every child run, re-measurement without retraining when the settings change, the skipped
reason when OpenVINO is missing, and a 4-trial two-objective search whose Pareto set ``studies
status`` prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from bnn.detector import create_detector
from bnn.latency import LATENCY_METRICS, EngineMissing, latency_metric_names, measure
from studies.__main__ import main
from studies.record import (
    TAG_LATENCY_ENGINE,
    TAG_LATENCY_HOST,
    TAG_LATENCY_SKIPPED,
    TAG_LATENCY_THREADS,
    TAG_OBJECTIVES,
)
from studies.runner import Runner
from studies.spec import load_study
from studies.yaml_lines import StudyFileError

STUDY = """\
name: {name}
dataset: synthetic
data_params: {{count: 48, image_size: 20, difficulty: 0.0}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  resolution: 16
  epochs: 1
  batch_size: 16
{body}
log_checkpoint: false
"""


pytestmark = pytest.mark.usefixtures("isolated", "fast_heartbeat")  # tests/conftest.py


def _study(tmp_path: Path, body: str, name: str = "lat") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, root=tmp_path, body=body))
    return path


def _cell_runs(tmp_path: Path, name: str = "lat") -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("cell_id")]


# ---- bnn.latency.measure ---------------------------------------------------------------------------


@pytest.mark.integration
def test_measure_names_units_and_network_within_end_to_end():
    detector = create_detector("bnext_micro", ("rgb", "fft", "lbp")).eval()
    threads_before = torch.get_num_threads()
    result = measure(detector, 16, extra_resolutions=(24,), threads=1, repeats=5, warmup=1, batch=4)
    assert list(result.metrics) == latency_metric_names((24,)) == [
        "latency_ms", "latency_network_ms", "throughput_ips",
        "latency_24px_ms", "latency_network_24px_ms", "throughput_24px_ips"]
    for suffix in ("", "_24px"):
        latency, network = result.metrics[f"latency{suffix}_ms"], result.metrics[f"latency_network{suffix}_ms"]
        assert 0 < network <= latency < 10_000
        assert result.metrics[f"throughput{suffix}_ips"] > 0
    assert result.engine.startswith("openvino ") and result.engine.endswith(" binary")
    assert result.threads == 1 and result.host and result.seconds > 0
    assert torch.get_num_threads() == threads_before


@pytest.mark.integration
def test_a_full_precision_backbone_runs_on_the_fp32_engine():
    detector = create_detector("resnet18", ("rgb",)).eval()
    result = measure(detector, 32, threads=1, repeats=2, warmup=1, batch=2)
    assert result.engine.endswith(" fp32") and set(result.metrics) == set(LATENCY_METRICS)


def test_measure_without_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(EngineMissing, match="pip install openvino"):
        measure(create_detector("bnext_micro", ("rgb",)), 16)


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"repeats": 0}, {"extra_resolutions": (0,)}])
def test_measure_refuses_non_positive_settings(kwargs):
    with pytest.raises(ValueError, match=">= 1"):
        measure(create_detector("bnext_micro", ("rgb",)), 16, **kwargs)


# ---- studies: latency per cell ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_every_cell_logs_latency_and_host_and_resumes_on_changed_settings(tmp_path, caplog):
    path = _study(tmp_path, "grid:\n  features: [rgb, rgb+fft]\nlatency: {enabled: true, threads: 1, repeats: 3}")
    assert Runner(load_study(path)).run().completed
    runs = _cell_runs(tmp_path)
    assert len(runs) == 2
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        assert 0 < metrics["latency_network_ms"] <= metrics["latency_ms"]
        assert metrics["throughput_ips"] > 0
        assert tags[TAG_LATENCY_THREADS] == "1" and tags[TAG_LATENCY_HOST]
        assert tags[TAG_LATENCY_ENGINE].endswith(" binary") and TAG_LATENCY_SKIPPED not in tags
    epochs = {r.info.run_id: len(mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(
        r.info.run_id, "epoch_train_loss")) for r in runs}

    # Other settings: measured again from the kept checkpoints, nothing retrained.
    path.write_text(path.read_text().replace("threads: 1", "threads: 2").replace(
        "repeats: 3}", "repeats: 3, resolutions: [24]}"))
    with caplog.at_level("INFO", logger="studies"):
        Runner(load_study(path)).run()
    runs = _cell_runs(tmp_path)
    for run in runs:
        assert run.data.tags[TAG_LATENCY_THREADS] == "2"
        assert 0 < run.data.metrics["latency_network_24px_ms"] <= run.data.metrics["latency_24px_ms"]
        history = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(
            run.info.run_id, "epoch_train_loss")
        assert len(history) == epochs[run.info.run_id]
    assert "latency (added to or changed in the study after it finished)" in caplog.text

    # The analysis frame carries the metrics and the host.
    from analysis.runs import load_runs

    frame = load_runs("lat", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert frame["latency_ms"].gt(0).all() and frame["latency_host"].notna().all()
    assert set(frame["latency_threads"]) == {"2"}


@pytest.mark.slow
@pytest.mark.integration
def test_latency_seeds_times_only_those_seeds_and_says_so_on_the_others(tmp_path):
    path = _study(tmp_path, "grid:\n  features: [rgb]\nseeds: [0, 1]\nlatency: {enabled: true, repeats: 2, seeds: [0]}")
    assert len(Runner(load_study(path)).run().completed) == 2
    runs = {run.data.params["seed"]: run.data for run in _cell_runs(tmp_path)}
    assert runs["0"].metrics["latency_ms"] > 0 and TAG_LATENCY_SKIPPED not in runs["0"].tags
    assert "latency_ms" not in runs["1"].metrics
    assert runs["1"].tags[TAG_LATENCY_SKIPPED] == "not timed: the study times only seeds [0] (latency.seeds)"


@pytest.mark.slow
@pytest.mark.integration
def test_a_missing_engine_is_recorded_and_measured_once_it_is_there(tmp_path, monkeypatch):
    path = _study(tmp_path, "grid:\n  features: [rgb]\nlatency: {enabled: true, repeats: 2}")
    monkeypatch.setitem(sys.modules, "openvino", None)
    summary = Runner(load_study(path)).run()
    assert summary.completed and not summary.failed
    (run,) = _cell_runs(tmp_path)
    assert "pip install openvino" in run.data.tags[TAG_LATENCY_SKIPPED]
    assert "latency_ms" not in run.data.metrics
    monkeypatch.delitem(sys.modules, "openvino")
    Runner(load_study(path)).run()
    (run,) = _cell_runs(tmp_path)
    assert run.data.metrics["latency_ms"] > 0 and TAG_LATENCY_SKIPPED not in run.data.tags


def test_a_study_with_latency_off_says_so_on_its_cells(tmp_path):
    """Not 'recorded before latency existed': the report's reason for the missing columns is the
    study's own setting."""
    from studies.cell_evaluation import LATENCY_OFF, measure_cell_latency

    study = load_study(_study(tmp_path, "latency: {enabled: false}\nobjective: {metric: val_auc}"))
    cell = study.cells[0]
    assert measure_cell_latency(study.spec.latency, cell, tmp_path / "never-read.pt") == ({}, {TAG_LATENCY_SKIPPED: LATENCY_OFF})
    assert "latency.enabled: false" in LATENCY_OFF


def test_latency_is_on_by_default_and_off_where_the_study_says(tmp_path, monkeypatch):
    monkeypatch.delenv("BNN_LATENCY", raising=False)
    assert load_study(_study(tmp_path, "", name="lat_on")).spec.latency.enabled
    off = load_study(_study(tmp_path, "latency: {enabled: false}\nobjective: {metric: val_auc}", name="lat_off"))
    assert not off.spec.latency.enabled
    monkeypatch.setenv("BNN_LATENCY", "off")
    assert not load_study(_study(tmp_path, "", name="lat_env")).spec.latency.enabled
    some = load_study(_study(tmp_path, "latency: {enabled: true, seeds: [0]}", name="lat_seeds")).spec.latency
    assert some.times(0) and not some.times(1)
    assert load_study(_study(tmp_path, "latency: {enabled: true}", name="lat_forced")).spec.latency.enabled


@pytest.mark.parametrize(("body", "line", "key", "message"), [
    ("latency: {threads: 0}", 11, "latency.threads", "greater than or equal to 1"),
    ("latency: {enable: false}", 11, "latency.enable", "unknown key; did you mean 'enabled'?"),
    ("objective:\n  - {metric: val_accuracy, directon: minimize}", 13, "objective[0].directon", "unknown key; did you mean 'direction'?"),
    ("latency:\n  resolutions: [224, 2]", 12, "latency.resolutions[1]", "greater than or equal to 8"),
    ("latency: {enabled: false}\nobjective: {metric: latency_ms, direction: minimize}", 12, "objective.metric",
     "unknown metric 'latency_ms'"),
    ("objective:\n  - {metric: val_accuracy}\n  - {metric: latency_msec, direction: minimize}", 13,
     "objective[1].metric", "did you mean 'latency_ms'"),
    ("objective: []", 12, "objective", "empty list"),
    ("latency: {enabled: true, seeds: [0]}\nobjective: {metric: latency_ms, direction: minimize}", 11, "latency.seeds",
     "needs the latency of every cell"),
    ("objective:\n  - {metric: ops, direction: minimize}\n  - {metric: ops, direction: minimize}", 14,
     "objective[1].metric", "ops is listed twice"),
])
def test_bad_latency_and_objective_keys_name_file_line_and_key(tmp_path, body, line, key, message, capsys):
    path = _study(tmp_path, "latency: {enabled: true}\n" + body if body.startswith("objective") else body)
    with pytest.raises(StudyFileError) as err:
        load_study(path)
    text = str(err.value)
    assert text.startswith(f"{path}:") and f": {key}: " in text and message in text, text
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---- multi-objective search ------------------------------------------------------------------------

SEARCH = """\
latency: {enabled: true, repeats: 2}
search:
  trials: 4
  sampler_seed: 3
  space:
    features: {type: categorical, choices: [rgb, rgb+fft, rgb+lbp, rgb+sobel+fft+lbp]}
    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}   # every trial a different cell
objective:
  - {metric: val_accuracy, direction: maximize}
  - {metric: latency_ms, direction: minimize}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_two_objective_search_reports_its_pareto_set(tmp_path, capsys):
    path = _study(tmp_path, SEARCH, name="mo")
    assert main(["run", str(path)]) == 0
    optuna_study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [d.name for d in optuna_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    best = optuna_study.best_trials
    assert best
    for trial in complete:  # the Pareto set is exactly the non-dominated trials
        dominated = any(o.values[0] >= trial.values[0] and o.values[1] <= trial.values[1]
                        and tuple(o.values) != tuple(trial.values) for o in complete)
        assert (trial.number in {b.number for b in best}) == (not dominated)
    runs = _cell_runs(tmp_path, "mo")
    by_run = {r.info.run_id: r.data.metrics for r in runs}
    for trial in complete:  # Optuna's values are the logged metrics
        logged = by_run[trial.user_attrs["mlflow_run_id"]]
        assert trial.values == [logged["val_accuracy"], logged["latency_ms"]]
    parent = [r for r in mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("mo").experiment_id])
        if not r.data.tags.get("cell_id")]
    assert '"metric": "latency_ms"' in parent[0].data.tags[TAG_OBJECTIVES]
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"Pareto set: {len(best)} of 4 completed trials (val_accuracy max, latency_ms min)" in out

    # The objective's directions are fixed once the study exists.
    path.write_text(path.read_text().replace("latency_ms, direction: minimize", "latency_ms, direction: maximize"))
    assert main(["run", str(path)]) == 2
    assert "objective: the Optuna study 'mo' was created with the direction(s)" in capsys.readouterr().err
