"""Bad input, whole kinds at once: every odd file is one ``UnreadableImage`` for every entry point
(``load_rgb``, ``ImageDataset``, ``python -m bnn detect``), folder clutter is never listed, and a
one-class tree evaluates with the metrics that are defined.

Odd files are written here byte by byte, after Pillow's own test images (python-pillow/Pillow
``Tests/images``: ``bmp/b/reallybig.bmp``, ``bmp/q/pal8oversizepal.bmp``, ``apng/chunk_no_fctl.png``,
``png_decompression_dos.png``, ``seek_too_large.tif``) and what people's disks hold.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from bnn.__main__ import main
from bnn.data import UnreadableImage, create_dataset, load_rgb
from bnn.data import transforms as transforms_module
from bnn.data.layout import is_image, list_images

# ---------------------------------------------------------------- odd files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows, extra=b"") -> bytes:
    """A PNG from its parts; ``raw_rows`` yields filtered scanlines (compressed as they come)."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in raw_rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bomb_png() -> bytes:
    """A valid 20000 x 20000 1-bit PNG of 49 kB: 400 million pixels (400 MB as 8-bit grey)."""
    row = b"\x00" * (1 + 20000 // 8)  # filter byte + 2500 bytes of 8 pixels
    return png_bytes(20000, 20000, 1, 0, (row * 100 for _ in range(200)))


def broken_apng() -> bytes:
    """An APNG whose second frame (``fdAT``) has no ``fcTL`` frame control chunk before it."""
    rows = [b"\x00" + bytes(3 * 8)] * 8
    data = zlib.compress(b"".join(rows))
    actl = png_chunk(b"acTL", struct.pack(">II", 2, 0))
    fdat = png_chunk(b"fdAT", struct.pack(">I", 0) + data)
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + ihdr + actl + png_chunk(b"IDAT", data) + fdat + png_chunk(b"IEND", b"")
    )


