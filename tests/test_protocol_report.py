"""The evaluation protocol in the report (issue 12): cross-dataset, per-source, robustness,
calibration and the ablation's significance.

End to end: a tiny real study (the runner; BNext-micro on the synthetic benchmark, 1 epoch, RGB and
RGB+FFT) with an extra test set and perturbations, and the same study without them, rendered by
``python -m reports render``. Unit tests: the shaping and the significance marks on hand-made runs
(several seeds, known predictions), where the outcome is known in advance.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import ablation, paired, protocol_frames, protocol_plots, protocol_tables, runs
from analysis.figstyle import save_figure
from analysis.table_format import Table

PROTOCOL_STUDY = "protocol"
PLAIN_STUDY = "plain"
STUDY = """\
name: {name}
dataset: synthetic
data_params: {{count: 200, image_size: 20, difficulty: 0.0, generators: [tconv4_x2, tconv3_x4, tconv4_x4]}}
tracking_uri: {tracking_uri}
storage: {storage}
runs_dir: {root}/runs
log_checkpoint: false
defaults: {{backbone: bnext_micro, resolution: 16, epochs: 1, batch_size: 16}}
grid:
  features: [rgb, rgb+fft]
"""
PROTOCOL = """\
evaluate:
  - {name: heldout, dataset: synthetic, data_params: {count: 200, image_size: 20, difficulty: 0.0, generators: [nearest_x2]}}
robustness:
  - {kind: jpeg, levels: [75, 50]}
  - {kind: blur, levels: [1]}
  - {kind: resize, levels: [0.5]}
  - {kind: chain, name: social, steps: [{kind: resize, level: 0.5}, {kind: jpeg, level: 75}]}
