"""What repeats (docs/reports.md#what-repeats): one cell run twice under the same conditions (same
versions, CPU model and torch intra-op thread count) gives every metric, per-epoch histories
included, to the last bit, whatever the number of workers; only wall-clock metrics differ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from studies import record as R

STUDY = """\
name: repeat_one
description: one cell with every channel, the protocol's extra test set and perturbations
dataset: synthetic
data_params: {count: 240, image_size: 36, difficulty: 0.0, generators: [tconv4_x2, tconv3_x4]}
defaults: {backbone: bnext_micro, freeze_backbone: false, recipe: scratch, resolution: 32, epochs: 2, batch_size: 32}
grid:
  features: [[rgb, sobel, fft, lbp]]
seeds: [0]
objective: {metric: val_accuracy, direction: maximize}
latency: {enabled: false}
evaluate:
  - {name: heldout, dataset: synthetic, split: test,
     data_params: {count: 240, image_size: 36, difficulty: 0.0, generators: [nearest_x2]}}
robustness:
  - {kind: jpeg, levels: [50]}
  - {kind: blur, levels: [1]}
"""


def _run(folder: Path, *args: str) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Runs the study in ``folder`` and returns its cell's metric histories and tags."""
    folder.mkdir()
    (folder / "repeat.yaml").write_text(STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "studies", "run", "repeat.yaml", "--quiet", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "repeat_one"]
    (cell,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(R.TAG_ROLE) == R.ROLE_CELL]
    histories = {name: [(m.step, m.value) for m in client.get_metric_history(cell.info.run_id, name)]
                 for name in cell.data.metrics}
    return histories, cell.data.tags


@pytest.mark.integration
def test_one_cell_run_twice_repeats_every_metric_exactly(tmp_path):
    first, first_tags = _run(tmp_path / "one_worker")
    second, second_tags = _run(tmp_path / "two_workers", "--workers", "2")
    assert set(first) == set(second)
    compared = [name for name in first if name not in R.WALL_CLOCK_EPOCH_METRICS]
    assert len(compared) > 80  # test/val/eval_*/robust_*/source_* metrics, cost and epoch histories
    assert {"eval_heldout_auc", "robust_jpeg_50_auc", "robust_blur_1_auc", "epoch_val_loss", "test_ece"} <= set(compared)
    differing = {name: (first[name], second[name]) for name in compared if first[name] != second[name]}
    assert not differing, differing
    for tag in (R.TAG_DEVICE, R.TAG_TRAIN_HOST, R.TAG_TRAIN_THREADS, R.TAG_DATA_DIGEST):
        assert first_tags[tag] == second_tags[tag], tag
    assert first_tags[R.TAG_TRAIN_THREADS] == "1"