def text_bomb_png() -> bytes:
    """A 1 x 1 PNG with a zTXt chunk inflating to 2 MB (Pillow refuses text over 1 MB)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("big", "x" * 2_000_000, zip=True)
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def bmp_bytes(mode: str, size: tuple[int, int]) -> bytearray:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "BMP")
    return bytearray(out.getvalue())


def oversized_palette_bmp() -> bytes:
    """An 8-bit palette BMP whose header (and file) holds 300 colours; a palette has at most 256."""
    width, height, colours = 16, 8, 300
    palette = b"".join(bytes((i % 256, 7, 200, 0)) for i in range(colours))  # BGRX, not grey
    pixels = bytes(width * height)  # rows of 16 bytes need no padding
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, len(pixels), 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def huge_bmp() -> bytes:
    """A 24-bit BMP header claiming 3,000,000 x 2,000,000 pixels on a 16 x 8 file."""
    data = bmp_bytes("RGB", (16, 8))
    data[18:26] = struct.pack("<ii", 3_000_000, 2_000_000)  # biWidth, biHeight
    return bytes(data)


def truncated_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()[:400]


ODD_FILES = {  # name -> (bytes, a word of the reason)
    "empty.png": (b"", "UnidentifiedImageError"),
    "notes.jpg": (b"shopping list: eggs, milk\n", "UnidentifiedImageError"),
    "truncated.png": (truncated_png(), "truncated"),
    "bomb.png": (bomb_png(), "DecompressionBombError"),
    "reallybig.bmp": (huge_bmp(), "DecompressionBombError"),
    "pal8oversizepal.bmp": (oversized_palette_bmp(), "ValueError"),
    "chunk_no_fctl.png": (broken_apng(), "Error"),
    "png_decompression_dos.png": (text_bomb_png(), "Decompressed"),
    "bad_offset.tif": (b"II*\x00" + struct.pack("<I", 0xFFFFFF00), "Error"),
    "seek_too_large.tif": (b"II+\x00\x08\x00\x00\x00" + b"\xff" * 7 + b"\x80", "Error"),
    "strip.png": (png_bytes(1, 200, 8, 0, [b"\x00\x00"] * 200), "aspect ratio"),
}


def write_odd(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(ODD_FILES[name][0])
    return path


def write_ok(path: Path, colour=(40, 160, 90), size=(40, 36)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- one definition of unreadable


@pytest.mark.parametrize("name", sorted(ODD_FILES))
def test_each_odd_file_is_one_unreadable_image(tmp_path: Path, name: str, recwarn):
    path = write_odd(tmp_path, name)
    with pytest.raises(UnreadableImage) as caught:
        load_rgb(path)
    error = caught.value
    assert error.path == str(path) and ODD_FILES[name][1] in error.reason
    assert "\n" not in error.reason and isinstance(error, OSError)
    again = pickle.loads(pickle.dumps(error))  # DataLoader workers send errors across processes
    assert (again.path, again.reason) == (error.path, error.reason)
    assert not [str(w.message) for w in recwarn]  # one line per file: no stray Pillow warning


def test_missing_file_and_folder_are_unreadable(tmp_path: Path):
    with pytest.raises(UnreadableImage, match="FileNotFoundError"):
        load_rgb(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UnreadableImage, match="Error"):
        load_rgb(tmp_path / "folder.png")


def test_pixel_limit_holds_without_pillows_limit(tmp_path: Path, monkeypatch):
    path = write_odd(tmp_path, "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard switched off
    with pytest.raises(UnreadableImage, match="400000000 pixels exceeds the limit of 89478485"):
        load_rgb(path)
    small = write_ok(tmp_path / "small.png", size=(20, 20))
    monkeypatch.setattr(transforms_module, "MAX_PIXELS", 399)
    with pytest.raises(UnreadableImage, match="20x20 = 400 pixels"):
        load_rgb(small)
    monkeypatch.setattr(transforms_module, "MAX_PIXELS", 400)
    assert load_rgb(small).size == (20, 20)


def test_pillow_bomb_warning_is_refused_not_printed(tmp_path: Path, monkeypatch, recwarn):
    path = write_ok(tmp_path / "big.png", size=(30, 30))  # 900 pixels: between 1x and 2x below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with pytest.raises(UnreadableImage, match="DecompressionBombWarning"):
        load_rgb(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_aspect_ratio_limit_is_inclusive(tmp_path: Path):
    path = tmp_path / "long.png"
    path.write_bytes(png_bytes(1, 100, 8, 0, [b"\x00\x00"] * 100))
    assert load_rgb(path).size == (1, 100)


def test_dataset_skips_every_odd_file_and_keeps_the_rest(tmp_path: Path, caplog):
    root = tmp_path / "tree"
    for i in range(2):
        write_ok(root / "REAL" / f"ok{i}.png", colour=(30 * i, 100, 100))
        write_ok(root / "FAKE" / f"ok{i}.png", colour=(100, 30 * i, 100))
    for name in ODD_FILES:
        write_odd((root / "FAKE"), name)
    ds = create_dataset("folder", "train", root=root, resolution=16, train_fraction=1.0, val_fraction=0.0)
    assert len(ds) == 4 + len(ODD_FILES)
    with caplog.at_level(logging.WARNING, logger="bnn.data.dataset"):
        samples = {Path(ds.items[i][0]).name: ds[i] for i in range(len(ds))}
    assert {n for n, s in samples.items() if s is None} == set(ODD_FILES)
    assert all(samples[f"ok{i}.png"][0].shape == (3, 16, 16) for i in range(2))
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warned) == len(ODD_FILES)


# ---------------------------------------------------------------- detect


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random bnext_micro detector at 32 px saved as ``fit`` saves it (no training needed)."""
    from bnn.config import FitConfig
    from bnn.detector import create_detector

    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    detector = create_detector("bnext_micro", "rgb")
    config = FitConfig(backbone="bnext_micro", features="rgb", resolution=32, amp=False)
    torch.save({"model": detector.state_dict(), "config": config.model_dump()}, folder / "best.pt")
    return folder / "best.pt"


