"""Measured latency and several objectives in the report (analysis.latency_frames, analysis.objectives,
analysis.fronts, the latency columns of analysis.tables) on hand-made runs.

The frames are shaped as ``analysis.runs.load_runs`` returns them (``attrs`` with params, metrics,
objectives); the real record (an MLflow store) goes through ``python -m reports render`` in
test_reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import ablation, fronts, latency_frames, objectives, pareto, tables
from analysis.figstyle import save_figure
from analysis.table_format import DASH
from reports.__main__ import main

A, B = ("CPU A", "2"), ("CPU B", "8")
PARAMS = ["backbone", "features", "freeze_backbone", "seed"]


def _runs(rows: list[tuple], objectives_: list | None = None) -> pd.DataFrame:
    """Runs from ``(backbone, features, frozen, seed, accuracy, latency ms or None, host or None,
    skipped reason or None)``; throughput = 1000 / latency, network = latency - 0.5."""
    records = []
    for i, (backbone, features, frozen, seed, accuracy, ms, host, skipped) in enumerate(rows):
        records.append(
            {
                "run_id": f"r{i}",
                "cell_id": f"c{i}",
                "model": {"bnext_tiny": "BNext-T", "bnext_small": "BNext-S"}.get(
                    backbone, backbone
                ),
                "family": "BNext" if backbone.startswith("bnext") else "ResNet",
                "synthetic": True,
                "git_commit": "0" * 40,
                "latency_host": host[0] if host else None,
                "latency_threads": host[1] if host else None,
                "latency_engine": "openvino 2026.0.0 binary" if host else None,
                "latency_skipped": skipped,
                "backbone": backbone,
                "features": features,
                "freeze_backbone": frozen,
                "seed": seed,
                "dataset": "synthetic",
                "test_accuracy": accuracy,
                "test_auc": (1 + accuracy) / 2,
                "params": 30e6 if backbone == "bnext_tiny" else 67e6,
                "ops": 1e8 * (1 + len(features.split("+"))),
                "latency_ms": np.nan if ms is None else ms,
                "latency_network_ms": np.nan if ms is None else ms - 0.5,
                "throughput_ips": np.nan if ms is None else 1000 / ms,
            }
        )
    frame = pd.DataFrame(records)
    frame.attrs.update(
        study="timed",
        params=[*PARAMS, "dataset"],
        metrics=["test_accuracy", "test_auc", "params", "ops", *latency_frames.METRICS[:3]],
        objectives=objectives_ or [],
    )
    return frame


ONE_HOST = [
    ("bnext_tiny", "rgb", False, 0, 0.90, 2.0, A, None),
    ("bnext_tiny", "rgb", False, 1, 0.92, 2.2, A, None),
    ("bnext_tiny", "rgb+fft", False, 0, 0.93, 3.0, A, None),
    ("bnext_tiny", "rgb+lbp", False, 0, 0.89, 3.0, A, None),  # slower and worse than rgb
    ("bnext_small", "rgb+fft", False, 0, 0.95, 5.0, A, None),
    ("bnext_small", "rgb", False, 0, 0.97, None, None, "no exported engine (test)"),
    ("bnext_tiny", "rgb+sobel", False, 0, 0.99, None, None, None),  # recorded before latency
]


# --- n-dimensional Pareto set -----------------------------------------------------------------


def test_nondominated_mixed_directions_ties_and_nan():
    # objectives: accuracy (max), latency (min), params (min)
    values = np.array(
        [
            [0.90, 2.0, 30.0],  # a: fastest
            [0.90, 2.0, 30.0],  # b: identical to a -> both kept
            [0.95, 5.0, 30.0],  # c: most accurate among finite
            [0.95, 5.0, 31.0],  # d: ties c on two, worse on params -> dominated by c
            [0.89, 3.0, 10.0],  # e: smallest -> kept (best on params)
            [0.89, 3.0, 11.0],  # f: dominated by e
            [0.99, np.nan, 1.0],  # g: NaN -> never in the set, dominates nothing
            [0.90, 2.5, 30.0],  # h: ties a on accuracy and params, slower -> dominated
        ]
    )
    mask = pareto.nondominated(values, [True, False, False])
    assert mask.tolist() == [True, True, True, False, True, False, False, False]
    # every direction reversed: d beats c (more params), f beats e, h beats a and b (slower)
    flipped = pareto.nondominated(values, [False, True, True])
    assert flipped.tolist() == [False, False, False, True, False, True, False, True]
    assert pareto.nondominated(np.empty((0, 3)), [True, True, True]).tolist() == []
    with pytest.raises(ValueError, match="2 objective"):
        pareto.nondominated(values, [True, False])


def test_pareto_set_on_frames_and_the_2d_api_agree():
    frame = pd.DataFrame(
        {
            "test_auc": [0.9, 0.95, 0.95, 0.8, np.nan],
            "latency_ms": [2.0, 4.0, 4.0, 1.0, 0.5],
            "test_eer": [0.10, 0.05, 0.06, 0.2, 0.0],
        },
        index=list("vwxyz"),
    )
    three = pareto.pareto_set(
        frame,
        [
            {"metric": "test_auc", "direction": "maximize"},
            {"metric": "latency_ms", "direction": "minimize"},
            ("test_eer", "minimize"),
        ],
    )
    assert three[three].index.tolist() == ["v", "w", "y"]  # x: ties w, worse EER; z: NaN
    two = pareto.pareto_set(frame, [("latency_ms", "minimize"), ("test_auc", "maximize")])
    assert two.equals(pareto.pareto_front(frame, "latency_ms", "test_auc"))
    assert two[two].index.tolist() == ["v", "w", "x", "y"]  # w and x identical on both: kept
    with pytest.raises(ValueError, match="direction 'up'"):
        pareto.pareto_set(frame, [("test_auc", "up")])
    with pytest.raises(KeyError, match="nope"):
        pareto.pareto_set(frame, [("nope", "maximize")])


def test_staircase_follows_the_x_direction():
    frame = pd.DataFrame({"x": [3.0, 1.0, 2.0], "y": [3.0, 1.0, 2.0]})
    mask = pd.Series(True, index=frame.index)
    points, where = pareto.staircase(frame, "x", "y", mask)
    assert points["x"].tolist() == [1.0, 2.0, 3.0] and where == "post"
    assert pareto.staircase(frame, "x", "y", mask, maximize_x=True)[1] == "pre"


# --- latency: hosts, grouping, wording --------------------------------------------------------


def test_group_by_host_keeps_hosts_apart_and_gives_the_std_over_seeds():
    runs = _runs(
        [
            ("bnext_tiny", "rgb", False, 0, 0.90, 2.0, A, None),
            ("bnext_tiny", "rgb", False, 1, 0.92, 2.2, A, None),
            ("bnext_tiny", "rgb", False, 2, 0.91, 1.0, B, None),
        ]
    )
    grouped = latency_frames.group_by_host(runs)
    assert grouped["host"].tolist() == ["CPU A, 2 threads", "CPU B, 8 threads"]
    assert grouped["n"].tolist() == [2, 1]
    assert grouped["latency_ms"].tolist() == pytest.approx([2.1, 1.0])
    assert grouped["latency_ms_std"].iloc[0] == pytest.approx(np.std([2.0, 2.2], ddof=1))
    assert np.isnan(grouped["latency_ms_std"].iloc[1])
    assert latency_frames.hosts(runs) == ["CPU A, 2 threads", "CPU B, 8 threads"]
    text = latency_frames.describe(runs)
    assert text.startswith("Latency measured on 2 hosts; compare within a host")


def test_describe_old_and_skipped_runs():
    runs = _runs(ONE_HOST)
    assert latency_frames.describe(runs) == (
        "Latency measured on one host: CPU A, 2 threads (openvino 2026.0.0 binary). "
        "Latency was not measured for 2 of 7 runs: no exported engine (test) (1 run); "
        f"{latency_frames.NOT_RECORDED} (1 run)."
    )
    old = runs.drop(columns=[c for c in runs if c.startswith(("latency", "throughput"))])
    assert not latency_frames.has_latency(old) and latency_frames.hosts(old) == []
    assert latency_frames.describe(old) == f"Latency was not measured: {latency_frames.NOT_RECORDED} (7 runs)."


# --- Figure 1's latency twin ------------------------------------------------------------------


def _front_lines(fig) -> list:
    return [line for line in fig.axes[0].get_lines() if line.get_drawstyle().startswith("steps")]


def _legend(fig) -> dict[str, object]:
    return {
        t.get_text(): h
        for legend in fig.legends
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


@pytest.mark.integration
def test_figure1_latency_one_host(tmp_path):
    fig = fronts.figure1_latency(_runs(ONE_HOST))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "latency" in ax.get_xlabel()
    (line,) = _front_lines(fig)
    # rgb (2.1 ms, 91%), rgb+fft (3 ms, 93%), BNext-S (5 ms, 95%); rgb+lbp dominated;
    # the two runs without latency are not drawn at all.
    assert line.get_xdata().tolist() == pytest.approx([2.1, 3.0, 5.0])
    assert line.get_ydata().tolist() == pytest.approx([91.0, 93.0, 95.0])
    assert line.get_drawstyle() == "steps-post"
    labels = _legend(fig)
    assert "Pareto front" in labels and not any(k.startswith("host") for k in labels)
    footer = " ".join(t.get_text() for t in fig.texts)
    assert "Latency measured on one host: CPU A, 2 threads" in footer
    assert "Published points" in footer and "left out" in footer
    paths = save_figure(fig, tmp_path, "figure1_latency")
    assert paths["png"].stat().st_size > 10_000 and "<svg" in paths["svg"].read_text()


def test_figure1_latency_two_hosts_are_marked_apart():
    rows = [*ONE_HOST[:5], ("bnext_tiny", "rgb", False, 2, 0.95, 9.0, B, None)]
    fig = fronts.figure1_latency(_runs(rows))
    labels = _legend(fig)
    host_entries = {k: h for k, h in labels.items() if k.startswith("host ")}
    assert list(host_entries) == ["host 1: CPU A, 2 threads", "host 2: CPU B, 8 threads"]
    assert [h.get_fillstyle() for h in host_entries.values()] == ["full", "none"]
    assert {"Pareto front, host 1", "Pareto front, host 2"} <= set(labels)
    fronts_ = _front_lines(fig)
    assert len(fronts_) == 1  # host 2 has one point: a front of one point, no line drawn
    assert 9.0 not in fronts_[0].get_xdata().tolist()  # host B is not on host A's front
    hollow = [
        line
        for line in fig.axes[0].get_lines()
        if line.get_fillstyle() == "none" and line.get_linestyle() == "None"
    ]
    assert [line.get_xdata()[0] for line in hollow] == [9.0]  # host B's point, hollow
    footer = " ".join(t.get_text() for t in fig.texts)
    assert "Latency measured on 2 hosts; compare within a host" in footer


def test_figure1_latency_without_latency_says_why():
    old = _runs(ONE_HOST).drop(columns=["latency_ms"])
    with pytest.raises(KeyError, match="latency_ms"):
        fronts.figure1_latency(old)
    none = _runs([r[:5] + (None, None, "engine missing") for r in ONE_HOST])
    with pytest.raises(ValueError, match="engine missing"):
        fronts.figure1_latency(none)
    fig = fronts.figure1(_runs(ONE_HOST), cost="latency_ms")  # figure1 hands latency to its twin
    assert "latency" in fig.axes[0].get_xlabel()


# --- tables -----------------------------------------------------------------------------------


def _md_row(markdown: str, features: str) -> dict[str, str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip().strip("*").strip("_") for c in line.strip("|").split(" | ")]
        row = dict(zip(header, cells, strict=True))
        if row.get("Features") == features and row.get("Model", "BNext-T") == "BNext-T":
            return row
    raise AssertionError(f"no row {features}")


def test_results_table_latency_columns_one_host():
    table = tables.results_table(_runs(ONE_HOST))
    headers = [c.markdown for c in table.columns]
    ops = headers.index("OPs (G)")
    assert headers[ops + 2 : ops + 4] == ["Latency (ms)", "Throughput (img/s)"]
    markdown = table.to_markdown()
    rgb = _md_row(markdown, "RGB")
    assert rgb["Latency (ms)"] == f"2.10 ± {np.std([2.0, 2.2], ddof=1):.2f}"
    spread = np.std([1000 / 2.0, 1000 / 2.2], ddof=1)
    assert rgb["Throughput (img/s)"] == f"{(1000 / 2.0 + 1000 / 2.2) / 2:.1f} ± {spread:.1f}"
    old = _md_row(markdown, "RGB+Mag.")
    assert old["Latency (ms)"] == DASH and old["Throughput (img/s)"] == DASH
    assert "measured on CPU A, 2 threads" in table.caption
    assert any("recorded before latency measurement" in n for n in table.notes)
    marks = table.marks()
    best = [
        table.frame.iloc[i]["features"]
        for (i, k), m in marks.items()
        if k == "latency_ms" and m == "best"
    ]
    assert best == ["RGB"]
    csv = table.to_csv()
    assert "latency_ms_std" in csv and "latency_host" in csv


def test_results_table_two_hosts_and_old_runs():
    rows = [*ONE_HOST[:5], ("bnext_tiny", "rgb", True, 0, 0.80, 9.0, B, None)]
    table = tables.results_tables(_runs(rows))["synthetic"]  # as the report calls it
    assert "measured on 2 hosts: compare within a host" in table.caption
    assert not [k for (_, k) in table.marks() if k in ("latency_ms", "throughput_ips")]
    assert set(table.frame["latency_host"].dropna()) == {"CPU A, 2 threads", "CPU B, 8 threads"}
    old = _runs(ONE_HOST).drop(
        columns=[c for c in _runs(ONE_HOST) if c.startswith(("latency", "throughput"))]
    )
    old_table = tables.results_table(old)
    assert "Latency (ms)" in [c.markdown for c in old_table.columns]
    assert set(old_table.frame["latency_ms"].isna()) == {True}
    assert _md_row(old_table.to_markdown(), "RGB")["Latency (ms)"] == DASH
    assert "measured on" not in old_table.caption
    assert any("Latency was not measured" in n for n in old_table.notes)


def test_ablation_table_latency_only_when_measured():
    table = ablation.ablation_table(_runs(ONE_HOST))
    headers = [c.markdown for c in table.columns]
    assert "Latency (ms)" in headers and headers[-1] == "n"
    fft = table.frame[table.frame["feature_set"] == "rgb+fft"].iloc[0]
    assert fft["latency_ms"] == 3.0
    old = _runs(ONE_HOST).drop(columns=["latency_ms", "throughput_ips"])
    assert "Latency (ms)" not in [c.markdown for c in ablation.ablation_table(old).columns]


# --- objectives -------------------------------------------------------------------------------


OBJECTIVES = [
    {"metric": "test_accuracy", "direction": "maximize"},
    {"metric": "latency_ms", "direction": "minimize"},
    {"metric": "params", "direction": "minimize"},
]


def test_pareto_set_table_three_objectives():
    runs = _runs(ONE_HOST, OBJECTIVES)
    assert objectives.has_objectives(runs)
    assert objectives.front_pair(runs) == ["test_accuracy", "latency_ms"]
    table = objectives.pareto_set_table(runs)
    shown = table.frame["configuration"].tolist()
    # rgb+lbp is slower and worse than rgb at equal params; the two without latency are left out
    assert shown == ["BNext-S RGB+FFT", "BNext-T RGB+FFT", "BNext-T RGB"]  # best accuracy first
    headers = [c.markdown for c in table.columns]
    assert headers[1:4] == ["↑ test_accuracy (%)", "↓ latency_ms (ms)", "↓ params (M)"]
    assert "Host" in headers
    markdown = table.to_markdown()
    assert "91.00 ± 1.41" in markdown and "2.10 ± 0.14" in markdown
    assert any("2 configuration(s) lack" in n for n in table.notes)
    assert "3 objectives" in table.caption


def test_front_pair_and_objectives_figure():
    runs = _runs(ONE_HOST)
    assert objectives.study_objectives(runs) == [
        {"metric": "val_accuracy", "direction": "maximize"}
    ]
    assert objectives.front_pair(runs) is None and not objectives.has_objectives(runs)
    assert objectives.front_pair(runs, []) is None
    assert objectives.front_pair(runs, "latency_ms, test_auc") == ["latency_ms", "test_auc"]
    with pytest.raises(ValueError, match="two metric columns"):
        objectives.front_pair(runs, ["test_auc"])
    with pytest.raises(KeyError, match="nope"):
        objectives.front_pair(runs, ["nope", "test_auc"])
    fig = objectives.objectives_figure(runs, "test_auc", "throughput_ips")  # both maximised
    (line,) = _front_lines(fig)
    assert line.get_drawstyle() == "steps-pre"  # x maximised
    assert fig.axes[0].get_xscale() == "linear"
    assert max(line.get_xdata()) == pytest.approx(97.5)  # AUC in percent
    assert "↑" in fig.axes[0].get_title()


def test_render_front_option_is_checked(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["render", "demo", "--front", "test_auc"])
    assert exit_.value.code == 2
    assert "two metric names" in capsys.readouterr().err