"""
FIGURES = ("cross_dataset_auc", "robustness_curves", "reliability")
TABLES = ("cross_dataset", "per_source", "per_source_heldout", "robustness", "calibration")
KEYS = ["jpeg_75", "jpeg_50", "blur_1", "resize_0p5", "chain_social"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, str]:
    """Both studies trained and evaluated by the runner into one SQLite store; their tracking URI."""
    from studies.__main__ import main

    root = tmp_path_factory.mktemp("protocol-study")
    uri, storage = f"sqlite:///{root}/mlflow.db", f"sqlite:///{root}/optuna.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("BNN_CACHE_DIR", str(root / "cache"))
        for name, extra in ((PROTOCOL_STUDY, PROTOCOL), (PLAIN_STUDY, "")):
            path = root / f"{name}.yaml"
            path.write_text(
                STUDY.format(name=name, tracking_uri=uri, storage=storage, root=root) + extra
            )
            assert main(["run", str(path), "--quiet"]) == 0
    return {"uri": uri, "root": str(root)}


@pytest.fixture(scope="module")
def rendered(studies, tmp_path_factory):
    """``python -m reports render protocol`` (the CLI in this process; the notebook in a kernel)."""
    from reports.__main__ import main

    out = tmp_path_factory.mktemp("protocol-report")
    args = ["render", PROTOCOL_STUDY, "--tracking-uri", studies["uri"], "--out", str(out)]
    assert main([*args, "--no-log"]) == 0
    return out


def _read_md_header(path) -> list[str]:
    line = next(row for row in path.read_text().splitlines() if row.startswith("| "))
    return [cell.strip() for cell in line.strip("|").split("|")]


# --- the names ------------------------------------------------------------------------------------


def test_names_are_bnn_protocols():
    """The metrics analysis.protocol_frames reads (with bnn.protocol's prefixes) are those bnn logs."""
    from bnn import protocol as bnn_protocol
    from bnn.metrics import per_source_metrics

    assert {"accuracy", "auc", "ece", "count"} <= set(bnn_protocol.EVAL_METRICS)
    assert {"accuracy", "auc"} <= set(bnn_protocol.ROBUST_METRICS)
    names = per_source_metrics([0, 1], [0.2, 0.8], ["Real", "GAN 1"])
    assert set(names) == {
        "source_real_accuracy",
        "source_real_count",
        "source_gan_1_accuracy",
        "source_gan_1_count",
        "source_gan_1_auc",
    }


# --- the real study ---------------------------------------------------------------------------


@pytest.mark.slow  # the studies: about 20 s on 2 cores; the render (below): about 35 s
@pytest.mark.integration
def test_real_record_is_read(studies):
    frame = runs.load_runs(PROTOCOL_STUDY, studies["uri"])
    assert protocol_frames.extra_test_sets(frame) == ["heldout"]
    assert protocol_frames.evaluated_sets(frame) == [protocol_frames.OWN_TEST, "heldout"]
    own = dict(protocol_frames.sources(frame))
    assert own["real"] is False and {"tconv4_x2", "tconv3_x4", "tconv4_x4"} <= set(own)
    assert all(own[s] for s in ("tconv4_x2", "tconv3_x4", "tconv4_x4"))
    assert protocol_frames.sources(frame, "heldout") == [("real", False), ("nearest_x2", True)]
    keys = protocol_frames.robustness_keys(frame)
    assert [k.key for k in keys] == KEYS
    assert [k.severity for k in keys][:4] == [25.0, 50.0, 1.0, 2.0]
    assert math.isnan(keys[-1].severity) and keys[-1].kind == "chain"
    predictions = runs.load_all_predictions(frame["run_id"], studies["uri"])
    assert set(predictions) == set(frame["run_id"])
    for run_id, table in predictions.items():
        assert list(table.columns) == ["path", "label", "prob_fake", "source"]
        count = frame.loc[frame["run_id"] == run_id, "test_count"].iloc[0]
        assert len(table) == count

    plain = runs.load_runs(PLAIN_STUDY, studies["uri"])
    assert protocol_frames.extra_test_sets(plain) == [] and protocol_frames.robustness_keys(plain) == []
    assert not protocol_tables.has_cross_dataset(plain) and not protocol_tables.has_robustness(plain)
    assert protocol_frames.sources(plain) and protocol_frames.has_calibration(plain)  # every cell has these


@pytest.mark.slow
@pytest.mark.integration
def test_render_writes_the_protocol_files(rendered):
    names = {p.name for p in rendered.iterdir()}
    expected = {f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "pdf", "svg")}
    expected |= {f"{stem}.{ext}" for stem in TABLES for ext in ("md", "tex", "csv")}
    assert expected <= names, sorted(expected - names)
    for stem in FIGURES:
        pixels = np.asarray(Image.open(rendered / f"{stem}.png").convert("L"), dtype=float)
        assert pixels.shape[0] >= 500 and pixels.shape[1] >= 800, stem
        assert pixels.std() > 0, stem  # not blank
        assert (rendered / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        assert f"study {PROTOCOL_STUDY}" in (rendered / f"{stem}.svg").read_text()  # footer
    html = (rendered / "report.html").read_text()
    for heading in (
        "Cross-dataset evaluation",
        "Per-source results",
        "Robustness to perturbations",
        "Calibration",
    ):
        assert heading in html
    assert html.count("data:image/png;base64") >= 6


@pytest.mark.slow
def test_render_figures_say_what_they_show(rendered):
    heatmap = (rendered / "cross_dataset_auc.svg").read_text()
    assert "own test" in heatmap and "heldout" in heatmap and "AUC (%)" in heatmap
    curves = (rendered / "robustness_curves.svg").read_text()
    for text in ("clean", "q75", "q50", "σ1", "×0.5", "social", "JPEG", "chains", "RGB+FFT"):
        assert text in curves, text
    reliability = (rendered / "reliability.svg").read_text()
    assert "ECE" in reliability and "perfectly calibrated" in reliability


@pytest.mark.slow
def test_render_tables(rendered, studies):
    frame = runs.load_runs(PROTOCOL_STUDY, studies["uri"]).set_index("features")
    for stem in TABLES + ("ablation",):
        md, tex = (rendered / f"{stem}.md").read_text(), (rendered / f"{stem}.tex").read_text()
        assert f"study: {PROTOCOL_STUDY} (parent run" in md and "<!-- provenance" in md, stem
        assert tex.startswith(f"% study: {PROTOCOL_STUDY}") and tex.count(r"\toprule") == 1, stem
        csv = pd.read_csv(rendered / f"{stem}.csv")
        assert (csv["study"] == PROTOCOL_STUDY).all() and csv["git_commit"].notna().all(), stem

    cross = pd.read_csv(rendered / "cross_dataset.csv").set_index("features")
    assert {"accuracy_test", "auc_test", "accuracy_heldout", "auc_heldout", "count_heldout"} <= set(
        cross.columns
    )
    assert cross.loc["RGB+FFT", "auc_heldout"] == pytest.approx(
        frame.loc["rgb+fft", "eval_heldout_auc"] * 100
    )
    assert cross.loc["RGB", "auc_test"] == pytest.approx(frame.loc["rgb", "test_auc"] * 100)
    assert _read_md_header(rendered / "cross_dataset.md")[:5] == [
        "Model",
        "Backbone",
        "Features",
        "Own test Acc. (%)",
        "Own test AUC (%)",
    ]

    header = _read_md_header(rendered / "per_source.md")
    assert "real Acc. (%)" in header and "tconv4_x4 AUC (%)" in header
    assert "real AUC (%)" not in header  # no AUC of the reals alone
    assert "nearest_x2 AUC (%)" in _read_md_header(rendered / "per_source_heldout.md")

    assert _read_md_header(rendered / "robustness.md")[3:] == [
        "Clean",
        "JPEG q75",
        "JPEG q50",
        "blur σ1",
        "resize ×0.5",
        "chain social",
    ]
    assert r"blur $\sigma$1" in (rendered / "robustness.tex").read_text()
    robust = pd.read_csv(rendered / "robustness.csv").set_index("features")
    assert robust.loc["RGB", "auc_clean"] == pytest.approx(frame.loc["rgb", "test_auc"] * 100)
    assert robust.loc["RGB", "auc_jpeg_50"] == pytest.approx(
        frame.loc["rgb", "robust_jpeg_50_auc"] * 100
    )

    header = _read_md_header(rendered / "calibration.md")
    for column in ("ECE (%)", "Brier", "Acc. @0.5 (%)", "Acc. @val. thr. (%)", "TPR @FPR 1% (%)"):
        assert column in header
    assert "TPR @FPR 0.1% (%)" in header
    calibration = pd.read_csv(rendered / "calibration.csv").set_index("features")
    assert calibration.loc["RGB", "ece"] == pytest.approx(frame.loc["rgb", "test_ece"] * 100)

    ablation = pd.read_csv(rendered / "ablation.csv").set_index("feature_set")
    row = ablation.loc["rgb+fft"]
    assert row["paired_images"] == frame.loc["rgb+fft", "test_count"]
    for column in ("p_mcnemar", "p_mcnemar_holm", "p_auc", "p_auc_holm"):
        assert 0.0 <= row[column] <= 1.0, column
    assert np.isnan(ablation.loc["rgb", "p_mcnemar"])  # the baseline is not compared
    md = (rendered / "ablation.md").read_text()
    assert "95% CI (images)" in md and "McNemar" in md and "Holm" in md
    assert row["value_image_ci_low"] == pytest.approx(
        frame.loc["rgb+fft", "test_accuracy_ci_low"] * 100
    )


# --- hand-made runs ---------------------------------------------------------------------------


def _frame(cells: list[tuple[str, int, dict]]) -> pd.DataFrame:
    """Runs as ``load_runs`` returns them: ``(features, seed, metrics)`` per run of BNext-T."""
    rows = []
    for i, (features, seed, metrics) in enumerate(cells):
        rows.append(
            {
                "run_id": f"run{i}",
                "model": "BNext-T",
                "family": "BNext",
                "synthetic": True,
                "data": "synthetic benchmark",
                "git_commit": "0" * 40,
                "backbone": "bnext_tiny",
                "features": features,
                "freeze_backbone": False,
                "dataset": "synthetic",
                "seed": seed,
                **metrics,
            }
        )
    frame = pd.DataFrame(rows)
    params = ["backbone", "features", "freeze_backbone", "dataset", "seed"]
    frame.attrs.update(
        study="hand",
        params=params,
        metrics=[
            c
            for c in frame.columns
            if c not in params and c.startswith(("val_", "test_", "eval_", "robust_", "source_"))
        ],
    )
    return frame


def _predictions(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/data/test/{i:04d}.png" for i in range(len(labels))],
            "label": labels,
            "prob_fake": scores,
            "source": np.where(labels == 1, "gan", "real"),
        }
    )


