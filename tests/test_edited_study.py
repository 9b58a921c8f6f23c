"""An edited study file is never mixed silently with its earlier runs (case C19): ``status`` and
``plan`` name the runs that are no longer cells of the file, ``run`` tags them stale, the report
leaves them out unless asked, and tables never show two rows with the same label."""

from __future__ import annotations

import pytest

from analysis import runs, tables
from studies.__main__ import main as studies_main
from studies.record import TAG_STALE

STUDY = """\
name: edited
dataset: synthetic
data_params: {count: 60, image_size: 36}
defaults: {backbone: bnext_micro, features: rgb+fft+lbp, resolution: 32, epochs: EPOCHS, batch_size: 16}
seeds: [0, 1]
latency: {enabled: false}
tracking_uri: sqlite:///ROOT/mlflow.db
storage: sqlite:///ROOT/optuna.db
"""


def _text(capsys) -> str:
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())


@pytest.mark.slow
@pytest.mark.integration
def test_runs_of_an_earlier_version_are_stale_everywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "s.yaml"
    template = STUDY.replace("ROOT", str(tmp_path))  # absolute: the process's earlier tests ran elsewhere
    study.write_text(template.replace("EPOCHS", "2"))
    assert studies_main(["run", "s.yaml", "--quiet"]) == 0
    capsys.readouterr()

    study.write_text(template.replace("EPOCHS", "1"))  # a second user edits the file
    for command in ("status", "plan"):
        assert studies_main([command, "s.yaml"]) == 0
        text = _text(capsys)
        assert "2 run(s) in experiment 'edited' are not cells of this file" in text and "epochs=2" in text
    assert studies_main(["run", "s.yaml", "--quiet"]) == 0
    capsys.readouterr()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    current = runs.load_runs("edited", uri)
    assert len(current) == 2 and set(current["epochs"]) == {1}
    assert current.attrs["stale"] == {"epochs=2": 2}
    from analysis.provenance import Provenance

    left_out = Provenance.from_runs(current)
    assert "stale: 2 run(s) of an earlier version of the study file, left out" in "\n".join(left_out.lines())
    assert "epochs=2 (2)" in left_out.markdown()
    everything = runs.load_runs("edited", uri, include_stale=True)
    assert len(everything) == 4 and sorted(everything["stale"].fillna("")) == ["", "", "epochs=2", "epochs=2"]
    assert "included, labelled stale" in Provenance.from_runs(everything).stale_text
    table = tables.results_table(everything, literature=False).frame
    ours = table[table["block"] == "ours"]
    labels = ours[list(tables.LABEL_COLUMNS)].astype(str).agg(" | ".join, axis=1)
    assert labels.is_unique and labels.str.contains("stale: epochs=2").sum() == 1

    study.write_text(template.replace("EPOCHS", "2"))  # the edit undone: the first runs are current again
    assert studies_main(["run", "s.yaml", "--quiet"]) == 0
    assert set(runs.load_runs("edited", uri)["epochs"]) == {2}
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("edited")
    tagged = [r for r in client.search_runs([experiment.experiment_id]) if TAG_STALE in r.data.tags]
    assert sorted(r.data.tags[TAG_STALE] for r in tagged) == ["epochs=1", "epochs=1"]


def test_rows_that_would_look_the_same_name_what_differs():
    import pandas as pd

    frame = pd.DataFrame({
        "run_id": ["a", "b"], "cell_id": ["c1", "c2"], "model": "BNext-micro", "backbone": "bnext_micro",
        "freeze_backbone": False, "features": "rgb", "dataset": "synthetic", "epochs": [4, 2], "seed": 0,
        "test_accuracy": [0.5, 0.6], "test_auc": [0.5, 0.7], "params": 1e5, "ops": 1e6, "binary": True,
        "synthetic": True, "status": "FINISHED",
    })
    frame.attrs.update(params=["backbone", "freeze_backbone", "features", "dataset", "epochs", "seed"],
                       metrics=["test_accuracy", "test_auc", "params", "ops"])
    table = tables.results_table(frame, literature=False).frame
    methods = sorted(table.loc[table["block"] == "ours", "method"])
    assert methods == ["this study (epochs=2)", "this study (epochs=4)"]
