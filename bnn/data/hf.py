"""Reader for Hugging Face datasets: a Hub dataset name, a ``save_to_disk`` folder, or parquet
files in the Hub's layout, read with the ``datasets`` library (and pyarrow, which it is built on).

``data_params`` (all optional; ``path`` or ``data_root`` or ``$BNN_DATA_HF`` names the data)::

    path           Hub name (``owner/name``, loaded with ``datasets.load_dataset`` through its cache;
                   offline mode, ``HF_HUB_OFFLINE=1``, is honoured), or a local ``save_to_disk``
                   folder (``datasets.load_from_disk``), a parquet file (one split, ``train``) or a
                   folder of parquet files in the Hub's layout (``data/train-00000-of-00001.parquet``,
                   ``data/test-*.parquet``, ``train/*.parquet``, a README's ``configs:``: the split
                   rules of ``datasets.load_dataset_builder``)
    config         the dataset's configuration (subset), ``name=`` of ``load_dataset``
    revision       a Hub revision (branch, tag or commit), Hub names only
    split_map      suite split -> the dataset's split, e.g. ``{val: validation}``; default: train
                   <- train/training, val <- validation/valid/val/dev, test <- test/testing
    image_column   default: the one ``datasets.Image`` column, else ``image``/``img``
    label_column   default: the one ``datasets.ClassLabel`` column, else ``label``/``labels``
    fake_label     the label value(s) that are fake (a ClassLabel name or index, a raw value, or a
                   list); default: inferred from the names (real/REAL/0_real/nature/... and
                   fake/FAKE/1_fake/ai/generated/...), an error naming the values when they do not
                   say (0/1, True/False)
    real_label     the value(s) that are real; with only one of the two given, every other value
                   is the other class
    source_column  per-image source for per-source metrics (a generator column); default: none
                   (sources ``real`` / ``fake`` by label)
    val_fraction   share of the train split held out as val when the set has no val split (0.1)
    test_fraction  share of the train split held out as test when the set has no test split (0.1)
    seed           seed of those hash splits (0)

Images are materialised once per dataset split into ``$BNN_CACHE_DIR/hf/<key>/`` (default
``~/.cache/bnn``) as the bytes the dataset stores (a JPEG stays that JPEG, a PNG that PNG: the
audit's format and JPEG-quality statistics see the originals), ``<row // 10000>/<row>.<ext>`` with
the extension from the bytes' signature, plus ``manifest.json``. ``<key>`` hashes the dataset's
fingerprint (``Dataset._fingerprint``; for parquet files their paths, sizes and modification
times), the split and the image column, so a changed dataset is written again and another label
reading of the same images reuses the files. A materialisation is written to a temporary folder
and renamed when complete. Labels and sources are read from their columns on every read (the
cache holds images only). The listing is then ordinary files: data digests, the audit, dedupe and
the unreadable-image bound apply unchanged. A row without image bytes (or over
``MAX_IMAGE_BYTES``) becomes an empty ``.missing`` file, an unreadable image like any other.

A missing val (test) split is carved out of train as the ``cifake`` reader does it
(``folder.carve``: a seeded hash of each file's path relative to the materialised folder).

Bounds: at most ``MAX_ROWS`` rows per split, ``MAX_LABEL_VALUES`` distinct labels and
``MAX_SOURCES`` distinct sources; the materialisation must fit the free disk space. No code from a
dataset is run: ``trust_remote_code`` is never passed, and a dataset with a loading script (a
``.py`` file beside its data) is refused. An image that the dataset stores only as a path is read
only from under the dataset's own folder or the Hugging Face cache.

Part of the data layer of the reproduction of Lanzino et al., "Faster Than Lies: Real-time Deepfake
Detection using Binary Neural Networks", CVPRW 2024.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn.data._registry import DATASETS, DatasetSpec, Listing
from bnn.data.dataset import Item
from bnn.data.folder import FAKE_NAMES, REAL_NAMES, SPLIT_NAMES, carve
from bnn.data.layout import FAKE, REAL, SPLITS, cache_dir, check_split, layout_error, warn_once
from bnn.errors import DatasetLayoutError, KeyedValueError, storage_fault

log = logging.getLogger(__name__)

ENV_VAR = "BNN_DATA_HF"
LAYOUT = (
    "data_params.path (or data_root / $BNN_DATA_HF): a Hub name owner/name, a save_to_disk "
    "folder, or parquet files in the Hub layout (<dir>/data/{train,validation,test}-00000-of-00001.parquet)"
)
SOURCE = "Hugging Face datasets (https://huggingface.co/datasets), read with the datasets library"

VERSION = 1  # part of every cache key: bump when the materialised files change
MANIFEST = "manifest.json"
MAX_ROWS = 20_000_000  # per split
MAX_IMAGE_BYTES = 128 << 20  # one image's stored bytes
MAX_LABEL_VALUES = 1000
MAX_SOURCES = 1000
SHARD = 10_000  # files per sub-folder of a materialised split
BATCH_ROWS = 64  # rows per Arrow batch while writing images (memory: 64 images)
DISK_MARGIN = 64 << 20
# Label names read as real / fake (compared case-insensitively): the folder reader's, and the
# spellings Hub datasets use.
REAL_LABELS = (*REAL_NAMES, "natural", "authentic", "human")
FAKE_LABELS = (*FAKE_NAMES, "generated", "synthetic", "ai_generated", "ai-generated", "aigc")
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
PARAM_KEYS = ("path", "config", "revision", "split_map", "image_column", "label_column", "fake_label",
              "real_label", "source_column", "val_fraction", "test_fraction", "seed")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# Leading bytes -> file extension; other bytes keep the stored path's extension, else ``.bin``.
_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF87a", ".gif"),
               (b"GIF89a", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


class HubDatasetError(ValueError):
    """A Hugging Face dataset that cannot be used as asked (a loading script, an unsupported
    format, a column or label that does not fit); one line, exit code 2 in the command lines."""


# --- parameters ------------------------------------------------------------------------------------


def _keyed(key: str, detail: str) -> KeyedValueError:
    return KeyedValueError(f"data_params.{key}: {detail}", key=key, detail=detail)


def _is_label_value(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, float)


def check_params(params: Mapping[str, Any]) -> None:
    """Checks ``data_params`` values without reading any file (``DatasetSpec.check_params``).

    Raises:
        KeyedValueError: A value of the wrong type or out of range, naming the key and what is valid.
    """
    for key in ("path", "config", "revision", "image_column", "label_column", "source_column"):
        value = params.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _keyed(key, f"a non-empty string, got {value!r}")
    split_map = params.get("split_map")
    if split_map is not None:
        if not isinstance(split_map, Mapping):
            raise _keyed("split_map", f"a mapping of suite splits ({', '.join(SPLITS)}) to the dataset's "
                                      f"split names, got {split_map!r}")
        for split, name in split_map.items():
            if split not in SPLITS:
                raise _keyed("split_map", f"unknown suite split {split!r}; valid: {', '.join(SPLITS)}")
            if not isinstance(name, str) or not name.strip():
                raise _keyed("split_map", f"{split}: a dataset split name (string), got {name!r}")
    for key in ("fake_label", "real_label"):
        value = params.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_label_value(v) for v in values):
            raise _keyed(key, f"a label value (ClassLabel name or index, string, integer, true/false) or a "
                              f"non-empty list of them, got {value!r}")
    fractions = {}
    for key in ("val_fraction", "test_fraction"):
        value = params.get(key, 0.1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise _keyed(key, f"a share in [0, 1), got {value!r}")
        fractions[key] = float(value)
    if sum(fractions.values()) >= 1.0:
        raise _keyed("val_fraction", f"val_fraction + test_fraction must be < 1, got {sum(fractions.values())}")


# --- the dataset's splits, whatever stores them ----------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """One split of the dataset as Arrow batches, without decoding anything.

    Attributes:
        name: The dataset's split name.
        rows: Number of rows.
        nbytes: Estimated bytes of its data (for the disk check).
        fingerprint: Changes when the split's data changes.
        features: ``datasets.Features`` of its columns.
        batches: ``batches(columns, rows_per_batch)`` -> pyarrow tables or record batches, in row order.
    """

    name: str
    rows: int
    nbytes: int
    fingerprint: str
    features: Any
    batches: Callable[[list[str], int], Iterator[Any]]


@dataclass(frozen=True)
class _Opened:
    """The dataset: its splits, what to call it, and the folder its path-only images may lie in."""

    name: str
    splits: dict[str, _Split]
    local_root: Path | None


def _dataset_split(name: str, ds: Any) -> _Split:
    def batches(columns: list[str], rows: int) -> Iterator[Any]:
        yield from ds.select_columns(columns).with_format("arrow").iter(batch_size=rows)

    return _Split(name, ds.num_rows, int(ds.data.nbytes), str(ds._fingerprint), ds.features, batches)


def _parquet_split(name: str, files: Sequence[str]) -> _Split:
    import datasets
    import pyarrow.parquet as pq

    stamps, rows, nbytes = [], 0, 0
    for file in files:
        stat = os.stat(file)
        stamps.append([os.path.realpath(file), stat.st_size, stat.st_mtime_ns])
        nbytes += stat.st_size
        rows += pq.ParquetFile(file).metadata.num_rows
    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))

    def batches(columns: list[str], size: int) -> Iterator[Any]:
        for file in files:
            handle = pq.ParquetFile(file)
            missing = [c for c in columns if c not in handle.schema_arrow.names]
            if missing:
                raise HubDatasetError(f"parquet file '{file}' has no column {', '.join(missing)} "
                                      f"(its columns: {', '.join(handle.schema_arrow.names)})")
            yield from handle.iter_batches(batch_size=size, columns=columns)

    fingerprint = hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]
    return _Split(name, rows, nbytes, fingerprint, features, batches)


def _refuse_scripts(folder: Path, shown: str) -> None:
    scripts = sorted(p.name for p in folder.glob("*.py"))
    if scripts:
        raise HubDatasetError(f"{shown} has a loading script ({', '.join(scripts)}); datasets with code are "
                              "refused (no code from a dataset is run): use its parquet files or a "
                              "save_to_disk copy")


def _open_local(path: Path, config: str | None) -> _Opened:
    import datasets

    shown = f"'{path}'"
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise HubDatasetError(f"{shown} is not a .parquet file (a local file must be parquet; a folder may "
                                  "be a save_to_disk folder or a parquet tree)")
        return _Opened(str(path), {"train": _parquet_split("train", [str(path)])}, path.parent)
    _refuse_scripts(path, shown)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            splits = {name: _dataset_split(name, ds) for name, ds in loaded.items()}
        else:
            splits = {"train": _dataset_split("train", loaded)}
        return _Opened(str(path), splits, path)
    try:
        builder = datasets.load_dataset_builder(str(path), name=config)
    except FileNotFoundError as err:  # EmptyDatasetError: no data file at all
        raise layout_error(f"no data files in '{path}' ({_first_line(err)})", layout=LAYOUT,
                           env_var=ENV_VAR, source=SOURCE) from None
    except RuntimeError as err:  # "Dataset scripts are no longer supported"
        raise HubDatasetError(f"{shown}: {_first_line(err)}; datasets with code are refused") from None
    except ValueError as err:  # an unknown config name, among others
        raise HubDatasetError(f"{shown}: {_first_line(err)}") from None
    if builder.name != "parquet":
        hint = "; for a folder of image files use dataset: folder" if builder.name == "imagefolder" else ""
        raise HubDatasetError(f"{shown} holds {builder.name} data files; a local dataset must be parquet files "
                              f"or a save_to_disk folder{hint}")
    files = {str(split): [str(f) for f in found] for split, found in (builder.config.data_files or {}).items()}
    return _Opened(str(path), {name: _parquet_split(name, found) for name, found in files.items() if found}, path)


def _open_hub(name: str, config: str | None, revision: str | None) -> _Opened:
    import datasets

    try:
        loaded = datasets.load_dataset(name, name=config, revision=revision)
    except RuntimeError as err:  # a loading script
        raise HubDatasetError(f"Hugging Face dataset {name!r}: {_first_line(err)}; datasets with code are "
                              "refused") from None
    except OSError as err:  # offline and not cached, not on the Hub, gated, unreachable
        if storage_fault(err) is not None:  # a full disk while downloading: the storage's message
            raise
        raise DatasetLayoutError(_missing_message(name, err)) from None
    except ValueError as err:
        raise HubDatasetError(f"Hugging Face dataset {name!r}: {_first_line(err)}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    shown = name + (f" ({config})" if config else "") + (f"@{revision}" if revision else "")
    return _Opened(shown, {split: _dataset_split(split, ds) for split, ds in loaded.items()}, None)


def _missing_message(name: str, err: BaseException) -> str:
    import datasets

    local = f"no local folder '{name}' either; " if "/" in name else ""
    if datasets.config.HF_HUB_OFFLINE:
        return (f"Hugging Face dataset {name!r} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}) "
                f"and offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); {local}download it once online "
                f"(python -c \"import datasets; datasets.load_dataset('{name}')\") or set data_params.path to a "
                "local save_to_disk folder or parquet tree")
    return (f"Hugging Face dataset {name!r} could not be loaded ({_first_line(err)}); {local}check the name at "
            f"https://huggingface.co/datasets/{name}, log in for a gated dataset (HF_TOKEN), or set "
            "data_params.path to a local save_to_disk folder or parquet tree")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _open(path: str, from_root: bool, config: str | None, revision: str | None) -> _Opened:
    local = Path(path).expanduser()
    if local.exists():
        if revision is not None:
            raise _keyed("revision", f"applies to Hub datasets; '{local}' is a local path")
        return _open_local(local, config)
    if from_root or not _HUB_NAME.match(path):
        raise layout_error(f"'{local}' does not exist" + ("" if from_root else " and is not a Hub name (owner/name)"),
                           layout=LAYOUT, env_var=ENV_VAR, source=SOURCE)
    return _open_hub(path, config, revision)


# --- columns and labels ---------------------------------------------------------------------------


def _column(features: Any, key: str, given: str | None, defaults: Sequence[str], kind: type,
            names_first: bool = False) -> str:
    """The column ``key`` names: ``given``, else the one column of feature type ``kind`` or the
    first of ``defaults`` present (in that order, or the other way round with ``names_first``)."""
    names = list(features)
    listed = ", ".join(f"{n} ({type(features[n]).__name__})" for n in names)
    if given is not None:
        if given not in features:
            raise _keyed(key, f"no column {given!r}; columns: {listed}")
        return given
    typed = [n for n in names if isinstance(features[n], kind)]
    by_name = [n for n in defaults if n in features][:1]
    by_type = typed if len(typed) == 1 else []
    for found in ((by_name, by_type) if names_first else (by_type, by_name)):
        if found:
            return found[0]
    raise _keyed(key, f"set it: {'several' if typed else 'no'} {kind.__name__} column(s) and none of "
                      f"{', '.join(defaults)}; columns: {listed}")


def _check_image_feature(features: Any, column: str) -> None:
    import datasets

    feature = features[column]
    if isinstance(feature, datasets.Image):
        return
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return
    if isinstance(feature, dict) and "bytes" in feature:  # an Image struct without the datasets metadata
        return
    raise _keyed("image_column", f"column {column!r} holds {feature!r}, not images (datasets.Image or bytes)")


def _column_values(split: _Split, column: str) -> list[Any]:
    """The values of one column in row order (ClassLabel indices as stored)."""
    values: list[Any] = []
    for batch in split.batches([column], 65_536):
        values.extend(batch.column(column).to_pylist())
    if len(values) != split.rows:
        raise HubDatasetError(f"split {split.name!r}: column {column!r} has {len(values)} values for {split.rows} rows")
    return values


def _label_map(values: list[Any], names: list[str] | None, column: str,
               fake_label: Any, real_label: Any) -> dict[Any, int]:
    """Stored label value -> ``REAL`` / ``FAKE`` for each distinct value of ``values``.

    Args:
        values: The label column (ClassLabel indices when ``names`` is given).
        names: The ClassLabel names, or ``None`` for a plain column.
        column: The column's name, for messages.
        fake_label, real_label: The ``data_params`` values (a value or a list), or ``None``.

    Raises:
        HubDatasetError: Rows without a label (``None``, ClassLabel -1), too many distinct values.
        KeyedValueError: Values that cannot be told real or fake (naming ``fake_label``).
    """
    unlabelled = sum(v is None or (names is not None and v == -1) for v in values)
    if unlabelled:
        raise HubDatasetError(f"{unlabelled} of {len(values)} rows have no label in column {column!r} "
                              "(null or ClassLabel -1): this split cannot be used as labelled data")
    found = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(found) > MAX_LABEL_VALUES:
        raise HubDatasetError(f"label column {column!r} has {len(found)} distinct values (at most "
                              f"{MAX_LABEL_VALUES}): not a class column; set label_column")
    shown = (lambda v: names[v] if 0 <= v < len(names) else str(v)) if names is not None else str

    def matches(value: Any, wanted: Any) -> bool:
        """A ``data_params`` value names a stored one: a string its name (any case), an integer its
        index or value (or a string column's ``"1"``), a boolean only a boolean."""
        for w in wanted if isinstance(wanted, list) else [wanted]:
            if isinstance(w, bool) or isinstance(value, bool):
                hit = type(w) is type(value) and w == value
            elif isinstance(w, str):
                hit = w.casefold() == shown(value).casefold()
            else:
                hit = str(w) == value if isinstance(value, str) else w == value
            if hit:
                return True
        return False

    described = ", ".join(shown(v) if names is None else f"{v}={shown(v)}" for v in found)
    universe = list(range(len(names))) if names is not None else found
    for key, wanted in (("fake_label", fake_label), ("real_label", real_label)):
        if wanted is not None and not any(matches(v, wanted) for v in universe):
            if names is not None:
                raise _keyed(key, f"{wanted!r} is none of the values of label_column {column!r}: {described}")
            warn_once(log, f"data_params.{key} {wanted!r} is none of the values of label_column {column!r} in this "
                           f"split ({described})")
    out: dict[Any, int] = {}
    unknown = []
    for value in found:
        is_fake = fake_label is not None and matches(value, fake_label)
        is_real = real_label is not None and matches(value, real_label)
        if is_fake and is_real:
            raise _keyed("fake_label", f"{shown(value)!r} is given as both fake_label and real_label")
        if fake_label is None and real_label is None:
            name = shown(value).casefold()
            is_fake, is_real = name in {n.casefold() for n in FAKE_LABELS}, name in {n.casefold() for n in REAL_LABELS}
        elif fake_label is None or real_label is None:
            is_fake, is_real = (is_fake, not is_fake) if fake_label is not None else (not is_real, is_real)
        if is_fake:
            out[value] = FAKE
        elif is_real:
            out[value] = REAL
        else:
            unknown.append(shown(value))
    if unknown:
        raise _keyed("fake_label", f"cannot tell which values of label_column {column!r} are fake: found {described}"
                                   f" ({', '.join(unknown)} not named real or fake); set fake_label to the fake "
                                   "value(s) (and real_label when there are more than two)")
    return out


# --- materialisation ------------------------------------------------------------------------------


def _extension(data: bytes, stored_path: str | None) -> str:
    for signature, ext in _SIGNATURES:
        if data.startswith(signature):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    suffix = Path(stored_path or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"


def _allowed_roots(local_root: Path | None) -> list[Path]:
    import datasets

    roots = [Path(datasets.config.HF_CACHE_HOME), Path(datasets.config.HF_DATASETS_CACHE)]
    if local_root is not None:
        roots.append(local_root)
    return [r.expanduser().resolve() for r in roots]


def _image_bytes(value: Any, roots: list[Path]) -> tuple[bytes | None, str | None, str]:
    """(bytes or ``None``, stored path, why there are none) of one image cell."""
    if isinstance(value, dict):
        data, stored = value.get("bytes"), value.get("path")
    else:
        data, stored = value, None
    if data is None and stored:
        file = Path(stored).expanduser()
        try:
            resolved = file.resolve()
        except OSError:
            return None, stored, "its path cannot be resolved"
        if not any(resolved.is_relative_to(root) for root in roots):
            return None, stored, "stored as a path outside the dataset and the Hugging Face cache"
        if not resolved.is_file():
            return None, stored, "stored as a path that is not a file"
        if resolved.stat().st_size > MAX_IMAGE_BYTES:
            return None, stored, f"over {MAX_IMAGE_BYTES >> 20} MiB"
        return resolved.read_bytes(), stored, ""
    if data is None:
        return None, stored, "no bytes"
    if len(data) > MAX_IMAGE_BYTES:
        return None, stored, f"over {MAX_IMAGE_BYTES >> 20} MiB"
    return bytes(data), stored, ""


def _is_complete(folder: Path, key: str) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == VERSION and manifest.get("key") == key else None


def _materialise(opened: _Opened, split: _Split, image_column: str) -> tuple[Path, dict]:
    """The folder holding ``split``'s images as stored, written first if not cached; and its manifest."""
    key_text = json.dumps({"version": VERSION, "fingerprint": split.fingerprint, "split": split.name,
                           "image_column": image_column}, sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    base = cache_dir() / "hf"
    target = base / key
    manifest = _is_complete(target, key)
    if manifest is not None:
        return target, manifest
    if split.rows > MAX_ROWS:
        raise HubDatasetError(f"split {split.name!r} of {opened.name} has {split.rows:,} rows; at most {MAX_ROWS:,} "
                              "are materialised (use a smaller config or split)")
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    if split.nbytes + DISK_MARGIN > free:
        raise HubDatasetError(f"split {split.name!r} of {opened.name} needs about {split.nbytes >> 20} MiB in '{base}' "
                              f"and {free >> 20} MiB are free (set BNN_CACHE_DIR to a larger disk)")
    temp = base / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    roots = _allowed_roots(opened.local_root)
    log.info("materialising %s split %s (%d rows) into %s", opened.name, split.name, split.rows, target)
    files: list[str] = []
    missing: dict[str, int] = {}
    try:
        for batch in split.batches([image_column], BATCH_ROWS):
            for value in batch.column(image_column).to_pylist():
                row = len(files)
                data, stored, why = _image_bytes(value, roots)
                ext = ".missing" if data is None else _extension(data, stored)
                relative = f"{row // SHARD:04d}/{row:08d}{ext}"
                (temp / relative).parent.mkdir(parents=True, exist_ok=True)
                (temp / relative).write_bytes(data or b"")
                if data is None:
                    missing[why] = missing.get(why, 0) + 1
                files.append(relative)
                if len(files) % 20_000 == 0:
                    log.info("materialised %d/%d images of %s", len(files), split.rows, split.name)
        if len(files) != split.rows:
            raise HubDatasetError(f"split {split.name!r} gave {len(files)} images for {split.rows} rows")
        manifest = {"version": VERSION, "key": key, "dataset": opened.name, "split": split.name,
                    "image_column": image_column, "files": files, "missing": missing}
        (temp / MANIFEST).write_text(json.dumps(manifest))
        if target.exists() and _is_complete(target, key) is None:
            shutil.rmtree(target)  # an unfinished folder of an interrupted writer: not to be trusted
        try:
            os.rename(temp, target)
        except OSError:
            if _is_complete(target, key) is None:  # lost a race to a finished twin: fine
                raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return target, manifest


# --- the reader -----------------------------------------------------------------------------------


def _resolve_split(split: str, available: Sequence[str], split_map: Mapping[str, str] | None) -> str | None:
    """The dataset split that ``split`` reads, or ``None`` when it is carved out of train."""
    if split_map and split in split_map:
        name = split_map[split]
        if name not in available:
            raise _keyed("split_map", f"{split}: the dataset has no split {name!r}; its splits: {', '.join(available)}")
        return name
    wanted = {n.casefold() for n in SPLIT_NAMES[split]}
    found = [name for name in available if name.casefold() in wanted]
    return found[0] if found else None


def read_hf(
    split: str,
    root: str | os.PathLike | None,
    *,
    path: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    split_map: dict[str, str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    fake_label: Any = None,
    real_label: Any = None,
    source_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Listing:
    """Lists one split of a Hugging Face dataset (see the module docstring for every parameter).

    Args:
        split: ``train``, ``val`` or ``test``.
        root: A local dataset path (``data_root``); ``None`` reads ``path``, else ``$BNN_DATA_HF``.

    Raises:
        DatasetLayoutError: No dataset named, a local path that does not exist, a Hub dataset that
            is neither cached nor reachable (one line naming it and how to get it).
        KeyedValueError: A parameter that does not fit the data (an unknown column or split,
            labels that cannot be told real or fake), naming the key and the values found.
        HubDatasetError: A loading script, an unsupported format, a bound exceeded.
    """
    check_split(split)
    params = {"path": path, "config": config, "revision": revision, "split_map": split_map,
              "image_column": image_column, "label_column": label_column, "fake_label": fake_label,
              "real_label": real_label, "source_column": source_column, "val_fraction": val_fraction,
              "test_fraction": test_fraction}
    check_params({k: v for k, v in params.items() if v is not None})
    if path is not None and root is not None:
        raise _keyed("path", f"the dataset is named twice: data_params.path {path!r} and data_root '{root}'; keep one")
    named = path if path is not None else (os.fspath(root) if root is not None else os.environ.get(ENV_VAR))
    if not named:
        raise layout_error(f"no dataset named: set data_params.path, data_root or {ENV_VAR}", layout=LAYOUT,
                           env_var=ENV_VAR, source=SOURCE)
    opened = _open(str(named), root is not None, config, revision)
    available = list(opened.splits)
    sources_of = {s: _resolve_split(s, available, split_map) for s in SPLITS}
    train_name = sources_of["train"]
    if train_name is None and (sources_of[split] is None or split == "train"):
        raise _keyed("split_map", f"no train split in {opened.name}; its splits: {', '.join(available)} "
                                  "(map one, e.g. split_map: {train: <name>})")
    carved = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if sources_of[s] is None}
    name = sources_of[split] or train_name
    assert name is not None
    chosen = opened.splits[name]
    features = chosen.features
    image = _column(features, "image_column", image_column, IMAGE_COLUMNS, _feature_type("Image"))
    _check_image_feature(features, image)
    label = _column(features, "label_column", label_column, LABEL_COLUMNS, _feature_type("ClassLabel"),
                    names_first=True)  # a ``label`` column before a ClassLabel ``generator`` one
    names = list(features[label].names) if isinstance(features[label], _feature_type("ClassLabel")) else None
    if source_column is not None and source_column not in features:
        raise _keyed("source_column", f"no column {source_column!r}; columns: {', '.join(features)}")
    raw = _column_values(chosen, label)
    mapping = _label_map(raw, names, label, fake_label, real_label)
    folder, manifest = _materialise(opened, chosen, image)
    if len(manifest["files"]) != len(raw):
        raise HubDatasetError(f"cache '{folder}' holds {len(manifest['files'])} images for {len(raw)} rows; delete it")
    items: list[Item] = [(str(folder / f), mapping[v]) for f, v in zip(manifest["files"], raw, strict=True)]
    sources = _sources(chosen, source_column, features) if source_column is not None else None
    if manifest["missing"]:
        reasons = ", ".join(f"{n} {why}" for why, n in manifest["missing"].items())
        warn_once(log, f"{opened.name} split {name!r}: {sum(manifest['missing'].values())} rows without usable image "
                       f"bytes ({reasons}); they are skipped as unreadable images")
    what = f"Hugging Face dataset {opened.name} split {name!r}"
    if name == train_name and carved and (split in carved or split == "train"):
        fractions = {**carved, "train": 1.0 - sum(carved.values())}
        by_path = dict(zip((p for p, _ in items), sources, strict=True)) if sources is not None else None
        items = carve(items, folder, seed, fractions, split)
        sources = [by_path[p] for p, _ in items] if by_path is not None else None
        held = " and ".join(f"{f:.0%} as {s}" for s, f in carved.items())
        what += (f" ({fractions[split]:.0%} held out by seeded hash, seed={seed})" if split != "train"
                 else f" (minus {held} held out by seeded hash, seed={seed})")
    return Listing(items, [folder], f"{what}, images at {folder}", sources)


def _sources(split: _Split, column: str, features: Any) -> list[str]:
    values = _column_values(split, column)
    feature = features[column]
    names = list(feature.names) if isinstance(feature, _feature_type("ClassLabel")) else None
    out = ["unknown" if v is None else (names[v] if names is not None and 0 <= v < len(names) else str(v))
           for v in values]
    distinct = len(set(out))
    if distinct > MAX_SOURCES:
        raise _keyed("source_column", f"column {column!r} has {distinct} distinct values (at most {MAX_SOURCES}): "
                                      "not a generator column")
    return out


def _feature_type(name: str) -> type:
    import datasets

    return getattr(datasets, name)


DATASETS.add("hf", DatasetSpec(read_hf, ENV_VAR, LAYOUT, SOURCE, check_params))
