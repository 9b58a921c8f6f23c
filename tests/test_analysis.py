"""analysis/: MLflow record -> frames, Pareto fronts, tables, figures (a real SQLite MLflow store).

The record read here is written by ``tests/mlflow_records.py`` (the ``study_records`` fixture of
``tests/conftest.py``, shared with ``tests/test_reports.py``) with the names of ``studies.record``,
for cells that the runner cannot train in a test (BNext-S, ResNet-50, many seeds). That the
runner's writer and this reader agree is ``tests/test_record_contract.py``'s job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_records import EPOCHS, GIT_COMMIT, StudyRecord

from analysis import (
    ablation,
    fronts,
    literature,
    pareto,
    plots,
    replicates,
    runs,
    stats,
    store,
    tables,
)
from analysis.figstyle import run_label, save_figure
from analysis.provenance import Provenance
from analysis.store import StudyNotFoundError
from analysis.table_format import latex_escape


@pytest.fixture(scope="module")
def record(study_records) -> StudyRecord:
    return study_records["demo"]


@pytest.fixture(scope="module")
def frame(record) -> pd.DataFrame:
    return runs.load_runs(record.study, record.tracking_uri)


# --- runs -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_load_runs_one_row_per_finished_run(record, frame):
    assert len(frame) == len(record.finished) == 13
    assert sorted(frame["run_id"]) == sorted(r["run_id"] for r in record.finished)
    assert frame["run_id"].is_unique
    assert set(frame["status"]) == {"FINISHED"}
    assert frame.attrs["unfinished"] == {"FAILED": 1, "RUNNING": 1}
    assert frame.attrs["parent_run_id"] == record.parent_run_id
    assert frame.attrs["study"] == "demo"
    expected = {r["run_id"]: r for r in record.finished}
    for _, row in frame.iterrows():
        want = expected[row["run_id"]]
        assert row["test_accuracy"] == pytest.approx(want["test_accuracy"])
        assert row["ops"] == want["ops"]
        assert row["features"] == want["features"]
        assert row["seed"] == want["seed"]


def test_load_runs_dtypes(frame):
    assert frame["freeze_backbone"].dtype == bool
    assert frame["amp"].dtype == bool
    assert frame["binary"].dtype == bool and frame["synthetic"].dtype == bool
    for column in ("seed", "epochs", "batch_size", "resolution", "data_params.count"):
        assert frame[column].dtype == np.int64, column
    for column in ("lr", "min_lr", "weight_decay", "test_accuracy", "ops", "params", "val_auc"):
        assert frame[column].dtype == np.float64, column
    assert frame["features"].map(type).eq(str).all()
    assert frame["pretrained"].isna().all()  # "None" -> missing
    assert frame["lr"].iloc[0] == pytest.approx(1e-4)
    assert set(frame["model"]) == {"BNext-T", "BNext-S", "ResNet-50"}
    assert set(frame["family"]) == {"BNext", "ResNet"}
    assert frame.loc[frame["family"] == "ResNet", "binary"].eq(False).all()
    assert str(frame["start_time"].dtype).startswith("datetime64")
    assert not any(c.startswith("epoch_") for c in frame.columns)
    assert frame["data"].str.contains("synthetic").all()
    assert frame["git_commit"].eq(GIT_COMMIT).all()


def test_load_runs_include_unfinished(record):
    every = runs.load_runs(record.study, record.tracking_uri, include_unfinished=True)
    assert len(every) == 15
    assert sorted(every.loc[every["status"] != "FINISHED", "status"]) == ["FAILED", "RUNNING"]
    assert every.loc[every["status"] != "FINISHED", "test_accuracy"].isna().all()


def test_load_runs_by_study_tag_experiment_name_or_env(record, study_records, monkeypatch):
    aliased = study_records["aliased"]
    by_tag = runs.load_runs("aliased", aliased.tracking_uri)
    by_name = runs.load_runs("aliased-experiment", aliased.tracking_uri)
    assert len(by_tag) == len(by_name) == 2
    assert by_tag.attrs["study"] == by_name.attrs["study"] == "aliased"
    assert by_tag.attrs["experiment"] == "aliased-experiment"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", record.tracking_uri)
    assert len(runs.load_runs("demo")) == 13


def test_records_of_older_versions_keep_their_git_commit(study_records):
    other = study_records["other"]  # custom ``git_commit`` tag, not MLflow's
    frame = runs.load_runs(other.study, other.tracking_uri)
    assert frame["git_commit"].eq(GIT_COMMIT).all() and frame.attrs["parent_git_commit"] == GIT_COMMIT


def test_missing_study_lists_experiments(record, tmp_path):
    with pytest.raises(StudyNotFoundError) as err:
        runs.load_runs("nope", record.tracking_uri)
    assert "demo" in err.value.experiments and "other" in err.value.experiments
    assert "demo" in str(err.value) and "nope" in str(err.value)
    missing_db = f"sqlite:///{tmp_path}/absent.db"
    with pytest.raises(StudyNotFoundError, match="no MLflow database"):
        runs.load_runs("demo", missing_db)
    assert not (tmp_path / "absent.db").exists()  # not created as a side effect


def test_redact_uri():
    assert (
        store.redact_uri("postgresql://bob:secret@db:5432/mlflow")
        == "postgresql://bob:***@db:5432/mlflow"
    )
    assert store.redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_group_replicates(frame):
    grouped = replicates.group_replicates(frame)
    assert len(grouped) == 11  # 13 runs, two cells with two seeds
    assert grouped["n"].sum() == 13
    assert "seed" not in grouped.attrs["grouped_by"] and "axes" not in grouped.attrs["grouped_by"]
    two = grouped[
        (grouped["features"] == "rgb+fft+lbp")
        & (grouped["backbone"] == "bnext_tiny")
        & ~grouped["freeze_backbone"]
    ].iloc[0]
    assert two["n"] == 2 and two["seeds"] == "0,1"
    assert two["test_accuracy"] == pytest.approx(0.925)
    assert two["test_accuracy_std"] == pytest.approx(np.std([0.92, 0.93], ddof=1))
    assert 0.92 <= two["test_accuracy_ci_low"] <= two["test_accuracy_ci_high"] <= 0.93
    assert len(two["run_ids"].split(",")) == 2
    one = grouped[grouped["backbone"] == "resnet50"].iloc[0]
    assert (
        one["n"] == 1
        and np.isnan(one["test_accuracy_std"])
        and np.isnan(one["test_accuracy_ci_low"])
    )
    assert grouped["freeze_backbone"].dtype == bool
    again = replicates.group_replicates(frame)  # seeded bootstrap: same intervals every time
    pd.testing.assert_series_equal(grouped["test_accuracy_ci_low"], again["test_accuracy_ci_low"])


def test_group_replicates_by(frame):
    by_backbone = replicates.group_replicates(frame, by=["backbone"], metrics=["test_accuracy"])
    assert list(by_backbone["backbone"]) == ["bnext_tiny", "bnext_small", "resnet50"]
    assert by_backbone.set_index("backbone")["n"].to_dict() == {
        "bnext_tiny": 11,
        "bnext_small": 1,
        "resnet50": 1,
    }


def test_group_replicates_keeps_the_seed_interval_beside_a_runs_own(frame):
    """A run's own interval over images (``test_accuracy_ci_low``, as the runner logs it) has the
    name of the seed-bootstrap column: the seed interval must win, not a mean of run intervals."""
    with_image_ci = frame.assign(test_accuracy_ci_low=0.0, test_accuracy_ci_high=1.0)
    metrics = [*frame.attrs["metrics"], "test_accuracy_ci_low", "test_accuracy_ci_high"]
    with_image_ci.attrs = {**frame.attrs, "metrics": metrics}
    grouped = replicates.group_replicates(with_image_ci)
    reference = replicates.group_replicates(frame)
    pd.testing.assert_series_equal(
        grouped["test_accuracy_ci_low"], reference["test_accuracy_ci_low"]
    )
    assert grouped["test_accuracy_ci_high"].max() < 1.0


def test_predictions_of_runs_without_the_artifact(record, frame):
    assert runs.load_all_predictions(frame["run_id"], record.tracking_uri) == {}
    with pytest.raises(FileNotFoundError, match="predictions/test_predictions.csv"):
        runs.load_predictions(frame["run_id"].iloc[0], record.tracking_uri)


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    values = [0.90, 0.92, 0.91, 0.95]
    low, high = stats.bootstrap_ci(values, seed=3)
    assert (low, high) == stats.bootstrap_ci(values, seed=3)
    assert min(values) <= low <= np.mean(values) <= high <= max(values)
    assert all(np.isnan(stats.bootstrap_ci([0.9])))
    low, high = stats.bootstrap_diff_ci([0.95, 0.96, 0.97], [0.90, 0.91, 0.92])
    assert 0.03 <= low <= 0.05 <= high <= 0.07


def test_epoch_history_and_roc(record, frame):
    ids = list(frame["run_id"][:2])
    history = runs.load_epoch_history(ids, record.tracking_uri)
    assert list(history.columns) == ["run_id", "step", "metric", "value"]
    assert len(history) == 2 * EPOCHS * len(runs.EPOCH_METRICS)
    assert sorted(history["step"].unique()) == list(range(EPOCHS))
    loss = history[(history["run_id"] == ids[0]) & (history["metric"] == "epoch_train_loss")]
    assert loss["value"].is_monotonic_decreasing
    roc = runs.load_roc(ids[0], record.tracking_uri)
    assert set(roc) == {"fpr", "tpr", "thresholds"} and len(roc["fpr"]) == 21
    assert roc["tpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    with pytest.raises(FileNotFoundError):
        runs.load_roc(record.parent_run_id, record.tracking_uri)


# --- pareto -----------------------------------------------------------------------------------


def test_pareto_front_hand_made_points():
    points = pd.DataFrame(
        {
            "ops": [1.0, 1.0, 2.0, 2.0, 3.0, np.nan, 0.5, 1.0, 4.0],
            "test_accuracy": [0.90, 0.90, 0.95, 0.94, 0.95, 0.99, np.nan, 0.80, 0.97],
        },
        index=list("abcdefghi"),
    )
    mask = pareto.pareto_front(points)
    # a, b identical: both on the front; d equal cost, worse quality than c; e equal quality,
    # more cost; f, g NaN: excluded; h equal cost to a, worse; i most expensive but best.
    assert mask[mask].index.tolist() == ["a", "b", "c", "i"]
    assert mask.dtype == bool and mask.index.equals(points.index)
    flipped = pareto.pareto_front(points, maximize_quality=False)  # e.g. an error rate
    assert flipped[flipped].index.tolist() == ["h"]
    cheap_is_bad = pareto.pareto_front(points, minimize_cost=False)
    assert cheap_is_bad[cheap_is_bad].index.tolist() == ["i"]
    steps = pareto.front_steps(points)
    assert steps["ops"].tolist() == [1.0, 2.0, 4.0]


def test_pareto_front_on_replicate_means():
    points = pd.DataFrame(
        {
            "cfg": ["x", "x", "y", "z"],
            "ops": [1.0, 1.0, 2.0, 3.0],
            "test_accuracy": [0.80, 1.00, 0.85, 0.95],
        }
    )
    per_run = pareto.pareto_front(points)
    assert per_run.tolist() == [False, True, False, False]
    per_config = pareto.pareto_front(points, by=["cfg"])  # x mean 0.90 > y 0.85
    assert per_config.tolist() == [True, True, False, True]
    with pytest.raises(KeyError, match="test_auc"):
        pareto.pareto_front(points, quality="test_auc")


def test_pareto_front_of_study(frame):
    grouped = replicates.group_replicates(frame)
    front = grouped[pareto.pareto_front(grouped)]
    labels = set(zip(front["backbone"], front["features"], front["freeze_backbone"], strict=True))
    assert labels == {
        ("bnext_tiny", "rgb", False),
        ("bnext_tiny", "rgb+fft+lbp", False),
        ("bnext_small", "rgb+fft+lbp", False),
        ("resnet50", "rgb", False),
    }


# --- literature -------------------------------------------------------------------------------


def test_literature_csv_is_cited_and_complete():
    lit = literature.load_literature()
    assert lit["source"].str.contains("Lanzino et al., CVPRW 2024").all()
    assert lit["transcribed_from"].str.len().gt(0).all()
    results = literature.load_literature("results")
    assert results.groupby("dataset").size().to_dict() == {"cifake": 9, "cocofake": 12, "dffd": 8}
    ours = results[results["block"] == "paper"]
    assert len(ours) == 18 and ours["frozen"].notna().all()
    assert ours["features"].eq("rgb+fft+lbp").all()
    assert set(ours["flops_g_published"]) == {0.89, 1.91, 3.39}
    coco_t = ours[
        (ours["dataset"] == "cocofake") & (ours["model"] == "BNext-T") & ~ours["frozen"]
    ].iloc[0]
    assert (coco_t["accuracy"], coco_t["auc"]) == (99.25, 99.86)
    assert literature.published_ops(ours.head(1)).iloc[0] == pytest.approx(0.89e8)
    ablation = literature.load_literature("ablation")
    assert len(ablation) == 8 and ablation["features"].is_unique


# --- tables -----------------------------------------------------------------------------------


def _md_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [
        [c.strip().strip("*").strip("_") for c in line.strip("|").split(" | ")]
        for line in lines[2:]
    ]


def test_results_table_markdown_matches_frame(frame):
    table = tables.results_table(frame)
    grouped = replicates.group_replicates(frame)
    assert len(table.frame) == len(grouped) == 11  # synthetic data: no published rows
    rows = _md_rows(table.to_markdown())
    assert len(rows) == 11
    headers = [c.markdown for c in table.columns]
    acc, ops = headers.index("Accuracy (%)"), headers.index("OPs (G)")
    for row, (_, values) in zip(rows, table.frame.iterrows(), strict=True):
        expected = f"{values['accuracy']:.2f}"
        if not np.isnan(values["accuracy_std"]):
            expected += f" ± {values['accuracy_std']:.2f}"
        assert row[acc] == expected
        assert row[ops] == f"{values['ops_g']:.3f}"
    for _, group in grouped.iterrows():
        match = table.frame[table.frame["run_ids"] == group["run_ids"]]
        assert match["accuracy"].iloc[0] == pytest.approx(group["test_accuracy"] * 100)
    assert "synthetic" in table.to_markdown().lower()
    assert "study `demo`" in table.to_markdown() and GIT_COMMIT in table.to_markdown()


def test_results_table_marks_best_and_second(frame):
    table = tables.results_table(frame)
    marks = table.marks()
    by_key = {
        (
            table.frame.iloc[i]["model"],
            table.frame.iloc[i]["features"],
            table.frame.iloc[i]["backbone"],
        ): m
        for (i, key), m in marks.items()
        if key == "accuracy"
    }
    assert by_key == {
        ("ResNet-50", "RGB", "trainable"): "best",
        ("BNext-S", "RGB+FFT+LBP", "trainable"): "second",
    }
    markdown = table.to_markdown()
    assert "**95.00**" in markdown and "_94.00_" in markdown
    latex = table.to_latex()
    assert r"\textbf{95.00}" in latex and r"\underline{94.00}" in latex
    ops_best = [
        table.frame.iloc[i]["features"]
        for (i, key), m in marks.items()
        if key == "ops_g" and m == "best"
    ]
    assert ops_best == ["RGB"]  # BNext-T with RGB only is cheapest; OPs are marked lower-is-better


def test_results_table_latex_is_booktabs_one_row_per_cell(frame):
    table = tables.results_table(frame)
    latex = table.to_latex()
    lines = latex.splitlines()
    assert lines.count(r"\toprule") == 1 and lines.count(r"\bottomrule") == 1
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    data_rows = [line for line in body if line.endswith(r"\\")]
    assert len(data_rows) == len(table.frame) == 11
    assert all(line.count("&") == len(table.columns) - 1 for line in data_rows)
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert "% study: demo" in latex and "% git commit: " + GIT_COMMIT in latex
    assert r"\pm" in latex and "±" not in latex
    assert "% runs: 13 finished" in latex


def test_results_table_csv_carries_provenance(frame, tmp_path):
    paths = tables.results_table(frame).save(tmp_path, "results")
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 11
    assert set(csv["study"]) == {"demo"} and set(csv["git_commit"]) == {GIT_COMMIT}
    assert sorted(i for ids in csv["run_ids"] for i in ids.split(",")) == sorted(frame["run_id"])
    assert {"accuracy", "accuracy_std", "accuracy_ci_low", "auc", "params_m", "ops_g", "n"} <= set(
        csv.columns
    )
    assert paths["md"].read_text().startswith("**Results on")
    assert paths["tex"].read_text().count(r"\toprule") == 1


def test_results_table_with_published_block(study_records):
    coco = study_records["coco"]
    uri = coco.tracking_uri
    table = tables.results_table(runs.load_runs("coco", uri))
    assert len(table.frame) == 12 + 2
    assert list(table.frame["block"]).count("ours") == 2
    published = table.frame[table.frame["block"] != "ours"]
    assert published["source"].str.contains("Lanzino et al., CVPRW 2024").all()
    assert published["method"].iloc[0].startswith("Amoroso et al. 2023 [2]")
    marks = table.marks()
    best = [
        table.frame.iloc[i]["model"]
        for (i, k), m in marks.items()
        if k == "accuracy" and m == "best"
    ]
    assert best == ["OpenCLIP-ViT-B/32"]  # 99.68 published, as in the paper
    latex = table.to_latex()
    assert latex.count(r"\midrule") == 3  # header, reference | published BNext, published | ours
    assert "not re-run" in table.to_markdown()
    no_lit = tables.results_table(runs.load_runs("coco", uri), literature=False)
    assert len(no_lit.frame) == 2


def test_results_table_requires_metrics(frame):
    with pytest.raises(KeyError, match="test_nonexistent|results_table needs"):
        tables.results_table(frame.drop(columns=["test_auc"]))


def test_ablation_table(frame):
    table = ablation.ablation_table(frame)
    ours = table.frame[table.frame["block"] == "ours"]
    tiny = ours[ours["setting"].str.startswith("BNext-T, trainable")]
    assert list(tiny["features"]) == [
        "RGB (baseline)",
        "+Mag.",
        "+FFT",
        "+LBP",
        "+Mag.+FFT",
        "+Mag.+LBP",
        "+FFT+LBP",
        "+Mag.+FFT+LBP",
    ]
    values = dict(zip(tiny["feature_set"], tiny["value"], strict=True))
    assert values["rgb"] == pytest.approx(90.5)
    deltas = dict(zip(tiny["feature_set"], tiny["delta"], strict=True))
    assert np.isnan(deltas["rgb"]) and deltas["rgb+fft+lbp"] == pytest.approx(2.0)
    assert deltas["rgb+sobel"] == pytest.approx(-5.5)
    fft_lbp = tiny[tiny["feature_set"] == "rgb+fft+lbp"].iloc[0]
    assert fft_lbp["n"] == 2 and fft_lbp["delta_ci_low"] <= 2.0 <= fft_lbp["delta_ci_high"]
    assert set(ours["setting"]) == {
        "BNext-T, trainable, synthetic benchmark"
    }  # one-feature settings left out
    assert ablation.has_feature_ablation(frame)
    assert not ablation.has_feature_ablation(frame[frame["backbone"] == "resnet50"])
    marks = table.marks()
    tiny_marks = {
        tiny.loc[i, "feature_set"]: m
        for (i, k), m in marks.items()
        if k == "value" and i in tiny.index
    }
    assert tiny_marks == {"rgb+fft+lbp": "best", "rgb": "second"}  # as in the paper's Table 4
    markdown = table.to_markdown()
    assert "**92.50 ± 0.71**" in markdown and "_90.50 ± 0.71_" in markdown
    assert "+2.00" in markdown and "Δ vs RGB (pp)" in markdown
    lines = table.to_latex().splitlines()
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len([line for line in body if line.endswith(r"\\")]) == len(table.frame)


def test_ablation_table_with_published_rows(frame):
    table = ablation.ablation_table(frame, literature=True)
    published = table.frame[table.frame["block"] == "published"]
    assert list(published["value"]) == [90.35, 82.36, 88.18, 88.42, 81.20, 81.67, 91.60, 81.56]
    assert published["delta"].iloc[6] == pytest.approx(1.25)
    marks = table.marks()
    assert {
        published.loc[i, "feature_set"]: m
        for (i, k), m in marks.items()
        if k == "value" and i in published.index
    } == {"rgb+fft+lbp": "best", "rgb": "second"}


def test_latex_escapes_text():
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


# --- plots ------------------------------------------------------------------------------------


def _assert_image(path: Path, min_size=(600, 400)) -> None:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[1] >= min_size[0] and image.shape[0] >= min_size[1]
    assert image.std() > 10  # not blank


@pytest.mark.integration
def test_figure1_files(frame, tmp_path):
    fig = fronts.figure1(frame)
    paths = save_figure(fig, tmp_path, "figure1")
    assert set(paths) == {"png", "pdf", "svg"}
    _assert_image(paths["png"])
    assert paths["pdf"].read_bytes().startswith(b"%PDF")
    svg = paths["svg"].read_text()
    assert "<svg" in svg and "study demo" in svg  # provenance footer
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "OPs" in ax.get_xlabel() and "accuracy" in ax.get_ylabel().lower()


def test_figure1_literature_points(frame, tmp_path):
    fig = fronts.figure1(frame, literature="cocofake")
    labels = [
        t.get_text()
        for legend in fig.legends + [fig.axes[0].get_legend()]
        if legend
        for t in legend.get_texts()
    ]
    assert any("published" in label for label in labels)
    with pytest.raises(KeyError, match="test_nonexistent"):
        fronts.figure1(frame, quality="test_nonexistent")


@pytest.mark.integration
def test_learning_curves_and_roc(record, frame, tmp_path):
    history = runs.load_epoch_history(frame["run_id"], record.tracking_uri)
    fig = plots.learning_curves(history, frame)
    _assert_image(save_figure(fig, tmp_path, "curves", formats=("png",))["png"])
    grouped = replicates.group_replicates(frame)
    front = grouped[pareto.pareto_front(grouped)]
    rocs = {
        run_label(row): runs.load_roc(row["run_ids"].split(",")[0], record.tracking_uri)
        for _, row in front.iterrows()
    }
    fig = plots.roc_curves(rocs, provenance=Provenance.from_runs(frame))
    _assert_image(save_figure(fig, tmp_path, "roc", formats=("png",))["png"])
