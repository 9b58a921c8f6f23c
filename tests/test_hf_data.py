"""The ``hf`` dataset (bnn.data.hf) on Hugging Face datasets written here: a parquet tree in the
Hub's layout, a ``save_to_disk`` folder, a set with a ``generator`` column; listings, split_map and
val carving, the label rules, the errors, the cache, and a study and the audit end to end.

The Hub is never reached: every test runs in offline mode with its own Hugging Face cache.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bnn.data import DatasetLayoutError, DatasetParamError, create_dataset
from bnn.data import hf as hf_module
from bnn.data.hf import HubDatasetError
from bnn.errors import KeyedValueError

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Offline mode, a private Hugging Face cache and a private bnn cache for every test."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "bnn-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-home" / "datasets")


# ---------------------------------------------------------------- writing datasets


def image_bytes(seed: int, fmt: str, size: int = 16) -> bytes:
    """A distinct small image (upsampled noise, so JPEGs stay small) as ``fmt`` bytes."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize((size, size), Image.BILINEAR).save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def make_split(n_real: int, n_fake: int, offset: int, *, names=("FAKE", "REAL"), generators=None,
               label_feature=None, labels=None):
    """A ``datasets.Dataset``: reals as JPEG, then fakes as PNG, a ClassLabel ``label`` (``names``,
    default in alphabetical order: FAKE = 0), or ``label_feature`` with ``labels``, and a
    ``generator`` column when ``generators`` (cycled over the fakes) is given."""
    rows = {"image": [], "label": []}
    fake_index = [n.casefold() for n in names].index("fake")
    real_index = 1 - fake_index
    for i in range(n_real):
        rows["image"].append({"bytes": image_bytes(offset + i, "JPEG"), "path": f"real_{offset + i}.jpg"})
        rows["label"].append(real_index)
    for i in range(n_fake):
        rows["image"].append({"bytes": image_bytes(10_000 + offset + i, "PNG"), "path": f"fake_{offset + i}.png"})
        rows["label"].append(fake_index)
    features = {"image": datasets.Image(), "label": label_feature or datasets.ClassLabel(names=list(names))}
    if labels is not None:
        rows["label"] = labels
    if generators is not None:
        rows["generator"] = ["real"] * n_real + [generators[i % len(generators)] for i in range(n_fake)]
        features["generator"] = datasets.Value("string")
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def hub_parquet_tree(root: Path, n: int = 20) -> Path:
    """The Hub's parquet layout: ``data/train-0000{0,1}-of-00002.parquet`` (two shards) and
    ``data/test-00000-of-00001.parquet``; no validation split."""
    (root / "data").mkdir(parents=True)
    train = make_split(n, n, 0)
    half = len(train) // 2
    train.select(range(half)).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"))
    train.select(range(half, len(train))).to_parquet(str(root / "data" / "train-00001-of-00002.parquet"))
    make_split(4, 5, 500).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nlicense: mit\n---\n# a tiny real/fake set\n")
    return root


def disk_folder(root: Path) -> Path:
    """A ``save_to_disk`` DatasetDict with train/validation/test, labels real/fake and a generator column."""
    splits = {"train": make_split(6, 6, 0, names=("real", "fake"), generators=["sd14", "midjourney"]),
              "validation": make_split(3, 4, 100, names=("real", "fake"), generators=["sd14", "midjourney"]),
              "test": make_split(2, 4, 200, names=("real", "fake"), generators=["sd14", "dalle3"])}
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return hub_parquet_tree(tmp_path / "tiny-cifake")


def listing(split: str, **params):
    return hf_module.read_hf(split, None, **params)


# ---------------------------------------------------------------- listings


