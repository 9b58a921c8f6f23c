"""The evaluation protocol (issue 12): per-image sources of every reader, the synthetic benchmark's
generator selection (leave-one-generator-out), perturbed test images, study-file ``evaluate`` and
``robustness`` entries with their errors, and a real study that logs the documented metric names
and adds entries to finished cells without retraining them."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import write_image
from mlflow import MlflowClient
from PIL import Image

from bnn.checkpoint import saved_val_threshold
from bnn.config import FitConfig
from bnn.data import create_dataset
from bnn.data.perturb import Perturbation
from bnn.data.synthetic import GENERATOR_NAMES
from bnn.evaluation import evaluate
from bnn.protocol import EVAL_METRICS, ROBUST_METRICS, source_scalars
from bnn.splits import make_loader
from studies.__main__ import main
from studies.record import read_cell_metrics
from studies.spec import load_study
from studies.yaml_lines import StudyFileError

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


# ---------------------------------------------------------------- sources per reader


def _tree(root: Path, layout: dict[str, tuple[int, int]]) -> None:
    """Images ``{relative folder: (count, grey level)}`` under ``root``."""
    for folder, (count, level) in layout.items():
        for i in range(count):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (level, level, level)).save(root / folder / f"{i}.png")


class Brightness(torch.nn.Module):
    """A "detector" whose fake logit is the mean brightness minus 0.5, times 20."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, R, R) -> (B,)
        return 20 * (x.mean(dim=(1, 2, 3)) - 0.5)


def test_folder_sources_and_per_source_metrics_on_a_hand_made_tree(tmp_path):
    # reals: 4 dark (right) + 2 bright (wrong); stylegan2: 3 bright (right); faceswap/x: 2 dark
    # (wrong); loose fakes in FAKE/: 1 bright (right).
    _tree(tmp_path / "t", {"test/REAL": (4, 20), "test/REAL/webcam": (2, 230), "test/FAKE/stylegan2": (3, 230),
                           "test/FAKE/Face Swap/x": (2, 20), "test/FAKE": (1, 230), "train/REAL": (1, 0),
                           "train/FAKE": (1, 0)})
    ds = create_dataset("folder", "test", root=tmp_path / "t", resolution=8)
    by_path = ds.source_by_path()
    assert sorted(set(by_path.values())) == ["Face Swap", "fake", "real", "stylegan2", "webcam"]
    config = FitConfig(dataset="folder", data_root=str(tmp_path / "t"), resolution=8, batch_size=4)
    _, metrics, predictions, _, _ = evaluate(Brightness(), make_loader(ds, config, torch.device("cpu"), False),
                                             torch.device("cpu"))
    values = source_scalars(predictions)
    assert values["source_real_accuracy"] == 1.0 and values["source_real_count"] == 4
    assert values["source_webcam_accuracy"] == 0.0 and values["source_webcam_count"] == 2
    assert values["source_stylegan2_accuracy"] == 1.0 and values["source_stylegan2_auc"] == pytest.approx(
        # 3 bright fakes against 6 reals (2 of them as bright: ties count one half)
        (3 * 4 + 3 * 2 * 0.5) / 18)
    assert values["source_face_swap_accuracy"] == 0.0  # slug of "Face Swap"
    assert values["source_fake_accuracy"] == 1.0
    assert "source_real_auc" not in values and "source_webcam_auc" not in values  # reals have no AUC
    assert metrics.count == 12


def test_dffd_sources_are_its_folders(dffd_root):
    ds = create_dataset("dffd", "test", root=dffd_root, resolution=8)
    sources = dict(zip((Path(p).parent.parent.name if "img_align" not in p else "celeba" for p, _ in ds.items),
                       ds.sources, strict=True))
    assert set(ds.sources) == {"celeba", "ffhq", "pggan_v1", "pggan_v2", "stylegan_ffhq", "stylegan_celeba",
                               "faceapp", "stargan"}
    assert all(folder == source for folder, source in sources.items())
    assert {s for s, (_, y) in zip(ds.sources, ds.items, strict=True) if y == 0} == {"celeba", "ffhq"}


