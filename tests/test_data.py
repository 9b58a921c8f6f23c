"""Data layer: readers against tiny trees in their real layouts, preprocessing, collate, and the
synthetic benchmark (determinism, cache, no trivial statistic, a spectral trace)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import write_image
from PIL import Image

from bnn.data import (
    DATASETS,
    DatasetLayoutError,
    ImageDataset,
    build_transform,
    collate_skip,
    create_dataset,
    dataset_params,
    generate_synthetic,
    load_rgb,
)
from bnn.data import synthetic as synthetic_module

# ---------------------------------------------------------------- helpers


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")


def write_truncated_jpeg(path: Path) -> None:
    write_image(path, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def class_tree(folder: Path, n_real: int, n_fake: int, real="REAL", fake="FAKE", ext=".png"):
    for i in range(n_real):
        write_image(folder / real / f"r{i:03d}{ext}", seed=i)
    for i in range(n_fake):
        write_image(folder / fake / f"f{i:03d}{ext}", seed=1000 + i)


def labels_by_name(ds: ImageDataset) -> dict[str, int]:
    return {Path(p).name: label for p, label in ds.items}


# ---------------------------------------------------------------- CIFAKE


@pytest.fixture
def cifake_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifake"
    class_tree(root / "train", 40, 40, ext=".jpg")
    class_tree(root / "test", 5, 6, ext=".jpg")
    write_corrupt(root / "train" / "REAL" / "broken.jpg")
    write_image(root / "test" / "FAKE" / "grey.png", mode="L")
    write_image(root / "test" / "REAL" / "deep.png", mode="I;16")
    write_image(root / "test" / "REAL" / "cmyk.jpg", mode="CMYK")
    (root / "train" / "REAL" / "notes.txt").write_text("not an image")
    return root


def test_cifake_splits_and_labels(cifake_root: Path):
    train = create_dataset("cifake", "train", root=cifake_root, resolution=16)
    val = create_dataset("cifake", "val", root=cifake_root, resolution=16)
    test = create_dataset("cifake", "test", root=cifake_root, resolution=16)
    train_paths, val_paths = {p for p, _ in train.items}, {p for p, _ in val.items}
    assert not train_paths & val_paths
    assert len(train_paths | val_paths) == 81  # 40 + 40 + broken.jpg; notes.txt ignored
    assert 0 < len(val) < 25
    assert test.class_counts() == {"real": 7, "fake": 7}
    for path, label in [*train.items, *val.items, *test.items]:
        assert label == (1 if Path(path).parent.name == "FAKE" else 0)
    assert "CIFAKE val" in val.describe() and "10% of train" in val.describe()
    assert "CIFAKE test" in test.describe() and str(cifake_root) in test.describe()
    assert train.split == "train" and train.name == "cifake"


def test_cifake_val_split_is_seeded(cifake_root: Path):
    def val_names(seed: int) -> set[str]:
        return set(labels_by_name(create_dataset("cifake", "val", root=cifake_root, seed=seed)))

    assert val_names(0) == val_names(0)
    assert val_names(0) != val_names(1)


def test_modes_decode_and_corrupt_file_is_skipped(cifake_root: Path, caplog):
    test = create_dataset("cifake", "test", root=cifake_root, resolution=16)
    for i in range(len(test)):
        image, label, path = test[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0

    train = create_dataset("cifake", "train", root=cifake_root, resolution=16, val_fraction=0.0)
    broken = [i for i, (p, _) in enumerate(train.items) if p.endswith("broken.jpg")]
    train = train.subset([40, 41, 42, *broken])
    with caplog.at_level(logging.WARNING, logger="bnn.data.dataset"):
        samples = [train[i] for i in range(len(train))] + [train[3]]
    assert samples[3] is None and samples[4] is None
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1  # once per file
    images, labels, paths, skipped = collate_skip(samples)
    assert images.shape == (3, 3, 16, 16) and labels.shape == (3,) and labels.dtype == torch.float32
    assert len(paths) == 3 and skipped == 2

    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=collate_skip)
    assert sum(batch[3] for batch in loader) == 1


def test_collate_all_unreadable():
    images, labels, paths, skipped = collate_skip([None, None])
    assert len(images) == 0 and len(labels) == 0 and paths == [] and skipped == 2


def test_truncated_file_returns_none(tmp_path: Path):
    root = tmp_path / "tree"
    class_tree(root, 2, 2)
    write_truncated_jpeg(root / "FAKE" / "cut.jpg")
    ds = create_dataset("folder", "train", root=root, train_fraction=1.0, val_fraction=0.0)
    index = next(i for i, (p, _) in enumerate(ds.items) if p.endswith("cut.jpg"))
    assert ds[index] is None
    assert all(ds[i] is not None for i in range(len(ds)) if i != index)


def test_root_from_environment(cifake_root: Path, monkeypatch):
    monkeypatch.setenv("BNN_DATA_CIFAKE", str(cifake_root))
    assert len(create_dataset("cifake", "test")) == 14
    monkeypatch.delenv("BNN_DATA_CIFAKE")
    with pytest.raises(DatasetLayoutError, match="BNN_DATA_CIFAKE") as error:
        create_dataset("cifake", "test")
    message = str(error.value)
    assert "{train,test}/{REAL,FAKE}" in message and "birdy654" in message


def test_layout_errors_name_path_and_layout(tmp_path: Path):
    with pytest.raises(DatasetLayoutError) as error:
        create_dataset("cifake", "train", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    bad = tmp_path / "bad"
    class_tree(bad / "train", 2, 0)  # no FAKE folder
    with pytest.raises(DatasetLayoutError) as error:
        create_dataset("cifake", "train", root=bad)
    message = str(error.value)
    assert str(bad / "train") in message and "FAKE" in message and "expected layout" in message
    assert isinstance(error.value, FileNotFoundError)


def test_bad_split_and_unknown_params(cifake_root: Path):
    with pytest.raises(ValueError, match="train, val, test"):
        create_dataset("cifake", "validation", root=cifake_root)
    with pytest.raises(TypeError, match="val_fraction") as error:
        create_dataset("cifake", "train", root=cifake_root, val_frac=0.2)
    assert "val_frac" in str(error.value)
    with pytest.raises(KeyError, match="cifake"):
        create_dataset("cifak", "train")
    assert set(dataset_params("cocofake")) >= {"fake_root", "val_fraction", "max_samples", "seed"}
    assert set(DATASETS.names()) == {"cocofake", "dffd", "cifake", "folder", "hf", "synthetic"}


def test_max_samples_stratified_and_deterministic(cifake_root: Path):
    full = create_dataset("cifake", "train", root=cifake_root)
    a = create_dataset("cifake", "train", root=cifake_root, max_samples=10)
    b = create_dataset("cifake", "train", root=cifake_root, max_samples=10)
    c = create_dataset("cifake", "train", root=cifake_root, max_samples=10, seed=3)
    assert a.items == b.items and len(a) == 10
    assert a.class_counts()["real"] >= 4 and a.class_counts()["fake"] >= 4
    assert set(a.items) <= set(full.items)
    assert {p for p, _ in c.items} != {p for p, _ in a.items}  # seed also moves the val split
    assert "subsample of 10" in a.describe()


def test_digest_is_relative_and_label_sensitive(tmp_path: Path):
    for name in ("a", "b"):
        class_tree(tmp_path / name, 3, 3)
    one = create_dataset("folder", "train", root=tmp_path / "a", train_fraction=1.0, val_fraction=0)
    two = create_dataset("folder", "train", root=tmp_path / "b", train_fraction=1.0, val_fraction=0)
    assert one.digest() == two.digest() and len(one.digest()) == 16
    flipped = ImageDataset(
        [(p, 1 - label) for p, label in one.items],
        name="folder",
        split="train",
        description="x",
        roots=one.roots,
        transform=one.transform,
    )
    assert flipped.digest() != one.digest()


# ---------------------------------------------------------------- folder


def test_folder_split_tree_with_aliases(tmp_path: Path):
    root = tmp_path / "mine"
    class_tree(root / "train", 4, 3, real="real", fake="fake")
    class_tree(root / "validation", 2, 2, real="real", fake="fake")
    class_tree(root / "test", 1, 2)
    write_image(root / "test" / "FAKE" / "nested" / "deep.webp")
    counts = {
        s: create_dataset("folder", s, root=root).class_counts() for s in ("train", "val", "test")
    }
    assert counts == {
        "train": {"real": 4, "fake": 3},
        "val": {"real": 2, "fake": 2},
        "test": {"real": 1, "fake": 3},
    }


def test_folder_carves_val_when_missing(tmp_path: Path):
    root = tmp_path / "mine"
    class_tree(root / "train", 20, 20)
    class_tree(root / "test", 2, 2)
    train = create_dataset("folder", "train", root=root, val_fraction=0.25)
    val = create_dataset("folder", "val", root=root, val_fraction=0.25)
    assert len(train) + len(val) == 40 and not set(train.items) & set(val.items) and len(val) > 0
    assert "held out" in val.describe()


def test_folder_bare_tree_hash_split(tmp_path: Path, monkeypatch):
    root = tmp_path / "bare"
    class_tree(root, 30, 30)
    monkeypatch.setenv("BNN_DATA_FOLDER", str(root))
    splits = {s: create_dataset("folder", s) for s in ("train", "val", "test")}
    paths = [p for ds in splits.values() for p, _ in ds.items]
    assert len(paths) == len(set(paths)) == 60
    assert len(splits["train"]) > len(splits["val"]) and len(splits["val"]) > 0
    again = create_dataset("folder", "val")
    other = create_dataset("folder", "val", seed=1)
    assert again.items == splits["val"].items and other.items != splits["val"].items


def test_folder_without_classes_is_layout_error(tmp_path: Path):
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="REAL/FAKE"):
        create_dataset("folder", "train", root=tmp_path / "empty")


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(58)  # 82-byte header


def c06_tree(root: Path) -> Path:
    """The C06 case: <root>/{REAL,FAKE}/000..019.png."""
    for cls, offset in (("REAL", 0), ("FAKE", 1000)):
        for i in range(20):
            write_image(root / cls / f"{i:03d}.png", seed=offset + i)
    return root


def add_clutter(root: Path, kind: str) -> None:
    """What Macs, Windows and NAS boxes write into folders (some of it readable images)."""
    real = root / "REAL"
    if kind == "appledouble":
        for i in range(20):
            (real / f"._{i:03d}.png").write_bytes(APPLEDOUBLE)
    elif kind == "macosx":
        for folder in (real / "__MACOSX", root / "__MACOSX" / "REAL"):
            folder.mkdir(parents=True)
            for i in range(20):
                (folder / f"._{i:03d}.png").write_bytes(APPLEDOUBLE)
    elif kind == "ds_store":
        for folder in (root, real, root / "FAKE"):
            (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(20))
    elif kind == "hidden_folder":
        write_image(real / ".hidden" / "copy.png")
        write_image(root / ".thumbnails" / "REAL" / "t.png")
    elif kind == "thumbs_db":
        (real / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    elif kind == "desktop_ini":
        (root / "FAKE" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    elif kind == "eadir":
        write_image(real / "@eaDir" / "000.png" / "SYNOFILE_THUMB_S.jpg")
    else:
        raise AssertionError(kind)


CLUTTER = ["appledouble", "macosx", "ds_store", "hidden_folder", "thumbs_db", "desktop_ini", "eadir"]


@pytest.mark.parametrize("kind", CLUTTER)
@pytest.mark.integration
def test_folder_clutter_is_never_listed(tmp_path: Path, kind: str, caplog):
    clean = c06_tree(tmp_path / "clean")
    shipped = c06_tree(tmp_path / "shipped")
    add_clutter(shipped, kind)
    with caplog.at_level(logging.WARNING, logger="bnn.data"):
        for split in ("train", "val", "test"):
            a = create_dataset("folder", split, root=clean)
            b = create_dataset("folder", split, root=shipped)
            assert [Path(p).relative_to(shipped) for p, _ in b.items] == [
                Path(p).relative_to(clean) for p, _ in a.items
            ]
            assert b.digest() == a.digest() and b.labels() == a.labels()
    train = create_dataset("folder", "train", root=shipped)
    counts = train.class_counts()
    assert counts == {"real": 13, "fake": 18}  # the C06 train split; pos_weight = 13/18
    assert counts["real"] / counts["fake"] == pytest.approx(0.7222, abs=1e-4)
    assert all(train[i] is not None for i in range(len(train)))
    assert not [r for r in caplog.records if r.name.startswith("bnn")]  # nor an "unknown folder"


@pytest.mark.parametrize(
    "names",
    [
        ("Training", "Validation", "Testing", "Real", "Fake"),
        ("TRAIN", "DEV", "TEST", "0_real", "1_fake"),
        ("train", "valid", "testing", "nature", "ai"),
        ("Train", "VAL", "Test", "REAL", "FAKE"),
    ],
)
def test_folder_names_in_any_case_and_synonyms(tmp_path: Path, names):
    train, val, test, real, fake = names
    root = tmp_path / "tree"
    class_tree(root / train, 4, 3, real=real, fake=fake)
    class_tree(root / val, 2, 1, real=real, fake=fake)
    class_tree(root / test, 1, 2, real=real, fake=fake)
    counts = {s: create_dataset("folder", s, root=root).class_counts() for s in ("train", "val", "test")}
    assert counts == {
        "train": {"real": 4, "fake": 3},
        "val": {"real": 2, "fake": 1},
        "test": {"real": 1, "fake": 2},
    }
    ds = create_dataset("folder", "test", root=root)
    assert all(label == (Path(p).parent.name == fake) for p, label in ds.items)


def test_folder_two_names_for_one_role_is_a_layout_error(tmp_path: Path):
    root = tmp_path / "tree"
    class_tree(root / "test", 1, 1)
    write_image(root / "test" / "real" / "x.png")
    with pytest.raises(DatasetLayoutError, match="'REAL' and 'real'.*REAL class"):
        create_dataset("folder", "test", root=root)
    class_tree(tmp_path / "two" / "val", 1, 1)
    class_tree(tmp_path / "two" / "validation", 1, 1)
    with pytest.raises(DatasetLayoutError, match="val split"):
        create_dataset("folder", "train", root=tmp_path / "two")


def test_folder_unrecognised_folders_and_loose_images_are_warned(tmp_path: Path, caplog):
    root = tmp_path / "tree"
    class_tree(root / "train", 3, 3)
    class_tree(root / "test", 2, 2)
    write_image(root / "train" / "generated" / "g.png")  # a third class? not read, but said
    write_image(root / "train" / "loose.png")
    write_image(root / "extras" / "REAL" / "e.png")
    with caplog.at_level(logging.WARNING, logger="bnn.data"):
        ds = create_dataset("folder", "train", root=root, val_fraction=0.0)
        create_dataset("folder", "train", root=root, val_fraction=0.0)  # once per message
    assert ds.class_counts() == {"real": 3, "fake": 3}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert any(f"'{root / 'train' / 'generated'}': not a class folder" in m and "0_real" in m for m in messages)
    assert any(f"'{root / 'extras'}': not a split folder" in m and "validation" in m for m in messages)
    assert any(f"1 image file(s) lying directly in '{root / 'train'}'" in m for m in messages)


def test_folder_one_class_tree_is_read_with_a_warning(tmp_path: Path, caplog):
    root = tmp_path / "fakes"
    class_tree(root / "test", 0, 5)
    (root / "test" / "REAL").mkdir()
    (root / "test" / "REAL" / "._0.png").write_bytes(APPLEDOUBLE)  # only clutter: no real image
    with caplog.at_level(logging.WARNING, logger="bnn.data"):
        ds = create_dataset("folder", "test", root=root)
    assert ds.class_counts() == {"real": 0, "fake": 5}
    assert any("no image files in" in r.getMessage() and "one class only" in r.getMessage() for r in caplog.records)
    (root / "test" / "FAKE").rename(root / "test" / "elsewhere")
    with pytest.raises(DatasetLayoutError, match="no FAKE folder"):
        create_dataset("folder", "test", root=root)
    cifake = tmp_path / "cifake"
    class_tree(cifake / "train", 0, 3)
    class_tree(cifake / "test", 2, 2)
    with pytest.raises(DatasetLayoutError, match="no REAL folder"):  # CIFAKE always has both
        create_dataset("cifake", "train", root=cifake)


# ---------------------------------------------------------------- COCOFake


@pytest.fixture
def coco_roots(tmp_path: Path) -> tuple[Path, Path]:
    coco, fake = tmp_path / "coco2014", tmp_path / "cocofake"
    for year, n in (("train2014", 30), ("val2014", 4)):
        for i in range(n):
            stem = f"COCO_{year}_{i:012d}"
            write_image(coco / year / f"{stem}.jpg", seed=i, mode="L" if i == 1 else "RGB")
            for k in range(5):
                write_image(fake / year / stem / f"{k}.jpg", seed=100 * i + k)
    write_image(coco / "train2014" / "COCO_train2014_without_fakes.jpg")
    write_corrupt(fake / "val2014" / "COCO_val2014_000000000002" / "4.jpg")
    return coco, fake


def test_cocofake_splits(coco_roots):
    coco, fake = coco_roots
    ds = {
        s: create_dataset("cocofake", s, root=coco, fake_root=fake)
        for s in ("train", "val", "test")
    }
    assert ds["test"].class_counts() == {"real": 4, "fake": 20}
    assert "val2014" in ds["test"].describe()
    assert all("val2014" in p for p, _ in ds["test"].items)
    ids = {}
    for split in ("train", "val"):
        counts = ds[split].class_counts()
        assert counts["fake"] == 5 * counts["real"]
        for path, label in ds[split].items:
            image_id = Path(path).stem if label == 0 else Path(path).parent.name
            assert ids.setdefault(image_id, split) == split  # an image and its fakes together
            assert "train2014" in path
    assert len(ids) == 30 and "without_fakes" not in str(ids)
    assert ds["train"].class_counts()["real"] + ds["val"].class_counts()["real"] == 30
    assert "5% of train2014" in ds["val"].describe()
    test = ds["test"]
    broken = next(i for i, (p, _) in enumerate(test.items) if p.endswith("000000000002/4.jpg"))
    assert test[broken] is None
    assert test[0] is not None and test[0][0].shape == (3, 224, 224)


def test_cocofake_val_fraction_and_seed(coco_roots):
    coco, fake = coco_roots

    def val_ids(**kw) -> set[str]:
        ds = create_dataset("cocofake", "val", root=coco, fake_root=fake, **kw)
        return {Path(p).stem for p, label in ds.items if label == 0}

    big = val_ids(val_fraction=0.5)
    assert big == val_ids(val_fraction=0.5) and 5 < len(big) < 25
    assert big != val_ids(val_fraction=0.5, seed=1)


def test_cocofake_env_and_missing_real(coco_roots, monkeypatch):
    coco, fake = coco_roots
    monkeypatch.setenv("BNN_DATA_COCO2014", str(coco))
    monkeypatch.setenv("BNN_DATA_COCOFAKE", str(fake))
    assert len(create_dataset("cocofake", "test")) == 24
    (coco / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        create_dataset("cocofake", "test")
    message = str(error.value)
    assert "COCO_val2014_000000000003.jpg" in message and str(coco / "val2014") in message
    assert "cocodataset.org" in message and "Parents and Children" in message
    monkeypatch.delenv("BNN_DATA_COCOFAKE")
    with pytest.raises(DatasetLayoutError, match="BNN_DATA_COCOFAKE"):
        create_dataset("cocofake", "train")


def test_cocofake_clutter_folders_are_not_image_ids(coco_roots):
    coco, fake = coco_roots
    write_image(fake / "val2014" / ".ipynb_checkpoints" / "0.jpg")  # would need a real '.ipynb...jpg'
    (fake / "val2014" / "__MACOSX" / "COCO_val2014_000000000000").mkdir(parents=True)
    (fake / "val2014" / "__MACOSX" / "COCO_val2014_000000000000" / "._0.jpg").write_bytes(APPLEDOUBLE)
    (fake / "val2014" / "COCO_val2014_000000000000" / "._0.jpg").write_bytes(APPLEDOUBLE)
    ds = create_dataset("cocofake", "test", root=coco, fake_root=fake)
    assert ds.class_counts() == {"real": 4, "fake": 20}


# ---------------------------------------------------------------- DFFD


def test_dffd_splits(dffd_root: Path):
    for split in ("train", "val", "test"):
        ds = create_dataset("dffd", split, root=dffd_root, resolution=8)
        extra = 1 if split == "test" else 0
        assert ds.class_counts() == {"real": 3 + 2, "fake": 12 + extra}
        celeba = sorted(Path(p).name for p, _ in ds.items if "img_align_celeba" in p)
        index = {"train": 0, "val": 1, "test": 2}[split]
        assert celeba == [f"{i + 1:06d}.jpg" for i in range(index, 9, 3)]
        folder = "validation" if split == "val" else split
        assert all(f"/{folder}/" in p for p, _ in ds.items if "img_align_celeba" not in p)
        assert all(ds[i] is not None for i in range(len(ds)))
        assert f"DFFD {split}" in ds.describe()


def test_dffd_layout_errors(dffd_root: Path, monkeypatch):
    monkeypatch.setenv("BNN_DATA_DFFD", str(dffd_root))
    assert len(create_dataset("dffd", "val")) == 17
    (dffd_root / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="000002.jpg"):
        create_dataset("dffd", "val")
    for path in (dffd_root / "faceapp" / "test").iterdir():
        path.unlink()
    with pytest.raises(DatasetLayoutError, match="no image files") as error:
        create_dataset("dffd", "test")
    assert str(dffd_root / "faceapp" / "test") in str(error.value)
    (dffd_root / "faceapp" / "test").rmdir()
    with pytest.raises(DatasetLayoutError, match="missing folder"):
        create_dataset("dffd", "test")
    assert len(create_dataset("dffd", "train")) == 17  # other splits unaffected
    (dffd_root / "img_align_celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        create_dataset("dffd", "train")
    message = str(error.value)
    assert "list_eval_partition.txt" in message and "cvlab.cse.msu.edu/dffd" in message
    assert "BNN_DATA_DFFD" in message


# ---------------------------------------------------------------- transforms


def test_transforms_shapes_and_range():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8))
    for train in (True, False):
        out = build_transform(32, train=train)(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    tiny = Image.new("RGB", (5, 7), (10, 200, 30))
    for train in (True, False):
        assert build_transform(24, train=train)(tiny).shape == (3, 24, 24)
    evaluate = build_transform(32, train=False)
    assert torch.equal(evaluate(image), evaluate(image))


def test_train_rotation_never_fills_black():
    white = Image.new("RGB", (90, 40), (255, 255, 255))  # non-square: a plain rotation would fill
    train = build_transform(32, train=True)
    for _ in range(20):
        assert train(white).min() > 0.5


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_load_rgb_modes(tmp_path: Path, mode: str):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((9, 11), 65535, dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(np.full((9, 11), 65535, dtype=np.int32), mode="I")
    elif mode == "F":
        image = Image.fromarray(np.full((9, 11), 1.0, dtype=np.float32), mode="F")
    elif mode == "P":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    suffix = {"CMYK": ".jpg", "YCbCr": ".jpg", "F": ".tif", "I": ".tif"}.get(mode, ".png")
    path = tmp_path / f"image{suffix}"
    image.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (11, 9)
    if mode in ("I;16", "I", "F"):
        assert np.asarray(out).min() == 255  # full scale maps to white, not clipped garbage


# ---------------------------------------------------------------- synthetic benchmark


SMALL = {"count": 64, "resolution": 32, "difficulty": 0.5, "seed": 0}


def test_synthetic_is_deterministic(tmp_path: Path):
    a = generate_synthetic(tmp_path / "a", **SMALL)
    b = generate_synthetic(tmp_path / "b", **SMALL)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files_a) == 64
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["params"] == {"seed": 0, "count": 64, "resolution": 32, "difficulty": 0.5}
    assert meta["splits"] == {
        "train": {"real": 22, "fake": 22},
        "val": {"real": 5, "fake": 5},
        "test": {"real": 5, "fake": 5},
    }
    with Image.open(next(a.rglob("*.png"))) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    c = generate_synthetic(tmp_path / "a", **{**SMALL, "seed": 1})
    assert c != a and (c / "train" / "FAKE").is_dir()
    first = sorted((a / "train" / "REAL").iterdir())[0].name
    assert (a / "train" / "REAL" / first).read_bytes() != (
        c / "train" / "REAL" / first
    ).read_bytes()


def test_synthetic_cache_hit_and_regeneration(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    folder = generate_synthetic(**SMALL)
    assert folder.parent == tmp_path / "cache" / "synthetic"

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synthetic_module, "_render", fail)
    assert generate_synthetic(**SMALL) == folder
    ds = create_dataset("synthetic", "test", count=64, image_size=32, resolution=16)
    assert ds.root == folder and ds.class_counts() == {"real": 5, "fake": 5}
    assert "synthetic benchmark (generated locally, seed=0, difficulty=0.5" in ds.describe()
    assert str(folder) in ds.describe()
    monkeypatch.undo()

    (folder / "meta.json").unlink()
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    assert generate_synthetic(**SMALL) == folder and (folder / "meta.json").is_file()


def test_synthetic_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    calls = []
    real_save = synthetic_module._save

    def flaky_save(image, path):
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt
        real_save(image, path)

    monkeypatch.setattr(synthetic_module, "_save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def _load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) float in [0, 1] and labels (N,) of one generated split."""
    images, labels = [], []
    for name, label in (("REAL", 0), ("FAKE", 1)):
        for path in sorted((folder / split / name).glob("*.png")):
            images.append(np.asarray(Image.open(path), dtype=np.float64) / 255.0)
            labels.append(label)
    return np.stack(images), np.array(labels)