def test_detect_reports_each_odd_file_and_predicts_the_rest(tmp_path: Path, checkpoint: Path, capsys):
    folder = tmp_path / "det"
    write_ok(folder / "a_ok.png")
    for name in ODD_FILES:
        (folder / f"b_{name}").write_bytes(ODD_FILES[name][0])
    write_ok(folder / "c_ok.png", colour=(200, 20, 60))
    write_ok(folder / "sub" / "d_ok.jpg", colour=(10, 20, 30))
    # Clutter a Mac, Windows or a NAS leaves: never listed, so never reported or counted.
    (folder / "._a_ok.png").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._c_ok.png").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")

    status = main(["detect", str(folder), "--checkpoint", str(checkpoint), "--json", "--batch-size", "4"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    names = [Path(row["path"]).name for row in rows]
    assert status == 1
    assert names == ["a_ok.png", *[f"b_{n}" for n in sorted(ODD_FILES)], "c_ok.png", "d_ok.jpg"]
    for row in rows:
        if Path(row["path"]).name.startswith("b_"):
            assert set(row) == {"path", "error"} and ODD_FILES[Path(row["path"]).name[2:]][1] in row["error"]
        else:
            assert set(row) == {"path", "prob_fake", "label"} and 0 <= row["prob_fake"] <= 1
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == len(ODD_FILES) and all("b_" in line for line in warnings)
    assert f"{len(ODD_FILES)} of {len(ODD_FILES) + 3} image(s) skipped" in captured.err

    status = main(["detect", str(folder), "--checkpoint", str(checkpoint), "--batch-size", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1 and [line.rsplit("/", 1)[1] for line in lines] == ["a_ok.png", "c_ok.png", "d_ok.jpg"]


def test_detect_exit_zero_without_unreadable_and_error_without_images(tmp_path: Path, checkpoint: Path, capsys):
    folder = tmp_path / "clean"
    write_ok(folder / "one.png")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._one.png").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    assert main(["detect", str(folder), "--checkpoint", str(checkpoint)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "._one.png").write_bytes(b"\x00\x05\x16\x07" + bytes(78))
    assert main(["detect", str(junk), "--checkpoint", str(checkpoint)]) == 2
    assert "no image files" in capsys.readouterr().err


# ---------------------------------------------------------------- one-class trees


def one_class_tree(root: Path, split_tree: bool) -> Path:
    base = root / "test" if split_tree else root
    for i in range(6):
        write_ok(base / "FAKE" / f"{i}.png", colour=(40 * i, 90, 200 - 30 * i))
    return root


@pytest.mark.parametrize("split_tree", [True, False], ids=["split_tree", "bare_tree"])
def test_fake_only_tree_evaluates_with_the_defined_metrics(tmp_path: Path, checkpoint: Path, capsys, split_tree):
    root = one_class_tree(tmp_path / "fakes", split_tree)
    split = "test" if split_tree else "train"  # a bare tree's hash split (80/10/10): train has most
    ds = create_dataset("folder", split, root=root)
    assert ds.class_counts()["real"] == 0 and ds.class_counts()["fake"] == (6 if split_tree else len(ds)) > 0
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder", "--data-root", str(root),
                   "--split", split, "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0
    report = json.loads(captured.out)  # stdout is one JSON document; what was evaluated is on stderr
    assert report["count"] == len(ds) and report["auc"] is None and report["eer"] is None and report["ap"] is None
    assert report["accuracy_real"] is None and report["accuracy"] == report["accuracy_fake"]
    assert 0 <= report["accuracy_fake"] <= 1
    assert "not defined (no real images in this split): auc, eer, ap, accuracy_real" in captured.err
    assert "no stored validation threshold" in captured.err  # saved by hand above, not by fit


def test_training_on_one_class_stays_an_error(tmp_path: Path):
    from bnn.config import FitConfig
    from bnn.train import fit

    root = tmp_path / "fakes"
    for split in ("train", "val", "test"):
        for i in range(3):
            write_ok(root / split / "FAKE" / f"{i}.png", colour=(50 * i, 80, 80))
    config = FitConfig(backbone="bnext_micro", features="rgb", dataset="folder", data_root=str(root), resolution=32,
                       epochs=1, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="train split has no real images"):
        fit(config)


def test_metrics_of_the_one_class_trees_are_finite_where_defined():
    from bnn.metrics import compute_metrics

    m = compute_metrics([1, 1, 1, 1], [0.9, 0.6, 0.4, 0.2])
    assert m.accuracy == m.accuracy_fake == 0.5 and m.count == 4 and m.roc == {}
    assert all(math.isnan(v) for v in (m.auc, m.eer, m.ap, m.accuracy_real))


def test_is_image_and_listing_agree_with_detect(tmp_path: Path):
    write_ok(tmp_path / "a.PNG")
    write_ok(tmp_path / ".hidden" / "b.png")
    write_ok(tmp_path / "@eaDir" / "a.PNG" / "SYNOFILE_THUMB_M.jpg")
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.PNG"]
    assert not is_image("._a.png") and not is_image(".DS_Store") and is_image("x.JPEG")


# ---------------------------------------------------------------- skips with a bound (case C23 kind)


def _tree(root: Path, real: int, fake: int, broken_real: int = 0, broken_fake: int = 0, splits=("train", "val", "test")):
    for split in splits:
        rng = np.random.default_rng(zlib.crc32(split.encode()))  # no image repeats across splits
        for cls, n, broken in (("REAL", real, broken_real), ("FAKE", fake, broken_fake)):
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((36, 40, 3)) * 255).astype("uint8")).save(path)
            for i in range(broken):
                path = root / split / cls / f"broken{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _fit_config(tmp_path: Path, root: Path):
    from bnn.config import FitConfig

    return FitConfig(backbone="bnext_micro", features="rgb", dataset="folder", data_root=str(root), resolution=32,
                     epochs=1, batch_size=8, output_dir=str(tmp_path / "run"))


@pytest.mark.parametrize("real, fake, broken_real, broken_fake, expected", [
    (0, 0, 6, 6, "12 of 12 images could not be read (100%, no real or fake image at all"),
    (10, 10, 2, 2, "4 of 24 images could not be read (17%"),
    (20, 0, 0, 3, "3 of 23 images could not be read (13%, no fake image at all"),
    (40, 0, 0, 2, "2 of 42 images could not be read (5%, no fake image at all"),
])
@pytest.mark.integration
def test_a_split_with_too_many_unreadable_images_fails_with_counts_and_examples(
        tmp_path, real, fake, broken_real, broken_fake, expected):
    from bnn.data import MAX_UNREADABLE_FRACTION, UnreadableSplitError
    from bnn.train import fit

    root = _tree(tmp_path / "tree", real, fake, broken_real, broken_fake, splits=("train",))
    _tree(root, 4, 4, splits=("val", "test"))
    with pytest.raises(UnreadableSplitError) as info:
        fit(_fit_config(tmp_path, root))
    message = str(info.value)
    assert message.startswith("train split of folder: ") and expected in message
    assert f"at most {MAX_UNREADABLE_FRACTION:.0%} may be skipped" in message
    assert "broken0.jpg: " in message and "\n" not in message


def test_a_few_unreadable_images_are_still_skipped_and_counted(tmp_path):
    from bnn.train import fit

    root = _tree(tmp_path / "tree", 12, 12, broken_fake=1, splits=("train",))
    _tree(root, 4, 4, splits=("val", "test"))
    assert fit(_fit_config(tmp_path, root)).skipped_images == 1


@pytest.mark.integration
def test_a_study_whose_training_images_are_all_unreadable_fails_its_cell(tmp_path, monkeypatch, capsys, caplog):
    from studies.__main__ import main as studies_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNN_LATENCY", "off")
    root = _tree(tmp_path / "tree", 0, 0, 5, 5, splits=("train",))
    _tree(root, 4, 4, splits=("val", "test"))
    (tmp_path / "s.yaml").write_text(f"name: unreadable\ndataset: folder\ndata_root: {root}\n"
                                     "defaults: {backbone: bnext_micro, resolution: 32, epochs: 1, batch_size: 8}\n"
                                     f"tracking_uri: sqlite:///{tmp_path}/mlflow.db\nstorage: sqlite:///{tmp_path}/optuna.db\n")
    with caplog.at_level(logging.ERROR, logger="studies.runner"):
        assert studies_main(["run", "s.yaml", "--quiet"]) == 1
    out = capsys.readouterr()
    assert "10 of 10 images could not be read" in " ".join((out.out + out.err).split())
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and all(r.exc_info is None for r in failed)  # the data's fault: one line, no traceback
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unreadable").experiment_id])
    assert [r.info.status for r in runs if r.data.tags.get("cell_id")] == ["FAILED"]


def test_a_non_utf8_file_name_is_read_hashed_by_its_bytes_and_warned_about_once(tmp_path, caplog):
    """Case C16: one Latin-1 name (from an old zip or Windows share) in a folder data set."""
    import hashlib

    from bnn.data.layout import hash_unit
    from bnn.train import fit

    root = _tree(tmp_path / "tree", 10, 10, splits=("train", "val", "test"))
    odd = os.fsencode(root / "train" / "REAL") + b"/caf\xe9.png"
    os.rename(os.fsencode(root / "train" / "REAL" / "0.png"), odd)
    name = os.fsdecode(odd)
    assert hash_unit("caf\udce9.png", 3) == int.from_bytes(hashlib.sha256(b"3:caf\xe9.png").digest()[:8], "big") / 2**64
    with caplog.at_level(logging.WARNING, logger="bnn.data.layout"):
        ds = create_dataset("folder", "train", root=root / "train", resolution=16, train_fraction=1.0, val_fraction=0.0)
    assert name in [p for p, _ in ds.items] and ds[[p for p, _ in ds.items].index(name)] is not None
    assert len(ds.digest()) == 16
    warned = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warned) == 1 and str(root / "train" / "REAL") in warned[0] and "caf\\xe9.png" in warned[0]
    result = fit(_fit_config(tmp_path, root))
    assert result.skipped_images == 0