@pytest.mark.integration
def test_ablation_marks_significant_rows_pairing_seeds():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 150)
    weak = [np.clip(0.4 + 0.2 * labels + rng.normal(0, 0.25, labels.size), 0, 1) for _ in range(2)]
    strong = [
        np.clip(0.1 + 0.8 * labels + rng.normal(0, 0.05, labels.size), 0, 1) for _ in range(2)
    ]
    metrics = {"test_accuracy": 0.7, "test_auc": 0.8}
    frame = _frame(
        [
            ("rgb", 0, metrics),
            ("rgb", 1, metrics),
            ("rgb+fft", 0, {**metrics, "test_accuracy": 0.99}),
            ("rgb+fft", 1, {**metrics, "test_accuracy": 0.98}),
            ("rgb+lbp", 0, metrics),
            ("rgb+sobel", 0, metrics),
        ]
    )
    predictions = {
        "run0": _predictions(labels, weak[0]),
        "run1": _predictions(labels, weak[1]),
        "run2": _predictions(labels, strong[0]),
        "run3": _predictions(labels, strong[1]).iloc[::-1],  # joined by path, not by order
        "run4": _predictions(labels, weak[0]),  # the same scores as RGB seed 0: p = 1
    }  # run5 (+Mag.) has no predictions: not tested
    table = ablation.ablation_table(frame, predictions=predictions)
    rows = table.frame.set_index("feature_set")
    fft, lbp, sobel = rows.loc["rgb+fft"], rows.loc["rgb+lbp"], rows.loc["rgb+sobel"]
    assert fft["marks"] == paired.MARK_ACCURACY + paired.MARK_AUC
    assert fft["paired_seeds"] == "0,1" and fft["paired_images"] == 2 * labels.size
    assert fft["p_mcnemar"] < 1e-6 and fft["p_auc"] < 0.01
    assert lbp["marks"] == "" and lbp["p_mcnemar"] == 1.0 and lbp["p_auc"] == 1.0
    assert sobel["marks"] == "" and np.isnan(sobel["p_mcnemar"]) and sobel["paired_images"] == 0
    assert fft["p_mcnemar_holm"] >= fft["p_mcnemar"] and lbp["p_auc_holm"] == 1.0

    markdown = table.to_markdown()
    assert r"\*†" in markdown  # the marks after +FFT's Δ, escaped for Markdown
    assert "compared row(s)" in markdown and "pooled" in markdown and "Holm" in markdown
    assert r"\textsuperscript{*}\textsuperscript{\dag}" in table.to_latex()
    csv = pd.read_csv(io.StringIO(table.to_csv()))
    assert {"p_mcnemar", "p_mcnemar_holm", "p_auc", "p_auc_holm", "paired_images"} <= set(csv)