def test_parquet_tree_in_the_hub_layout_lists_every_split_with_its_labels_and_formats(tree):
    train = create_dataset("hf", "train", path=str(tree), resolution=16)
    val = create_dataset("hf", "val", path=str(tree), resolution=16)
    test = create_dataset("hf", "test", path=str(tree), resolution=16)
    assert test.class_counts() == {"real": 4, "fake": 5}
    assert len(train) + len(val) == 40 and 0 < len(val) < 12
    assert not {p for p, _ in train.items} & {p for p, _ in val.items}
    counts = {k: train.class_counts()[k] + val.class_counts()[k] for k in ("real", "fake")}
    assert counts == {"real": 20, "fake": 20}  # FAKE is ClassLabel index 0: mapped by name, not by index
    for path, label in [*train.items, *val.items, *test.items]:
        with Image.open(path) as image:
            assert image.format == ("PNG" if label == 1 else "JPEG")  # the stored bytes, not re-encoded
    assert set(train.sources) == {"real", "fake"}
    assert "held out" in val.describe() and str(tree) in val.describe()
    first, label = test.items[0]
    assert label == 0 and Path(first).read_bytes() == image_bytes(500, "JPEG")
    image, y, _ = test[0]
    assert image.shape == (3, 16, 16) and y == 0


def test_val_is_carved_by_the_cifake_rule_and_seeded(tree):
    from bnn.data.folder import carve

    def val_paths(seed):
        return [p for p, _ in listing("val", path=str(tree), seed=seed).items]

    assert val_paths(0) == val_paths(0) and val_paths(0) != val_paths(1)
    whole = listing("train", path=str(tree), split_map={"train": "train", "val": "train"})
    folder = whole.roots[0]
    expected = carve(whole.items, folder, 0, {"val": 0.1, "train": 0.9}, "val")
    assert [p for p, _ in expected] == val_paths(0)
    assert len(listing("val", path=str(tree), val_fraction=0.5).items) > len(val_paths(0))


def test_a_single_split_set_carves_val_and_test_and_a_single_parquet_file_reads(tmp_path):
    file = tmp_path / "one.parquet"
    make_split(20, 20, 0).to_parquet(str(file))
    parts = {s: listing(s, path=str(file), val_fraction=0.2, test_fraction=0.3) for s in ("train", "val", "test")}
    paths = [p for part in parts.values() for p, _ in part.items]
    assert len(paths) == len(set(paths)) == 40
    assert all(len(part.items) > 0 for part in parts.values())
    assert "30% held out" in parts["test"].description


def test_save_to_disk_folder_with_validation_split_and_per_source_names(tmp_path):
    root = disk_folder(tmp_path / "disk")
    train = create_dataset("hf", "train", path=str(root), source_column="generator")
    val = create_dataset("hf", "val", path=str(root), source_column="generator")
    test = create_dataset("hf", "test", path=str(root), source_column="generator")
    assert (len(train), len(val), len(test)) == (12, 7, 6)  # validation read as val, nothing carved
    assert "held out" not in val.describe()
    assert set(test.sources) == {"real", "sd14", "dalle3"}
    assert test.source_by_path()[test.items[-1][0]] == "dalle3"  # fakes cycle sd14, dalle3, sd14, dalle3
    assert [s for (_, y), s in zip(train.items, train.sources, strict=True) if y == 0] == ["real"] * 6
    assert {s for (_, y), s in zip(train.items, train.sources, strict=True) if y == 1} == {"sd14", "midjourney"}


def test_split_map_maps_suite_splits_to_the_dataset_splits(tmp_path):
    root = disk_folder(tmp_path / "disk")
    swapped = {"val": "test", "test": "validation"}
    assert len(listing("val", path=str(root), split_map=swapped).items) == 6
    assert len(listing("test", path=str(root), split_map=swapped).items) == 7
    with pytest.raises(KeyedValueError, match="split_map") as error:
        listing("test", path=str(root), split_map={"test": "holdout"})
    assert "holdout" in str(error.value) and "train, validation, test" in str(error.value)