def test_cocofake_and_cifake_sources(tmp_path):
    coco, fake = tmp_path / "coco", tmp_path / "cocofake"
    for i in range(2):
        write_image(coco / "val2014" / f"img{i}.jpg", seed=i)
        for k in range(2):
            write_image(fake / "val2014" / f"img{i}" / f"{k}.jpg", seed=10 + k)
    ds = create_dataset("cocofake", "test", root=coco, fake_root=fake, resolution=8)
    assert sorted(set(zip(ds.labels(), ds.sources, strict=True))) == [(0, "coco2014"), (1, "cocofake")]
    _tree(tmp_path / "cifake", {"test/REAL": (2, 10), "test/FAKE": (2, 200)})
    ds = create_dataset("cifake", "test", root=tmp_path / "cifake", resolution=8)
    assert ds.sources == ["real", "real", "fake", "fake"]


def test_synthetic_generators_select_fakes_by_kind_and_subsets_keep_sources():
    params = {"count": 120, "image_size": 12, "difficulty": 0.0}
    full = create_dataset("synthetic", "train", resolution=8, **params)
    kinds = {s for s in full.sources if s != "real"}
    assert kinds <= set(GENERATOR_NAMES) and len(kinds) >= 3
    held_out = create_dataset("synthetic", "train", resolution=8, generators=["nearest_x2"], **params)
    assert set(held_out.sources) == {"real", "nearest_x2"}
    assert held_out.class_counts()["real"] == full.class_counts()["real"]
    assert held_out.class_counts()["fake"] == full.sources.count("nearest_x2")
    assert "fakes of nearest_x2 only" in held_out.describe()
    small = full.subsample(20, seed=1)
    by_path = full.source_by_path()
    assert [by_path[p] for p, _ in small.items] == small.sources
    with pytest.raises(ValueError, match="unknown generator kind.*valid: tconv4_x2, tconv3_x4, nearest_x2"):
        create_dataset("synthetic", "train", resolution=8, generators=["stylegan"], **params)


def test_perturbed_dataset_applies_the_perturbation_before_the_preprocessing():
    ds = create_dataset("synthetic", "test", resolution=8, count=60, image_size=12, difficulty=0.0)
    jpeg = Perturbation("jpeg", 30)
    perturbed = ds.perturbed(jpeg, jpeg.describe())
    image = Image.open(ds.items[0][0]).convert("RGB")
    assert torch.equal(perturbed[0][0], ds.transform(jpeg(image)))
    assert not torch.equal(perturbed[0][0], ds[0][0])
    assert perturbed.sources == ds.sources and "JPEG quality 30" in perturbed.describe()


# ---------------------------------------------------------------- study file entries

STUDY = """\
name: proto
dataset: synthetic
data_params: {{count: 120, image_size: 20, difficulty: 0.0, generators: [tconv4_x2, tconv3_x4, tconv4_x4]}}
tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults: {{backbone: bnext_micro, resolution: 16, epochs: 1, batch_size: 16}}
grid:
  features: [rgb, rgb+fft]
log_checkpoint: false
{extra}"""

HELD_OUT = """\
evaluate:
  - name: heldout
    dataset: synthetic
    data_params: {count: 120, image_size: 20, difficulty: 0.0, generators: [nearest_x2]}
"""