def _logistic_regression(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Fits a standardised L2 logistic regression (LBFGS) and returns test predictions."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    a = torch.tensor((x - mean) / std)
    b = torch.tensor((x_test - mean) / std)
    target = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, target)
        loss = loss + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (b @ w + bias > 0).long().numpy()


@pytest.mark.integration
def test_synthetic_channel_statistics_carry_no_label(tmp_path: Path):
    folder = generate_synthetic(tmp_path, seed=0, count=600, resolution=32, difficulty=0.0)
    features = {}
    for split in ("train", "val", "test"):
        images, labels = _load_split(folder, split)
        stats = np.concatenate(
            [images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1
        )  # (N, 6)
        features[split] = (stats, labels)
    x_test = np.concatenate([features["val"][0], features["test"][0]])
    y_test = np.concatenate([features["val"][1], features["test"][1]])
    predictions = _logistic_regression(*features["train"], x_test)
    assert (predictions == y_test).mean() <= 0.65


def _periodic_energy(images: np.ndarray) -> np.ndarray:
    """log share of spectral power at the highest frequencies (max(|fx|, |fy|) >= 0.4), (N,)."""
    grey = images.mean(axis=-1)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2  # (N, H, W)
    freq = np.abs(np.fft.fftfreq(grey.shape[1]))
    band = np.maximum(freq[:, None], freq[None, :]) >= 0.4
    return np.log(power[:, band].sum(axis=1) / power.sum(axis=(1, 2)))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores[labels == 1][:, None] > scores[labels == 0][None, :]).mean())


def test_synthetic_fakes_carry_a_spectral_trace(tmp_path: Path):
    aucs = {}
    for difficulty in (0.0, 1.0):
        folder = generate_synthetic(tmp_path, count=200, resolution=32, difficulty=difficulty)
        images, labels = _load_split(folder, "train")
        aucs[difficulty] = _auc(_periodic_energy(images), labels)
    assert aucs[0.0] >= 0.8  # strong upsampling artifacts
    assert abs(aucs[1.0] - 0.5) <= 0.15  # difficulty 1: almost none