def test_a_plain_label_column_and_multi_valued_labels(tmp_path):
    plain = make_split(5, 5, 0, label_feature=datasets.Value("int64"), labels=[0] * 5 + [1] * 5)
    plain.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(KeyedValueError) as error:
        listing("train", path=str(tmp_path / "plain"))
    message = str(error.value)
    assert message.startswith("data_params.fake_label: ") and "found 0, 1" in message and "\n" not in message
    got = listing("train", path=str(tmp_path / "plain"), fake_label=1, val_fraction=0.0, test_fraction=0.0)
    assert [y for _, y in got.items] == [0] * 5 + [1] * 5
    flipped = listing("train", path=str(tmp_path / "plain"), real_label=1, val_fraction=0.0, test_fraction=0.0)
    assert [y for _, y in flipped.items] == [1] * 5 + [0] * 5

    kinds = ["real"] * 4 + ["sd14", "sd14", "midjourney", "dalle3"]
    multi = make_split(4, 4, 0, label_feature=datasets.Value("string"), labels=kinds)
    multi.save_to_disk(str(tmp_path / "multi"))
    with pytest.raises(KeyedValueError, match="sd14"):
        listing("train", path=str(tmp_path / "multi"))
    got = listing("train", path=str(tmp_path / "multi"), real_label="real", source_column="label",
                  val_fraction=0.0, test_fraction=0.0)
    assert [y for _, y in got.items] == [0] * 4 + [1] * 4 and got.sources == kinds


def test_a_label_column_is_found_by_name_before_another_classlabel_column(tmp_path):
    rows = {"image": [{"bytes": image_bytes(i, "PNG"), "path": None} for i in range(4)],
            "label": ["0", "0", "1", "1"], "generator": [0, 0, 1, 2]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                                  "generator": datasets.ClassLabel(names=["none", "sd14", "dalle3"])})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "set"))
    got = listing("train", path=str(tmp_path / "set"), fake_label=1, source_column="generator",
                  val_fraction=0.0, test_fraction=0.0)  # the integer 1 names the string "1"
    assert [y for _, y in got.items] == [0, 0, 1, 1] and got.sources == ["none", "none", "sd14", "dalle3"]


def test_classlabel_names_are_matched_in_any_case_and_a_wrong_name_is_refused(tree):
    assert listing("test", path=str(tree), fake_label="fake").items == listing("test", path=str(tree)).items
    assert [y for _, y in listing("test", path=str(tree), fake_label=0).items] == [0] * 4 + [1] * 5  # index 0 = FAKE
    with pytest.raises(KeyedValueError, match=r"data_params.fake_label: 'FAKEE' is none of .*0=FAKE, 1=REAL"):
        listing("test", path=str(tree), fake_label="FAKEE")


def test_unknown_columns_name_the_key_and_the_columns(tmp_path, tree):
    with pytest.raises(KeyedValueError) as error:
        listing("test", path=str(tree), image_column="picture")
    assert str(error.value).startswith("data_params.image_column: no column 'picture'")
    assert "image (Image)" in str(error.value) and "label (ClassLabel)" in str(error.value)
    with pytest.raises(KeyedValueError, match="data_params.label_column: no column 'is_fake'"):
        listing("test", path=str(tree), label_column="is_fake")
    with pytest.raises(KeyedValueError, match="data_params.source_column: no column 'generator'"):
        listing("test", path=str(tree), source_column="generator")
    with pytest.raises(KeyedValueError, match="data_params.image_column: column 'label' holds"):
        listing("test", path=str(tree), image_column="label")


