"""The data audit (bnn.data.audit): duplicates within and across splits, dedupe, per-class file
statistics, the no-pixel shortcut baseline and the spectral floor; the authors' test-split
checkpoint selection (``selection_split: test``); the CPU CIFAKE study on a generated tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnn.config import FitConfig
from bnn.data.audit import NO_QUALITY, fingerprint, jpeg_quality, radial_profile
from bnn.splits import load_splits, prepare_splits
from bnn.train import fit


def _photo(seed: int, size: int = 24) -> Image.Image:
    """A smooth random image (JPEG sizes then vary little between draws of the same kind)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def _tree(root: Path, per_class: int = 40, fake_format: str = "JPEG") -> Path:
    """``root/{train,val,test}/{REAL,FAKE}``: reals as JPEG quality 90, fakes as ``fake_format``
    (JPEG quality 90 or PNG); every image distinct."""
    counts = {"train": per_class, "val": per_class // 4, "test": per_class // 2}
    seed = 0
    for split, n in counts.items():
        for label in ("REAL", "FAKE"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                image = _photo(seed)
                if label == "FAKE" and fake_format == "PNG":
                    image.save(folder / f"{i}.png")
                else:
                    image.save(folder / f"{i}.jpg", quality=90)
    return root


def _config(root: Path, **kw) -> FitConfig:
    return FitConfig(dataset="folder", data_root=str(root), resolution=16, **kw)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_read_back_exactly(tmp_path, quality):
    path = tmp_path / "q.jpg"
    _photo(1).save(path, quality=quality)
    with Image.open(path) as image:
        assert jpeg_quality(image) == quality
    assert fingerprint(path).quality == quality
    _photo(1).save(tmp_path / "p.png")
    assert fingerprint(tmp_path / "p.png").quality == NO_QUALITY


def test_planted_duplicates_are_found_and_dedupe_drops_exactly_the_train_copies(tmp_path):
    root = _tree(tmp_path / "data")
    # Two train fakes copied into test (cross-split leaks), one val real into test, a test pair.
    shutil.copy(root / "train/FAKE/3.jpg", root / "test/FAKE/leak_a.jpg")
    shutil.copy(root / "train/FAKE/7.jpg", root / "test/FAKE/leak_b.jpg")
    shutil.copy(root / "val/REAL/2.jpg", root / "test/REAL/leak_c.jpg")
    shutil.copy(root / "test/REAL/0.jpg", root / "test/REAL/twin.jpg")
    # A group of three inside train: 3 pairs.
    shutil.copy(root / "train/REAL/5.jpg", root / "train/REAL/copy1.jpg")
    shutil.copy(root / "train/REAL/5.jpg", root / "train/REAL/copy2.jpg")

    prepared = prepare_splits(_config(root))
    report = prepared.audit
    assert report.duplicate_pairs == {"train-test": 2, "val-test": 1, "test-test": 1, "train-train": 3}
    assert report.pairs_test == 3 and report.pairs_cross == 3 and report.pairs_within == 4
    assert report.dropped == {"train": 2, "val": 1}
    train = {Path(p).relative_to(root).as_posix() for p, _ in prepared.datasets["train"].items}
    val = {Path(p).relative_to(root).as_posix() for p, _ in prepared.datasets["val"].items}
    assert "train/FAKE/3.jpg" not in train and "train/FAKE/7.jpg" not in train and "val/REAL/2.jpg" not in val
    listed = load_splits(_config(root, dedupe=False))
    assert len(listed["train"]) - len(prepared.datasets["train"]) == 2
    assert len(listed["val"]) - len(prepared.datasets["val"]) == 1
    assert len(listed["test"]) == len(prepared.datasets["test"])  # the test split is never touched
    assert any("identical files across splits" in w for w in report.warnings)
    scalars = report.scalars()
    assert scalars["audit_dropped_train"] == 2 and scalars["audit_duplicate_pairs_test"] == 3
    example = report.duplicate_examples["train-test"][0]
    assert {Path(p).name for p in example} <= {"3.jpg", "7.jpg", "leak_a.jpg", "leak_b.jpg"}

    off = prepare_splits(_config(root, dedupe=False)).audit
    assert off.dropped == {"train": 0, "val": 0} and off.duplicate_pairs == report.duplicate_pairs
    assert any("dedupe is off" in w for w in off.warnings)


def test_a_format_difference_is_reported_and_the_shortcut_baseline_separates_it(tmp_path):
    report = prepare_splits(_config(_tree(tmp_path / "data", fake_format="PNG"))).audit
    stats = report.class_stats["train"]
    assert stats["real"]["format"] == {"JPEG": 40} and stats["fake"]["format"] == {"PNG": 40}
    assert stats["real"]["jpeg_quality"] == {"90": 40} and stats["fake"]["jpeg_quality"] == {"none": 40}
    assert report.separation["format"] == 1.0 and report.separation["jpeg_quality"] == 1.0
    assert report.shortcut["accuracy"] == 1.0 and report.shortcut["auc"] == 1.0
    assert any(w.startswith("format alone separates the classes") for w in report.warnings)


def test_the_shortcut_baseline_sits_at_chance_when_the_files_do_not_differ(tmp_path):
    report = prepare_splits(_config(_tree(tmp_path / "data", per_class=120))).audit
    assert report.separation["format"] == 0.5 and report.separation["size"] == 0.5
    assert abs(report.shortcut["accuracy"] - 0.5) < 0.15
    assert not any("separates the classes" in w for w in report.warnings)
    assert report.duplicate_pairs == {} and report.dropped == {"train": 0, "val": 0}


def test_the_spectral_floor_sees_an_upsampling_trace(tmp_path):
    """Fakes upsampled by nearest neighbour (the periodic spectrum of a transposed convolution,
    Durall et al.) are told apart by the 16-number profile; the audit is cached."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in {"train": 60, "val": 10, "test": 30}.items():
        for label in ("REAL", "FAKE"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                if label == "REAL":
                    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
                else:
                    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((32, 32), Image.NEAREST)
                image.save(root / split / label / f"{i}.png")
    config = FitConfig(dataset="folder", data_root=str(root), resolution=32)
    report = prepare_splits(config).audit
    assert report.spectral["accuracy"] >= 0.95 and report.spectral["train_images"] == 120
    assert list((tmp_path / "cache" / "audit").glob("report-*.json"))
    assert prepare_splits(config).audit == report


def test_radial_profile_shape_and_flat_spectrum():
    images = np.zeros((2, 8, 8))
    images[1, 3, 4] = 1.0  # an impulse: |FFT| = 1 everywhere
    profile = radial_profile(images, bins=4)
    assert profile.shape == (2, 4)
    np.testing.assert_allclose(profile[1], 0.0, atol=1e-5)


# --- selection_split -------------------------------------------------------------------------------


def _synthetic(**kw) -> FitConfig:
    return FitConfig(dataset="synthetic", data_params={"count": 120, "image_size": 18}, backbone="bnext_micro",
                     features="rgb", resolution=16, batch_size=16, epochs=3, recipe="scratch", amp=False, **kw)


@pytest.mark.integration
def test_selection_on_test_selects_on_test_and_is_its_own_configuration(tmp_path):
    config = _synthetic(selection_split="test", output_dir=str(tmp_path / "run"))
    assert config.content_id() != _synthetic().content_id()
    assert _synthetic(selection_split="val").content_id() == _synthetic().content_id()
    result = fit(config)
    accuracies = [h.selection_accuracy for h in result.history]
    assert all(a is not None for a in accuracies)
    best = max(range(len(accuracies)), key=lambda e: (accuracies[e], -result.history[e].selection_loss))
    assert result.best_epoch == best
    assert result.test.accuracy == pytest.approx(accuracies[best])
    default = fit(_synthetic(output_dir=str(tmp_path / "default")))
    assert all(h.selection_accuracy is None for h in default.history)


@pytest.mark.integration
def test_a_study_with_selection_on_test_is_tagged(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from studies.__main__ import main

    monkeypatch.chdir(tmp_path)
    study = tmp_path / "sel.yaml"
    study.write_text(
        "name: sel\ndataset: synthetic\ndata_params: {count: 80, image_size: 18}\n"
        "defaults: {backbone: bnext_micro, features: rgb, resolution: 16, batch_size: 16, epochs: 1, amp: false}\n"
        "grid: {selection_split: [val, test]}\nlatency: {enabled: false}\nlog_checkpoint: false\n"
    )
    assert main(["run", str(study), "--quiet", "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("sel")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`bnn.role` = 'cell'")
    assert sorted(r.data.tags["bnn.selection_split"] for r in runs) == ["test", "val"]
    for run in runs:
        assert "audit_spectral_accuracy" in run.data.metrics and "bnn.audit.duplicates" in run.data.tags


# --- the CPU CIFAKE study --------------------------------------------------------------------------


def _cifake_tree(root: Path, n: int = 24) -> Path:
    """CIFAKE's Kaggle layout with its file names (``1234 (7).jpg``), 32x32 JPEGs."""
    seed = 0
    for split, count in {"train": n, "test": n // 2}.items():
        for label in ("REAL", "FAKE"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                _photo(seed, 32).save(folder / (f"{i}.jpg" if i % 2 else f"{i} ({i % 9 + 2}).jpg"), quality=75)
    return root


@pytest.mark.slow
@pytest.mark.integration
def test_the_cpu_cifake_study_validates_and_its_first_cell_runs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from studies.__main__ import main
    from studies.spec import load_study

    root = _cifake_tree(tmp_path / "cifake")
    monkeypatch.setenv("BNN_DATA_CIFAKE", str(root))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "cifake_scratch.yaml"]) == 0
    study = load_study("cifake_scratch.yaml")
    assert len(study.cells) == 16
    assert {c.config.backbone for c in study.cells} == {"bnext_tiny", "resnet18"}
    first = study.cells[0]
    assert first.config.backbone == "bnext_tiny" and first.config.features == "rgb"
    # Only the first cell: a copy of the shipped file with its grid narrowed to that cell.
    text = study.path.read_text()
    narrowed = text.replace("    powerset: [sobel, fft, lbp]\n", "").replace("  features:\n", "  features: [rgb]\n")
    narrowed = narrowed.replace("backbone: [bnext_tiny, resnet18]", "backbone: [bnext_tiny]")
    assert narrowed != text
    (tmp_path / "first_cell.yaml").write_text(narrowed)
    (cell,) = load_study(tmp_path / "first_cell.yaml").cells
    assert cell.cell_id == first.cell_id
    assert main(["run", str(tmp_path / "first_cell.yaml"), "--quiet", "--set", "latency.enabled=false",
                 "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 "--set", "epochs=1"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cifake_scratch")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`bnn.role` = 'cell'")
    assert run.info.status == "FINISHED" and run.data.params["backbone"] == "bnext_tiny"
    assert run.data.tags["bnn.synthetic"] == "false" and "CIFAKE" in run.data.tags["bnn.data"]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.metrics["audit_dropped_train"] == 0.0
