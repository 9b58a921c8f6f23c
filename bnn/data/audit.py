"""Data audit of one configuration's splits, run before a detector trains on them.

A deepfake benchmark can be solved without the generator's traces, and a reader of a result needs
to know how much of it could be. The audit reports three things, each with its source:

1. **Exact duplicates**: files with the same content hash (BLAKE2b, 128 bits, of the file's
   bytes), counted as pairs per pair of splits (a group of k identical files is k(k-1)/2 pairs),
   with example paths. CIFAKE, for one, holds 1,336 pairs of byte-identical fakes, 378 of them
   between its train and test folders. ``dedupe`` drops the copies that would leak (below).
2. **Per-class file statistics**: format, image size, JPEG quality and file size, with a warning
   when one of them alone separates the classes (a depth-4 decision tree on that statistic, fitted
   on train, reaching a balanced test accuracy of ``SEPARATION_WARN`` or more). Real photographs
   are often camera JPEGs and fakes PNGs or another quality (Grommelt et al., "Fake or JPEG?
   Revealing Common Biases in Generated Image Detection Datasets", 2024). The JPEG quality is
   estimated from the luminance quantisation table: the IJG quality whose scaled standard table
   (libjpeg's ``jpeg_quality_scaling``, ITU-T T.81 Annex K) has the nearest sum.
3. **Two floors that see no network**, each fitted on train and scored on test:
   - the *shortcut* baseline, which sees no pixel: a depth-4 decision tree (scikit-learn) on the
     format, width, height, JPEG quality and file size;
   - the *spectral* floor: a logistic regression (scikit-learn) on the 16-bin radial
     (azimuthally averaged) log-magnitude spectrum of the grey image at the training resolution,
     after the evaluation preprocessing (Durall et al., "Watch your Up-Convolution", CVPR 2020);
     at most ``SPECTRAL_MAX_IMAGES`` images per split (a stratified, seeded subsample).

``dedupe`` (``FitConfig.dedupe``, on by default): a train image whose content equals a val or test
image is dropped from train, and a val image equal to a test image from val, so that neither the
weights nor the checkpoint selection has seen a test image. Duplicates within one split are
reported and kept.

Caching: a split's file fingerprints (hash and header statistics) are kept per split digest under
``$BNN_CACHE_DIR/audit/`` and reused for each file whose size and modification time are unchanged;
the whole report is kept under a key of the splits' digests, their content hashes and the
resolution, so a study audits each dataset once. Unreadable files are reported as such and left
out of the floors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bnn.data.dataset import ImageDataset
from bnn.data.layout import cache_dir
from bnn.data.transforms import UnreadableImage, build_transform, load_rgb

log = logging.getLogger(__name__)

AUDIT_VERSION = 1  # part of every cache key: raise it when what the audit computes changes
SEPARATION_WARN = 0.75  # balanced test accuracy of one statistic alone that raises a warning
SPECTRAL_MAX_IMAGES = 20_000  # per split, for the spectral floor (each image is decoded)
SPECTRAL_BINS = 16
TREE_DEPTH = 4
EXAMPLES_PER_PAIR = 3
NO_QUALITY = -1  # JPEG quality of a file that is not a JPEG (or has no luminance table)
HASH_CHUNK = 1 << 20

# The metrics a fit logs from its audit (``AuditReport.scalars``).
AUDIT_METRICS = (
    "audit_duplicate_pairs_within",
    "audit_duplicate_pairs_cross",
    "audit_duplicate_pairs_test",
    "audit_dropped_train",
    "audit_dropped_val",
    "audit_shortcut_accuracy",
    "audit_shortcut_auc",
    "audit_spectral_accuracy",
    "audit_spectral_auc",
)

# ITU-T T.81 Annex K, table K.1: the luminance quantisation table libjpeg scales by quality.
_STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


def _scaled_table_sums() -> np.ndarray:
    """Sum of the baseline-clamped luminance table at IJG quality 1..100 (index q - 1)."""
    sums = []
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        table = np.clip((_STD_LUMINANCE * scale + 50) // 100, 1, 255)
        sums.append(int(table.sum()))
    return np.array(sums)


_TABLE_SUMS = _scaled_table_sums()


def jpeg_quality(image: Image.Image) -> int:
    """Estimated IJG quality (1..100) of a JPEG from its first quantisation table, or
    ``NO_QUALITY`` when ``image`` is not a JPEG or has no table."""
    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables:
        return NO_QUALITY
    total = int(sum(tables[min(tables)]))
    return int(np.argmin(np.abs(_TABLE_SUMS - total))) + 1


@dataclass(frozen=True)
class Fingerprint:
    """What the audit knows of one file without decoding its pixels.

    Attributes:
        digest: BLAKE2b-128 of the file's bytes (hex), or ``""`` when it cannot be read.
        format: PIL's format name (``JPEG``, ``PNG``, ...) or ``unreadable``.
        width, height: Image size in pixels from the header (0 when unreadable).
        quality: Estimated JPEG quality, ``NO_QUALITY`` for other formats.
        size: File size in bytes.
    """

    digest: str
    format: str
    width: int
    height: int
    quality: int
    size: int


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """The ``Fingerprint`` of one file: its bytes hashed in 1 MiB chunks (memory bounded whatever
    the file's size), its header read by PIL (no pixel decoded)."""
    hasher = hashlib.blake2b(digest_size=16)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                hasher.update(chunk)
    except OSError:
        return Fingerprint("", "unreadable", 0, 0, NO_QUALITY, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                fmt, (width, height), quality = image.format or "unknown", image.size, jpeg_quality(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        fmt, width, height, quality = "unreadable", 0, 0, NO_QUALITY
    return Fingerprint(hasher.hexdigest(), fmt, width, height, quality, size)


def split_fingerprints(ds: ImageDataset) -> list[Fingerprint]:
    """``Fingerprint`` of each item of ``ds``, in item order; reused from the cache
    (``$BNN_CACHE_DIR/audit/files-<dataset>-<digest>.json``) for each file whose size and
    modification time are unchanged, computed for the others."""
    path = cache_dir() / "audit" / f"files-{ds.name}-{ds.split}-{ds.digest()}.json"
    cached = _read_json(path) or {}
    out, fresh, changed = [], {}, False
    for i, (file, _) in enumerate(ds.items):
        try:
            stat = os.stat(file)
            stamp = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stamp = None
        entry = cached.get(file)
        if stamp is not None and entry is not None and entry[:2] == stamp:
            found = Fingerprint(*entry[2:])
        else:
            found, changed = fingerprint(file), True
        out.append(found)
        if stamp is not None:
            fresh[file] = [*stamp, *asdict(found).values()]
        if (i + 1) % 20_000 == 0:
            log.info("audit: fingerprinted %d/%d files of %s", i + 1, len(ds), ds.split)
    if changed or len(fresh) != len(cached):
        _write_json(path, fresh)
    return out


@dataclass
class AuditReport:
    """What the audit found (see the module docstring).

    Attributes:
        data: ``describe()`` of each split as audited (after ``dedupe``).
        duplicate_pairs: ``"train-test"`` -> pairs of identical files between (or within, for
            ``"train-train"``) those splits, before ``dedupe``.
        duplicate_examples: The same keys -> up to ``EXAMPLES_PER_PAIR`` path pairs.
        dropped: ``{"train": n, "val": m}`` images ``dedupe`` removed (zeros when it was off).
        class_stats: split -> class -> statistic -> ``{value: count}`` (``size`` is ``WxH``;
            ``bytes`` holds the median and quartiles).
        separation: statistic -> balanced test accuracy of that statistic alone.
        shortcut: ``{"accuracy", "auc"}`` of the no-pixel baseline on test.
        spectral: ``{"accuracy", "auc", "train_images", "test_images"}`` of the spectral floor.
        unreadable: split -> files that could not be read.
        warnings: One line per finding a reader must know.
    """

    data: dict[str, str]
    duplicate_pairs: dict[str, int]
    duplicate_examples: dict[str, list[list[str]]]
    dropped: dict[str, int]
    class_stats: dict[str, dict[str, dict[str, dict[str, float]]]]
    separation: dict[str, float]
    shortcut: dict[str, float]
    spectral: dict[str, float]
    unreadable: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def pairs_within(self) -> int:
        """Duplicate pairs inside one split."""
        return sum(n for key, n in self.duplicate_pairs.items() if len(set(key.split("-"))) == 1)

    @property
    def pairs_cross(self) -> int:
        """Duplicate pairs between two different splits."""
        return sum(n for key, n in self.duplicate_pairs.items() if len(set(key.split("-"))) == 2)

    @property
    def pairs_test(self) -> int:
        """Duplicate pairs between test and train or val: test images a detector may have seen."""
        return sum(n for key, n in self.duplicate_pairs.items() if "test" in key.split("-") and key != "test-test")

    def scalars(self) -> dict[str, float]:
        """The ``AUDIT_METRICS`` values."""
        values = {
            "audit_duplicate_pairs_within": self.pairs_within,
            "audit_duplicate_pairs_cross": self.pairs_cross,
            "audit_duplicate_pairs_test": self.pairs_test,
            "audit_dropped_train": self.dropped.get("train", 0),
            "audit_dropped_val": self.dropped.get("val", 0),
            "audit_shortcut_accuracy": self.shortcut.get("accuracy", math.nan),
            "audit_shortcut_auc": self.shortcut.get("auc", math.nan),
            "audit_spectral_accuracy": self.spectral.get("accuracy", math.nan),
            "audit_spectral_auc": self.spectral.get("auc", math.nan),
        }
        assert tuple(values) == AUDIT_METRICS
        return {k: float(v) for k, v in values.items()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditReport:
        return cls(**data)

    def lines(self) -> list[str]:
        """The report as text lines (``python -m bnn audit`` and the training log)."""
        out = ["duplicates (identical bytes), pairs per split pair, before dedupe:"]
        if not self.duplicate_pairs:
            out.append("  none")
        for key, n in sorted(self.duplicate_pairs.items()):
            example = self.duplicate_examples.get(key, [[]])[0]
            out.append(f"  {key}: {n}" + (f"   e.g. {example[0]} == {example[1]}" if example else ""))
        out.append(f"  within splits: {self.pairs_within}, across splits: {self.pairs_cross}")
        test_within = self.duplicate_pairs.get("test-test", 0)
        out.append(f"  test against train+val: {self.pairs_test}; train+val among themselves: "
                   f"{self.pairs_within + self.pairs_cross - self.pairs_test - test_within}; test within: {test_within}")
        out.append(f"dedupe dropped: train {self.dropped.get('train', 0)}, val {self.dropped.get('val', 0)}")
        for split, per_class in self.class_stats.items():
            for label, stats in per_class.items():
                described = "; ".join(f"{name} {_top(values)}" for name, values in stats.items())
                out.append(f"{split} {label}: {described}")
        if self.separation:
            out.append("one statistic alone (balanced test accuracy): "
                       + ", ".join(f"{k} {v:.3f}" for k, v in self.separation.items()))
        out.append(f"shortcut baseline (no pixels): accuracy {self.shortcut.get('accuracy', math.nan):.4f}, "
                   f"AUC {self.shortcut.get('auc', math.nan):.4f}")
        out.append(f"spectral floor ({SPECTRAL_BINS}-bin radial log-FFT, logistic regression, "
                   f"{int(self.spectral.get('train_images', 0))} train / {int(self.spectral.get('test_images', 0))} "
                   f"test images): accuracy {self.spectral.get('accuracy', math.nan):.4f}, "
                   f"AUC {self.spectral.get('auc', math.nan):.4f}")
        if any(self.unreadable.values()):
            out.append("unreadable files: " + ", ".join(f"{k} {v}" for k, v in self.unreadable.items() if v))
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def _top(values: Mapping[str, float], n: int = 3) -> str:
    if set(values) == {"median", "q1", "q3"}:
        return f"median {values['median']:.0f} (IQR {values['q1']:.0f}-{values['q3']:.0f})"
    items = sorted(values.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} x{int(v)}" for k, v in items[:n])
    return shown + (f", +{len(items) - n} more" if len(items) > n else "")


# --- duplicates and dedupe ------------------------------------------------------------------------


def duplicate_pairs(prints: Mapping[str, list[Fingerprint]], datasets: Mapping[str, ImageDataset]
                    ) -> tuple[dict[str, int], dict[str, list[list[str]]]]:
    """Pairs of identical files per split pair (``"train-test"``; within a split ``"test-test"``),
    and up to ``EXAMPLES_PER_PAIR`` example path pairs for each."""
    order = {split: i for i, split in enumerate(prints)}
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, items in prints.items():
        for found, (path, _) in zip(items, datasets[split].items, strict=True):
            if found.digest:
                groups[found.digest].append((split, path))
    pairs: Counter[str] = Counter()
    examples: dict[str, list[list[str]]] = defaultdict(list)
    for members in groups.values():
        for (split_a, path_a), (split_b, path_b) in itertools.combinations(members, 2):
            if order[split_a] > order[split_b]:
                (split_a, path_a), (split_b, path_b) = (split_b, path_b), (split_a, path_a)
            key = f"{split_a}-{split_b}"
            pairs[key] += 1
            if len(examples[key]) < EXAMPLES_PER_PAIR:
                examples[key].append([path_a, path_b])
    return dict(pairs), dict(examples)


# Which splits' images a split must not share: train none of val's or test's, val none of test's.
LEAK_TARGETS = {"train": ("val", "test"), "val": ("test",)}


def dedupe(datasets: Mapping[str, ImageDataset], prints: Mapping[str, list[Fingerprint]]
           ) -> tuple[dict[str, ImageDataset], dict[str, list[Fingerprint]], dict[str, int]]:
    """Drops each train image whose content equals a val or test image, and each val image equal
    to a test image (``LEAK_TARGETS``); returns the splits, their fingerprints and the counts."""
    out, out_prints, dropped = dict(datasets), dict(prints), {}
    for split, targets in LEAK_TARGETS.items():
        if split not in datasets:
            continue
        taken = {p.digest for t in targets if t in prints for p in prints[t] if p.digest}
        keep = [i for i, p in enumerate(prints[split]) if not p.digest or p.digest not in taken]
        dropped[split] = len(prints[split]) - len(keep)
        if dropped[split]:
            note = f"{dropped[split]} duplicate(s) of {'/'.join(targets)} images dropped"
            out[split] = datasets[split].subset(keep, note=note)
            out_prints[split] = [prints[split][i] for i in keep]
            log.info("dedupe: %s from %s", note, split)
    return out, out_prints, dropped


# --- statistics and floors --------------------------------------------------------------------------

STATISTICS = ("format", "size", "jpeg_quality", "file_bytes")


def _class_stats(prints: list[Fingerprint], labels: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for label, name in ((0, "real"), (1, "fake")):
        chosen = [p for p, y in zip(prints, labels, strict=True) if y == label]
        if not chosen:
            continue
        sizes = np.array([p.size for p in chosen], dtype=float)
        q1, median, q3 = np.percentile(sizes, [25, 50, 75])
        out[name] = {
            "format": dict(Counter(p.format for p in chosen)),
            "size": dict(Counter(f"{p.width}x{p.height}" for p in chosen)),
            "jpeg_quality": dict(Counter("none" if p.quality == NO_QUALITY else str(p.quality) for p in chosen)),
            "file_bytes": {"median": float(median), "q1": float(q1), "q3": float(q3)},
        }
    return out


def _no_pixel_features(prints: list[Fingerprint], formats: list[str]) -> dict[str, np.ndarray]:
    """Per statistic, an (N, k) array: format one-hot, width and height, quality, log file size."""
    return {
        "format": np.array([[p.format == f for f in formats] for p in prints], dtype=float).reshape(len(prints), -1),
        "size": np.array([[p.width, p.height] for p in prints], dtype=float).reshape(len(prints), 2),
        "jpeg_quality": np.array([[p.quality] for p in prints], dtype=float).reshape(len(prints), 1),
        "file_bytes": np.log1p(np.array([[p.size] for p in prints], dtype=float)).reshape(len(prints), 1),
    }


def _score(model, x_train, y_train, x_test, y_test) -> dict[str, float]:
    """Accuracy (threshold 0.5), balanced accuracy and AUC of ``model`` fitted on train."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    model.fit(x_train, y_train)
    prob = model.predict_proba(x_test)[:, list(model.classes_).index(1)]
    pred = (prob >= 0.5).astype(int)
    auc = roc_auc_score(y_test, prob) if len(set(y_test)) == 2 else math.nan
    return {"accuracy": float(np.mean(pred == y_test)), "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
            "auc": float(auc)}


def _tree():
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=TREE_DEPTH, class_weight="balanced", random_state=0)


def radial_profile(images: np.ndarray, bins: int = SPECTRAL_BINS) -> np.ndarray:
    """Azimuthally averaged log-magnitude spectrum (Durall et al., CVPR 2020).

    Args:
        images: Grey images, shape (N, H, W), values in [0, 1].
        bins: Radial bins over normalised frequency radius (0, 1]; the DC term and the corners
            beyond radius 1 are left out.

    Returns:
        (N, bins) mean of ``log(|FFT| + 1e-6)`` per bin.
    """
    n, h, w = images.shape
    spectrum = np.log(np.abs(np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))) + 1e-6)  # (N, H, W)
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot((yy - h // 2) / (h / 2), (xx - w // 2) / (w / 2))  # (H, W), 1 = Nyquist on an axis
    index = np.ceil(radius * bins).astype(int) - 1  # (0, 1/bins] -> 0, DC -> -1
    out = np.empty((n, bins))
    for b in range(bins):
        mask = index == b
        out[:, b] = spectrum[:, mask].mean(axis=1) if mask.any() else 0.0
    return out


def _spectral_features(ds: ImageDataset, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(profiles (N, SPECTRAL_BINS), labels (N,)) of at most ``SPECTRAL_MAX_IMAGES`` images of
    ``ds`` after the evaluation preprocessing at ``resolution``; unreadable files left out."""
    chosen = ds.subsample(SPECTRAL_MAX_IMAGES, seed=seed) if len(ds) > SPECTRAL_MAX_IMAGES else ds
    transform = build_transform(resolution, train=False)
    profiles, labels, batch, batch_labels = [], [], [], []
    for path, label in chosen.items:
        try:
            grey = transform(load_rgb(path)).mean(dim=0).numpy()  # (R, R) in [0, 1]
        except UnreadableImage:
            continue
        batch.append(grey)
        batch_labels.append(label)
        if len(batch) == 512:
            profiles.append(radial_profile(np.stack(batch)))
            labels.extend(batch_labels)
            batch, batch_labels = [], []
    if batch:
        profiles.append(radial_profile(np.stack(batch)))
        labels.extend(batch_labels)
    if not profiles:
        return np.empty((0, SPECTRAL_BINS)), np.empty(0, dtype=int)
    return np.concatenate(profiles), np.array(labels)


def _spectral_floor(train: ImageDataset, test: ImageDataset, resolution: int, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _spectral_features(train, resolution, seed)
    x_test, y_test = _spectral_features(test, resolution, seed)
    sizes = {"train_images": float(len(y_train)), "test_images": float(len(y_test))}
    if len(set(y_train.tolist())) < 2 or len(y_test) == 0:
        return {"accuracy": math.nan, "auc": math.nan, **sizes}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scored = _score(model, x_train, y_train, x_test, y_test)
    return {"accuracy": scored["accuracy"], "auc": scored["auc"], **sizes}


# --- the audit ----------------------------------------------------------------------------------------


def fingerprint_splits(datasets: Mapping[str, ImageDataset]) -> dict[str, list[Fingerprint]]:
    """``split_fingerprints`` of each split."""
    return {split: split_fingerprints(ds) for split, ds in datasets.items()}


def audit(
    datasets: Mapping[str, ImageDataset],
    prints: Mapping[str, list[Fingerprint]],
    *,
    before: Mapping[str, ImageDataset] | None = None,
    before_prints: Mapping[str, list[Fingerprint]] | None = None,
    dropped: Mapping[str, int] | None = None,
    resolution: int = 224,
    seed: int = 0,
) -> AuditReport:
    """Audits ``datasets`` (``train``, ``val``, ``test``, as a fit uses them), from the cache when
    the same splits were audited before.

    Args:
        datasets: The splits the detector will use (after ``dedupe``).
        prints: Their fingerprints (``fingerprint_splits``).
        before, before_prints: The splits and fingerprints before ``dedupe``, whose duplicates
            are reported (default: ``datasets``, ``prints``).
        dropped: What ``dedupe`` removed per split.
        resolution: Side of the images the spectral floor sees (the training resolution).
        seed: Seed of the spectral floor's subsample.
    """
    before, before_prints = before or datasets, before_prints or prints
    key_parts = [AUDIT_VERSION, resolution, seed, dict(dropped or {}),
                 {s: [d.digest(), _content_key(before_prints[s])] for s, d in before.items()},
                 {s: [d.digest(), _content_key(prints[s])] for s, d in datasets.items()}]
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
    cache = cache_dir() / "audit" / f"report-{key}.json"
    cached = _read_json(cache)
    if cached is not None:
        try:
            return AuditReport.from_json(cached)
        except TypeError:
            pass  # written by another version: computed again below
    pairs, examples = duplicate_pairs(before_prints, before)
    report = AuditReport(
        data={split: ds.describe() for split, ds in datasets.items()},
        duplicate_pairs=pairs,
        duplicate_examples=examples,
        dropped={"train": 0, "val": 0, **(dropped or {})},
        class_stats={split: _class_stats(prints[split], ds.labels()) for split, ds in datasets.items()},
        separation={},
        shortcut={"accuracy": math.nan, "auc": math.nan},
        spectral={"accuracy": math.nan, "auc": math.nan},
        unreadable={split: sum(p.format == "unreadable" for p in prints[split]) for split in datasets},
    )
    train, test = datasets.get("train"), datasets.get("test")
    if train is not None and test is not None:
        y_train, y_test = np.array(train.labels()), np.array(test.labels())
        if len(set(y_train.tolist())) == 2 and len(y_test):
            formats = sorted({p.format for p in prints["train"]})
            f_train = _no_pixel_features(prints["train"], formats)
            f_test = _no_pixel_features(prints["test"], formats)
            for name in STATISTICS:
                report.separation[name] = _score(_tree(), f_train[name], y_train, f_test[name], y_test)["balanced_accuracy"]
            all_train = np.concatenate([f_train[n] for n in STATISTICS], axis=1)
            all_test = np.concatenate([f_test[n] for n in STATISTICS], axis=1)
            scored = _score(_tree(), all_train, y_train, all_test, y_test)
            report.shortcut = {"accuracy": scored["accuracy"], "auc": scored["auc"]}
        report.spectral = _spectral_floor(train, test, resolution, seed)
    report.warnings = _warnings(report)
    for line in report.warnings:
        log.warning("audit: %s", line)
    _write_json(cache, report.to_json())
    return report


def _warnings(report: AuditReport) -> list[str]:
    out = []
    leaks = {k: n for k, n in report.duplicate_pairs.items() if len(set(k.split("-"))) == 2}
    if leaks:
        kept = not any(report.dropped.values())
        out.append(f"{sum(leaks.values())} pairs of identical files across splits "
                   f"({', '.join(f'{k} {n}' for k, n in sorted(leaks.items()))})"
                   + ("; dedupe is off, so they stay in both splits" if kept else "; dedupe dropped the train/val copies"))
    for name, value in report.separation.items():
        if value >= SEPARATION_WARN:
            out.append(f"{name} alone separates the classes (balanced test accuracy {value:.3f}): a detector "
                       "can learn it instead of the generator's traces")
    return out


def _content_key(prints: list[Fingerprint]) -> str:
    return hashlib.sha256("".join(p.digest for p in prints).encode()).hexdigest()[:16]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    """Atomic write (a unique temporary file renamed over ``path``); a cache that cannot be written
    is logged and skipped: the audit's result does not depend on it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("audit: cache not written (%s): %s", path, err)
        tmp.unlink(missing_ok=True)