def test_missing_hub_dataset_offline_is_one_line_naming_it_and_how_to_get_it(tmp_path, capsys):
    with pytest.raises(DatasetLayoutError) as error:
        listing("test", path="someone/not-cached-anywhere")
    message = str(error.value)
    assert "\n" not in message and "'someone/not-cached-anywhere'" in message and "offline" in message
    assert "datasets.load_dataset('someone/not-cached-anywhere')" in message

    from bnn.__main__ import main

    assert main(["audit", "--dataset", "hf", "--set", "data_params={path: someone/not-cached-anywhere}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data missing: Hugging Face dataset 'someone/not-cached-anywhere'")
    assert len(err.splitlines()) == 1


def test_a_hub_name_goes_to_load_dataset_without_remote_code(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": make_split(6, 6, 0), "test": make_split(2, 2, 50)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = listing("test", path="someone/tiny-cifake", config="default", revision="v1.0")
    assert calls == [("someone/tiny-cifake", {"name": "default", "revision": "v1.0"})]
    assert len(got.items) == 4 and "someone/tiny-cifake (default)@v1.0" in got.description

    def script_dataset(path, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found tiny.py")

    monkeypatch.setattr(datasets, "load_dataset", script_dataset)
    with pytest.raises(HubDatasetError, match="refused"):
        listing("test", path="someone/scripted")


def test_a_local_loading_script_is_refused_before_anything_is_read(tree):
    (tree / "tiny-cifake.py").write_text("raise SystemExit('must never run')\n")
    with pytest.raises(HubDatasetError, match=r"loading script \(tiny-cifake.py\).*refused"):
        listing("test", path=str(tree))


def test_local_paths_that_do_not_exist_and_nothing_named(tmp_path, monkeypatch):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        hf_module.read_hf("test", tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="does not exist and is not a Hub name"):
        listing("test", path=str(tmp_path / "nowhere"))
    monkeypatch.delenv("BNN_DATA_HF", raising=False)
    with pytest.raises(DatasetLayoutError, match="BNN_DATA_HF"):
        listing("test")
    (tmp_path / "images" / "REAL").mkdir(parents=True)
    (tmp_path / "images" / "REAL" / "a.png").write_bytes(image_bytes(1, "PNG"))
    with pytest.raises(HubDatasetError, match="imagefolder.*dataset: folder"):
        listing("test", path=str(tmp_path / "images"))


def test_data_root_and_the_environment_variable_name_local_data(tree, monkeypatch):
    assert len(hf_module.read_hf("test", tree).items) == 9
    monkeypatch.setenv("BNN_DATA_HF", str(tree))
    assert len(listing("test").items) == 9
    with pytest.raises(KeyedValueError, match="named twice"):
        hf_module.read_hf("test", tree, path=str(tree))


# ---------------------------------------------------------------- parameters checked without files


@pytest.mark.parametrize("params, key, words", [
    ({"split_map": {"validation": "val"}}, "split_map", "unknown suite split 'validation'; valid: train, val, test"),
    ({"split_map": ["train"]}, "split_map", "a mapping"),
    ({"fake_label": 0.5}, "fake_label", "a label value"),
    ({"fake_label": []}, "fake_label", "non-empty list"),
    ({"image_column": ""}, "image_column", "non-empty string"),
    ({"val_fraction": 1.5}, "val_fraction", "[0, 1)"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction", "must be < 1"),
])
def test_check_params_names_the_key_and_what_is_valid(params, key, words):
    with pytest.raises(KeyedValueError) as error:
        hf_module.check_params(params)
    assert error.value.key == key and words in error.value.detail


def test_fit_config_checks_hf_params_where_they_are_written():
    from pydantic import ValidationError

    from bnn.config import FitConfig
    from bnn.errors import validation_message

    with pytest.raises(ValidationError) as error:
        FitConfig(dataset="hf", data_params={"path": "x/y", "split_map": {"dev": "validation"}})
    assert validation_message(error.value).startswith("data_params.split_map: unknown suite split 'dev'")
    with pytest.raises(ValidationError) as error:
        FitConfig(dataset="hf", data_params={"path": "x/y", "image_col": "img"})
    assert "image_column" in validation_message(error.value)
    with pytest.raises(DatasetParamError, match="label_column"):
        create_dataset("hf", "test", path="x/y", labels="label")


# ---------------------------------------------------------------- the cache


def test_materialised_once_reused_and_written_again_when_the_data_changes(tree):
    first = listing("test", path=str(tree))
    folder = first.roots[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["split"] == "test" and len(manifest["files"]) == 9
    stamps = [(folder / "manifest.json").stat().st_mtime_ns, Path(first.items[0][0]).stat().st_mtime_ns]
    again = listing("test", path=str(tree), fake_label="FAKE")  # another label reading, the same files
    assert again.items == first.items
    assert stamps == [(folder / "manifest.json").stat().st_mtime_ns, Path(first.items[0][0]).stat().st_mtime_ns]
    make_split(3, 3, 900).to_parquet(str(tree / "data" / "test-00000-of-00001.parquet"))
    changed = listing("test", path=str(tree))
    assert changed.roots[0] != folder and len(changed.items) == 6
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]


def test_an_interrupted_materialisation_leaves_nothing(tree, monkeypatch):
    original, calls = hf_module._image_bytes, []

    def interrupted(value, roots):
        calls.append(value)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(value, roots)

    monkeypatch.setattr(hf_module, "_image_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        listing("test", path=str(tree))
    assert list((hf_module.cache_dir() / "hf").iterdir()) == []
    monkeypatch.setattr(hf_module, "_image_bytes", original)
    assert len(listing("test", path=str(tree)).items) == 9


def test_rows_without_bytes_become_unreadable_images_and_paths_outside_are_not_read(tmp_path, caplog):
    inside = tmp_path / "set" / "extra.png"
    inside.parent.mkdir()
    inside.write_bytes(image_bytes(7, "PNG"))
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(8, "PNG"))
    rows = {"image": [{"bytes": image_bytes(i, "JPEG"), "path": None} for i in range(4)]
            + [{"bytes": None, "path": str(inside)}, {"bytes": None, "path": str(secret)},
               None],
            "label": ["real"] * 4 + ["fake"] * 3}
    rows["label"] = [0] * 4 + [1] * 3
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["real", "fake"])})
    # Written by pyarrow: datasets' own writers would embed the path-only images' bytes.
    pq.write_table(pa.Table.from_pydict(rows, schema=features.arrow_schema), tmp_path / "set" / "train.parquet")
    with caplog.at_level(logging.WARNING, logger="bnn.data.hf"):
        ds = create_dataset("hf", "train", path=str(tmp_path / "set"), val_fraction=0.0, test_fraction=0.0,
                            resolution=16)
    assert len(ds) == 7
    assert Path(ds.items[4][0]).read_bytes() == inside.read_bytes() and ds[4] is not None
    assert [Path(p).suffix for p, _ in ds.items[5:]] == [".missing", ".missing"]
    assert ds[5] is None and ds[6] is None
    assert any("2 rows without usable image bytes" in r.getMessage() for r in caplog.records)


def test_absurd_sizes_and_unlabelled_rows_are_refused(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_module, "MAX_ROWS", 5)
    with pytest.raises(HubDatasetError, match="has 9 rows; at most 5"):
        listing("test", path=str(tree))
    monkeypatch.setattr(hf_module, "MAX_ROWS", 20_000_000)
    unlabelled = make_split(3, 3, 0, labels=[0, 1, -1, -1, 0, 1])
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(HubDatasetError, match="2 of 6 rows have no label"):
        listing("train", path=str(tmp_path / "unlabelled"))


# ---------------------------------------------------------------- end to end


def test_the_audit_runs_on_a_parquet_tree_and_sees_the_stored_formats(tree, capsys):
    from bnn.__main__ import main

    assert main(["audit", "--dataset", "hf", "--set", f"data_params={{path: '{tree}'}}", "--set", "resolution=16",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_stats"]["test"]["real"]["format"] == {"JPEG": 4}
    assert report["class_stats"]["test"]["fake"]["format"] == {"PNG": 5}
    assert report["separation"]["format"] == 1.0 and report["duplicate_pairs"] == {}
    assert "Hugging Face dataset" in report["data"]["train"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_one_cell_study_runs_end_to_end_on_a_parquet_tree(tmp_path, monkeypatch, capsys):
    import mlflow

    from studies.__main__ import main as studies_main

    root = hub_parquet_tree(tmp_path / "tiny-set", n=24)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNN_LATENCY", "off")
    monkeypatch.setenv("BNN_DATA_HF", str(root))
    (tmp_path / "s.yaml").write_text(
        "name: hf_tiny\ndataset: hf\ndata_root: ${BNN_DATA_HF}\n"
        "data_params: {val_fraction: 0.25, seed: 1}\n"
        "defaults: {backbone: bnext_micro, features: rgb, resolution: 16, epochs: 1, batch_size: 8}\n"
        f"tracking_uri: sqlite:///{tmp_path}/mlflow.db\nstorage: sqlite:///{tmp_path}/optuna.db\n")
    assert studies_main(["validate", "s.yaml"]) == 0
    assert studies_main(["run", "s.yaml", "--quiet"]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("hf_tiny").experiment_id],
                                filter_string="tags.`bnn.role` = 'cell'")
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == "hf"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.metrics["audit_dropped_train"] == 0.0
    assert "Hugging Face dataset" in run.data.tags["bnn.data"]