def _study(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "proto.yaml"
    path.write_text(STUDY.format(root=tmp_path, extra=extra))
    return path


ERRORS = {
    "unknown kind": ("robustness:\n  - {kind: jpg, levels: [75]}\n", 11, "robustness[0].kind", "valid: blur, chain"),
    "level out of range": ("robustness:\n  - {kind: jpeg, levels: [75, 150]}\n", 11, "robustness[0].levels[1]",
                           "1..100"),
    "resize scale": ("robustness:\n  - {kind: resize, levels: [2]}\n", 11, "robustness[0].levels[0]", "scale"),
    "unknown dataset": ("evaluate:\n  - {name: x, dataset: cocofak}\n", 11, "evaluate[0].dataset",
                        "did you mean 'cocofake'? valid: cifake, cocofake"),
    "duplicate name": ("evaluate:\n  - {name: x, dataset: synthetic}\n  - {name: x, dataset: cifake}\n", 12,
                       "evaluate[1].name", "duplicate test-set name 'x'"),
    "bad name": ("evaluate:\n  - {name: Held-Out, dataset: synthetic}\n", 11, "evaluate[0].name",
                 "lower-case letters, digits and _"),
    "unknown key": ("evaluate:\n  - {name: x, dataset: synthetic, root: /d}\n", 11, "evaluate[0].root",
                    "valid keys: name, dataset, data_root, data_params, split"),
    "unknown data_params": ("evaluate:\n  - name: x\n    dataset: synthetic\n    data_params: {cout: 3}\n", 13,
                            "evaluate[0].data_params.cout", "valid: count, difficulty, generators"),
    "unknown generator": ("evaluate:\n  - name: x\n    dataset: synthetic\n    data_params: {generators: [nearest_x3]}\n",
                          13, "evaluate[0].data_params.generators", "valid: tconv4_x2, tconv3_x4, nearest_x2"),
    "unknown split": ("evaluate:\n  - {name: x, dataset: synthetic, split: dev}\n", 11, "evaluate[0].split",
                      "valid: train, val, test"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_invalid_entries_are_file_line_key_errors_at_validate(tmp_path, case, capsys):
    text, line, key, message = ERRORS[case]
    path = _study(tmp_path, text)
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    assert (info.value.line, info.value.key) == (line, key), str(info.value)
    assert message in str(info.value)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:{line}: {key}:")


def test_an_unknown_generator_kind_is_refused_where_it_is_written(tmp_path):
    path = _study(tmp_path, "")
    path.write_text(path.read_text().replace("tconv4_x4]", "stylegan]"))
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    assert (info.value.line, info.value.key) == (3, "data_params.generators")
    assert "unknown generator kind(s) stylegan; valid: tconv4_x2" in str(info.value)


def test_objective_may_be_a_protocol_metric_and_unknown_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("BNN_TEST_UNSET_ROOT", raising=False)
    path = _study(tmp_path, HELD_OUT + "robustness:\n  - {kind: resize, levels: [0.5]}\n"
                  "objective: {metric: eval_heldout_auc}\n")
    assert load_study(path).spec.objective.metric == "eval_heldout_auc"
    path = _study(tmp_path, HELD_OUT + "objective: {metric: robust_jpeg_75_auc}\n")
    with pytest.raises(StudyFileError, match="unknown metric 'robust_jpeg_75_auc'"):
        load_study(path)
    skipped = "  - {name: away, dataset: cifake, data_root: \"${BNN_TEST_UNSET_ROOT}\"}\n"
    path = _study(tmp_path, HELD_OUT + skipped + "objective: {metric: eval_away_auc}\n")
    with pytest.raises(StudyFileError, match="eval_away_auc comes from the evaluate entry 'away', which would be "
                       "skipped: data_root .* names an unset environment variable"):
        load_study(path)


def test_a_given_missing_root_is_an_error_before_anything_is_created(tmp_path, capsys):
    path = _study(tmp_path, f"evaluate:\n  - {{name: other, dataset: cifake, data_root: {tmp_path}/nowhere}}\n")
    assert main(["run", str(path), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- a real study


def metrics_cells(root: Path) -> list[str]:
    """The cell folders of the ``proto`` study, sorted."""
    return sorted(p.name for p in (root / "runs" / "proto").iterdir() if p.is_dir())


@pytest.mark.slow
@pytest.mark.integration
def test_study_logs_protocol_metrics_and_adds_new_entries_without_retraining(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("BNN_TEST_UNSET_ROOT", raising=False)
    unset = "  - {name: elsewhere, dataset: cifake, data_root: \"${BNN_TEST_UNSET_ROOT}\"}\n"
    path = _study(tmp_path, HELD_OUT + unset + "robustness:\n  - {kind: jpeg, levels: [75]}\n")
    path.write_text(path.read_text().replace("log_checkpoint: false", "log_checkpoint: true"))
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(path), "--quiet"]) == 0
    assert "extra test set elsewhere skipped: data_root ${BNN_TEST_UNSET_ROOT} names an unset environment " \
           "variable" in caplog.text
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    metrics = read_cell_metrics(uri, "proto")
    assert len(metrics) == 2
    for values in metrics.values():
        names = set(values)
        assert {f"eval_heldout_{m}" for m in EVAL_METRICS} <= names
        assert {f"robust_jpeg_75_{m}" for m in ROBUST_METRICS} <= names
        assert not any(n.startswith("eval_elsewhere_") for n in names)
        assert {"eval_heldout_source_nearest_x2_auc", "eval_heldout_source_real_accuracy"} <= names
        assert {"source_tconv4_x2_auc", "source_real_accuracy", "test_accuracy_ci_low", "test_auc_ci_high",
                "test_ece", "test_brier", "test_accuracy_valthr", "test_tpr_at_fpr_1pct",
                "test_tpr_at_fpr_0p1pct", "val_ece", "val_eer_threshold"} <= names
        assert values["eval_heldout_count"] == values["test_count"] - values["source_tconv4_x2_count"] \
            - values["source_tconv3_x4_count"] - values["source_tconv4_x4_count"] \
            + values["eval_heldout_source_nearest_x2_count"]
        assert values["test_accuracy_ci_low"] <= values["test_accuracy"] <= values["test_accuracy_ci_high"]
        assert not any(n.startswith("source_nearest_x2") for n in names)  # held out of training and test

    kept = tmp_path / "runs" / "proto" / metrics_cells(tmp_path)[0] / "best.pt"
    assert saved_val_threshold(kept) in {v["val_eer_threshold"] for v in metrics.values()}  # for bnn evaluate
    client = MlflowClient(tracking_uri=uri)
    before = {run_id: len(client.get_metric_history(run_id, "epoch_val_accuracy")) for run_id in metrics}
    path.write_text(path.read_text().replace("levels: [75]", "levels: [75, 30]}\n  - {kind: blur, levels: [1]")
                    .replace("[75, 30]}}", "[75, 30]}")
                    .replace("generators: [nearest_x2]", "generators: [nearest_x2, tconv4_x4]"))  # changed set
    shutil.rmtree(tmp_path / "runs" / "proto" / next(iter(metrics_cells(tmp_path))))  # one from MLflow's copy
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["run", str(path), "--quiet"]) == 0
    assert caplog.text.count("(added to or changed in the study after it finished)") == 2
    assert caplog.text.count("heldout, jpeg_30, blur_1 (added") == 2  # the changed set, not jpeg_75
    assert caplog.text.count("/runs/proto/") == 1  # the other checkpoint was downloaded from its run
    assert "epoch 0:" not in caplog.text  # nothing retrained
    after = read_cell_metrics(uri, "proto")
    for run_id, values in after.items():
        assert {f"robust_jpeg_30_{m}" for m in ROBUST_METRICS} | {f"robust_blur_1_{m}" for m in ROBUST_METRICS} \
            <= set(values)
        assert values["robust_jpeg_75_auc"] == metrics[run_id]["robust_jpeg_75_auc"]
        assert values["eval_heldout_count"] > metrics[run_id]["eval_heldout_count"]  # re-evaluated, new definition
        tags = client.get_run(run_id).data.tags
        assert json.loads(tags["bnn.eval.heldout"])["data_params"]["generators"] == ["nearest_x2", "tconv4_x4"]
        assert tags["bnn.robust.blur_1"] == "Gaussian blur sigma 1"
        assert len(client.get_metric_history(run_id, "epoch_val_accuracy")) == before[run_id]
        assert not math.isnan(values["robust_jpeg_30_accuracy"])
    assert np.isfinite([v["test_accuracy"] for v in after.values()]).all()


def test_split_all_evaluates_every_image_of_a_flat_folder(tmp_path):
    """A flat ``{REAL,FAKE}`` tree is split 80/10/10 by hash; ``split: all`` tests on all of it."""
    from bnn.protocol import TestSet

    _tree(tmp_path / "flat", {"REAL": (7, 20), "FAKE/gen_a": (5, 230), "FAKE/gen_b": (4, 230)})
    test_only = TestSet("flat", "folder", str(tmp_path / "flat")).load(8)
    everything = TestSet("flat", "folder", str(tmp_path / "flat"), split="all").load(8)
    assert len(test_only) < 16 and len(everything) == 16
    assert sorted(set(everything.sources)) == ["gen_a", "gen_b", "real"]
    assert everything.class_counts() == {"real": 7, "fake": 9}
    assert len({p for p, _ in everything.items}) == 16  # the three splits are disjoint