def test_ablation_without_predictions_is_unchanged():
    metrics = {"test_accuracy": 0.7, "test_auc": 0.8}
    frame = _frame([("rgb", 0, metrics), ("rgb+fft", 0, metrics)])
    plain, empty = ablation.ablation_table(frame), ablation.ablation_table(frame, predictions={})
    assert plain.to_markdown().split("<sub>")[0] == empty.to_markdown().split("<sub>")[0]
    assert "marks" not in plain.frame and "McNemar" not in plain.to_markdown()


def test_single_seed_ablation_shows_the_runs_image_intervals():
    frame = _frame(
        [
            (
                "rgb",
                0,
                {"test_accuracy": 0.7, "test_accuracy_ci_low": 0.6, "test_accuracy_ci_high": 0.8},
            ),
            (
                "rgb+fft",
                0,
                {"test_accuracy": 0.9, "test_accuracy_ci_low": 0.85, "test_accuracy_ci_high": 0.95},
            ),
        ]
    )
    table = ablation.ablation_table(frame)
    markdown = table.to_markdown()
    assert "95% CI (images)" in markdown and "[85.00, 95.00]" in markdown
    assert "bootstrap over the test images" in markdown


def _protocol_metrics(auc: float) -> dict:
    """The protocol's scalars of one run, every value derived from ``auc``."""
    return {
        "test_accuracy": auc - 0.05,
        "test_auc": auc,
        "test_count": 100,
        "test_ece": 0.1,
        "test_brier": 0.2,
        "test_accuracy_valthr": auc - 0.04,
        "test_tpr_at_fpr_1pct": auc - 0.5,
        "test_tpr_at_fpr_0p1pct": auc - 0.6,
        "val_eer_threshold": 0.5,
        "source_real_accuracy": auc - 0.1,
        "source_real_count": 50,
        "source_gan_accuracy": auc,
        "source_gan_count": 50,
        "source_gan_auc": auc,
        "eval_other_accuracy": auc - 0.2,
        "eval_other_auc": auc - 0.1,
        "eval_other_ece": 0.2,
        "eval_other_count": 40,
        "eval_other_source_sd_1_5_accuracy": auc - 0.3,
        "eval_other_source_sd_1_5_auc": auc - 0.1,
        "eval_other_source_sd_1_5_count": 20,
        "eval_other_source_real_accuracy": auc - 0.1,
        "eval_other_source_real_count": 20,
        "robust_blur_2_auc": auc - 0.2,
        "robust_blur_2_accuracy": auc - 0.25,
        "robust_blur_0p5_auc": auc - 0.05,
        "robust_blur_0p5_accuracy": auc - 0.1,
        "robust_chain_social_auc": auc - 0.3,
        "robust_chain_social_accuracy": auc - 0.35,
    }


