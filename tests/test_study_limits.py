"""A study file cannot exhaust the machine (case C17 and its kind): the grid's cell count is checked
from the axis sizes before any cell is built, YAML is bounded in size and alias expansion, and the
study name, which becomes a folder, is a safe name of bounded length."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from bnn.bounded_yaml import MAX_FILE_BYTES, MAX_NODES
from studies.__main__ import main as studies_main
from studies.spec import MAX_CELLS, cell_count, load_study
from studies.yaml_lines import StudyFileError

ROOT = Path(__file__).resolve().parents[1]
HEAD = "dataset: synthetic\ndata_params: {count: 60, image_size: 36}\ndefaults: {backbone: bnext_micro, resolution: 32}\n"
AXES = ["lr", "weight_decay", "batch_size", "warmup_epochs", "epochs", "binary_weight_decay",
        "weight_temperature", "resolution", "min_lr"]


def _huge_grid(path: Path, axes: int = 9, values: int = 10) -> Path:
    lines = [f"name: {path.stem}", HEAD.rstrip(), "grid:"]
    for axis in AXES[:axes]:
        if axis in ("batch_size", "epochs", "resolution"):
            items = [str(8 + i * 8) for i in range(values)]
        else:
            items = [f"{(i + 1) * 1e-4:.1e}" for i in range(values)]
        lines.append(f"  {axis}: [{', '.join(items)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_billion_cell_grid_is_refused_from_its_axis_sizes_in_little_memory(tmp_path):
    path = _huge_grid(tmp_path / "hugegrid.yaml")
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = str(info.value)
    assert f"{path}:5: grid: expands to 1,000,000,000 cells" in message
    assert f"limit of {MAX_CELLS:,}" in message and "--max-cells" in message
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # no cell was built
    assert elapsed < 30


def test_cell_count_is_the_product_of_axis_sizes_and_seeds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "seeds: [0, 1, 2]\ngrid:\n  features: {powerset: [sobel, fft, lbp]}\n  lr: [1.0e-3, 2.0e-3]\n")
    study = load_study(path)
    assert cell_count(study.spec) == len(study.cells) == 8 * 2 * 3


@pytest.mark.parametrize("command", ["validate", "plan", "run", "status"])
def test_every_command_refuses_it_with_one_line_and_exit_2(tmp_path, command, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _huge_grid(tmp_path / "hugegrid.yaml", axes=5)
    assert studies_main([command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expands to 100,000 cells" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_max_cells_raises_the_limit(tmp_path, capsys):
    path = _huge_grid(tmp_path / "g.yaml", axes=2, values=4)  # 16 cells
    assert studies_main(["validate", str(path), "--max-cells", "15"]) == 2
    assert "expands to 16 cells" in capsys.readouterr().err
    assert studies_main(["validate", str(path), "--max-cells", "16"]) == 0
    assert "16 cells" in capsys.readouterr().out


def test_a_powerset_of_many_channels_is_counted_not_enumerated(tmp_path):
    path = tmp_path / "p.yaml"
    features = ", ".join(["sobel", "fft", "lbp"] * 20)
    path.write_text(HEAD + f"grid:\n  features: {{powerset: [{features}]}}\n")
    with pytest.raises(StudyFileError, match=r"expands to 1,152,921,504,606,846,976 cells \(features 1152921504606846976"):
        load_study(path)


def test_alias_expansion_is_bounded(tmp_path):
    """The "billion laughs" document: nine levels of ten aliases each, 10^9 values from 1 KB."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    path = tmp_path / "laughs.yaml"
    path.write_text(HEAD + "seeds: [0]\ngrid:\n  lr: [1.0e-3]\ndata_params:\n  " + "\n  ".join(levels) + "\n")
    tracemalloc.start()
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"more than {MAX_NODES:,} values through aliases" in str(info.value) and str(path) in str(info.value)
    assert peak < 50 * 2**20


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + "grid:\n  lr: &loop [1.0e-3, *loop]\n")
    with pytest.raises(StudyFileError, match="cannot be recursive"):
        load_study(path)


def test_shared_aliases_within_the_bound_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("dataset: synthetic\ndata_params: &dp {count: 60, image_size: 36}\n"
                    "defaults: {backbone: bnext_micro, resolution: 32, data_params: *dp}\ngrid:\n  lr: [1.0e-3]\n")
    with pytest.raises(StudyFileError, match="given twice"):  # the alias resolved: data_params is in both
        load_study(path)


def test_a_file_larger_than_the_bound_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.write(HEAD.encode())
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(StudyFileError, match="more than a YAML input may have"):
        load_study(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
@pytest.mark.integration
def test_a_fifo_named_like_a_study_file_does_not_hang(tmp_path):
    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "studies", "validate", str(fifo)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "not a regular file" in result.stderr
    bnn_run = subprocess.run([sys.executable, "-m", "bnn", "train", str(fifo)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert bnn_run.returncode == 2 and "not a regular file" in bnn_run.stderr


@pytest.mark.parametrize("name, where", [
    ("name: '../../escape'\n", "name"),
    ("name: " + "a" * 101 + "\n", "name"),
    ("", "file name"),
])
def test_study_names_are_safe_folder_names(tmp_path, name, where):
    path = tmp_path / ("...yaml" if where == "file name" else "s.yaml")  # stem ".."
    path.write_text(name + HEAD + "grid:\n  lr: [1.0e-3]\n")
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    message = str(info.value)
    assert "name" in message and "\n" not in message
    assert not (tmp_path.parent / "escape").exists()


def test_a_run_file_of_bnn_train_has_the_same_bounds(tmp_path, capsys):
    from bnn.__main__ import main as bnn_main

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    run = tmp_path / "run.yaml"
    run.write_text("backbone: bnext_micro\ndata_params:\n  " + "\n  ".join(levels) + "\n")
    tracemalloc.start()
    assert bnn_main(["train", str(run)]) == 2
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"more than {MAX_NODES:,} values through aliases" in err and str(run) in err
    assert peak < 50 * 2**20