@pytest.mark.integration
def test_protocol_tables_and_figures_with_seeds(tmp_path):
    frame = _frame(
        [
            ("rgb", 0, _protocol_metrics(0.80)),
            ("rgb", 1, _protocol_metrics(0.90)),
            ("rgb+fft", 0, _protocol_metrics(0.95)),
        ]
    )
    assert protocol_frames.extra_test_sets(frame) == ["other"]  # not "other_source_sd_1_5"
    assert protocol_frames.sources(frame, "other") == [("real", False), ("sd_1_5", True)]
    assert [k.key for k in protocol_frames.robustness_keys(frame)] == [
        "blur_0p5",
        "blur_2",
        "chain_social",
    ]

    _, long = protocol_frames.robustness(frame)
    rgb_blur = long[(long["key"] == "blur_2") & (long["metric"] == "auc") & (long["n"] == 2)]
    assert rgb_blur["value"].iloc[0] == pytest.approx(0.65)
    assert rgb_blur["std"].iloc[0] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    clean = long[(long["key"] == "clean") & (long["metric"] == "auc")]
    assert sorted(clean["severity"]) == [0.0, 0.0]
    assert sorted(clean["value"]) == pytest.approx([0.85, 0.95])

    robustness = protocol_tables.robustness_table(frame)
    assert "65.00 ± 7.07" in robustness.to_markdown() and "n" in _header(robustness)
    cross = protocol_tables.cross_dataset_table(frame)
    assert "other AUC (%)" in _header(cross) and "± 7.07" in cross.to_markdown()
    assert "sd_1_5 AUC (%)" in _header(protocol_tables.per_source_table(frame, "other"))
    assert "ECE (%)" in _header(protocol_tables.calibration_table(frame))

    labels = np.tile([0, 1], 50)
    predictions = {
        "run0": _predictions(labels, np.where(labels == 1, 0.7, 0.3)),
        "run1": _predictions(labels, np.where(labels == 1, 0.9, 0.2)),
        "run2": _predictions(labels, np.full(labels.size, 0.5)),
    }
    configurations, points = protocol_frames.reliability(frame, predictions)
    assert list(configurations["runs_used"]) == [2, 1]  # RGB's two seeds pooled
    assert points.groupby("config")["count"].sum().tolist() == [200, 100]
    for stem, figure in (
        ("heatmap", protocol_plots.cross_dataset_heatmap(frame)),
        ("curves", protocol_plots.robustness_curves(frame)),
        ("reliability", protocol_plots.reliability_diagram(frame, predictions)),
    ):
        png = save_figure(figure, tmp_path, stem, formats=("png",))["png"]
        assert np.asarray(Image.open(png).convert("L"), dtype=float).std() > 0, stem


def test_a_new_perturbation_kind_reaches_the_table_and_curves_from_its_class(tmp_path):
    """WebP is one class in ``bnn.data.perturb``: its order, tick, label, note and panel come from
    there, with nothing about it in ``analysis``."""
    extra = {"robust_webp_50_auc": 0.7, "robust_webp_90_auc": 0.8, "robust_jpeg_75_auc": 0.75,
             "robust_webp_50_accuracy": 0.6, "robust_webp_90_accuracy": 0.7, "robust_jpeg_75_accuracy": 0.65}
    frame = _frame([("rgb", 0, {**_protocol_metrics(0.8), **extra}), ("rgb+fft", 0, {**_protocol_metrics(0.9), **extra})])
    keys = protocol_frames.robustness_keys(frame)
    assert [k.key for k in keys] == ["jpeg_75", "webp_90", "webp_50", "blur_0p5", "blur_2", "chain_social"]
    assert [(k.kind, k.level, k.severity, k.tick(), k.label()) for k in keys[1:3]] == [
        ("webp", 90.0, 10.0, "q90", "WebP q90"), ("webp", 50.0, 50.0, "q50", "WebP q50")]
    table = protocol_tables.robustness_table(frame)
    assert "WebP q50" in _header(table) and "WebP qN: each test image re-encoded" in table.to_markdown()
    figure = protocol_plots.robustness_curves(frame)
    assert "WebP" in [ax.get_title() for ax in figure.axes]
    assert "severity: 100 − WebP quality" in [ax.get_xlabel() for ax in figure.axes]


def _header(table: Table) -> list[str]:
    return [c.markdown for c in table.columns]


def test_no_protocol_data_no_protocol_tables():
    frame = _frame([("rgb", 0, {"test_accuracy": 0.7, "test_auc": 0.8})])
    assert not protocol_tables.has_cross_dataset(frame) and not protocol_tables.has_robustness(frame)
    assert protocol_frames.sources(frame) == [] and not protocol_frames.has_calibration(frame)
    with pytest.raises(ValueError, match="no extra test set"):
        protocol_tables.cross_dataset_table(frame)
    with pytest.raises(ValueError, match="robust_"):
        protocol_plots.robustness_curves(frame)
    with pytest.raises(ValueError, match="no run has test predictions"):
        protocol_plots.reliability_diagram(frame, {})
