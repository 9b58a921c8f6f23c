"""The evaluation protocol of a trained cell beyond its own test split, as deepfake-detection
benchmarks report it: extra test sets (cross-dataset and held-out generators: DeepfakeBench, Yan
et al. 2023; GenImage, Zhu et al. 2023), per-source metrics on each set (CNNDetection, Wang et al.
CVPR 2020; UniversalFakeDetect, Ojha et al. CVPR 2023), and robustness to test-time perturbations
(JPEG, blur, resizing and chains of them; ``bnn.data.perturb``).

Everything here evaluates one selected checkpoint (``best.pt``) and returns MLflow-ready scalars
whose names are fixed by this module:

    eval_<set>_<metric>                 for each extra test set (``EVAL_METRICS``)
    eval_<set>_source_<source>_<m>      per source of an extra set (``bnn.metrics.per_source_metrics``)
    robust_<perturbation>_<metric>      on the cell's own test split (``ROBUST_METRICS``), the
                                        perturbation's key as ``jpeg_75``, ``resize_0p5``,
                                        ``chain_<name>``

The decision threshold chosen on validation (its equal-error-rate threshold) is passed in, so
``accuracy_valthr`` on every set uses the threshold a deployed detector would have.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bnn.config import FitConfig
from bnn.data import SPLITS, ImageDataset, create_dataset
from bnn.data.perturb import Perturbation
from bnn.detector import Detector
from bnn.evaluation import evaluate
from bnn.metric_table import EVAL, ROBUST, metrics_on
from bnn.metrics import Metrics, per_source_metrics
from bnn.splits import make_loader

log = logging.getLogger(__name__)

# What an extra test set reports (``eval_<set>_<metric>``) and a perturbed test split (``robust_``).
EVAL_METRICS = metrics_on(EVAL)
ROBUST_METRICS = metrics_on(ROBUST)
EVAL_PREFIX, ROBUST_PREFIX, SOURCE_PREFIX = "eval_", "robust_", "source_"
SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
ALL_SPLITS = "all"  # an extra test set's split: every image of the dataset (a folder of one generator's fakes)


@dataclass(frozen=True)
class TestSet:
    """An extra test set of a study (``evaluate:`` in a study file).

    Attributes:
        name: Lower-case ``[a-z0-9_]`` name; the metrics are ``eval_<name>_<metric>``.
        dataset: A registered dataset (``bnn.data.list_datasets()``).
        data_root: Its folder; ``None``: the reader's environment variable or cache.
        data_params: Reader parameters (e.g. ``generators: [tconv4_x4]`` for the synthetic set).
        split: Which split of that dataset is evaluated: ``train``, ``val``, ``test`` or ``all``
            (every image: for a set that exists only to be tested on, such as a flat
            ``{REAL,FAKE}`` folder, whose ``test`` would be its 10% hash split).
        skip_reason: Set when the entry cannot be evaluated on this machine and is skipped with a
            logged warning (its root names an environment variable that is unset).
    """

    name: str
    dataset: str
    data_root: str | None = None
    data_params: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"
    skip_reason: str | None = None

    def definition(self) -> str:
        """What defines the set's metrics (dataset, split, reader parameters) as one JSON line;
        the root is left out (it differs between machines)."""
        return json.dumps({"dataset": self.dataset, "split": self.split, "data_params": dict(self.data_params)},
                          sort_keys=True, default=str)

    def load(self, resolution: int) -> ImageDataset:
        """The set's images with the evaluation preprocessing at ``resolution``.

        Raises:
            DatasetLayoutError, DatasetParamError, KeyError, ValueError: from ``create_dataset``.
        """
        if self.split != ALL_SPLITS:
            return create_dataset(self.dataset, self.split, root=self.data_root, resolution=resolution,
                                  **dict(self.data_params))
        parts = [create_dataset(self.dataset, split, root=self.data_root, resolution=resolution,
                                **dict(self.data_params)) for split in SPLITS]
        first = parts[0]
        return ImageDataset([item for part in parts for item in part.items], name=first.name, split=ALL_SPLITS,
                            description=f"{first.description.split(';')[0]} (all of train, val and test)",
                            roots=first.roots, transform=first.transform,
                            sources=[source for part in parts for source in part.sources])


def protocol_metric_names(test_sets: Sequence[TestSet], perturbations: Sequence[Perturbation]) -> list[str]:
    """The scalar names ``evaluate_protocol`` logs for these sets and perturbations, known before
    any run (per-source names are not: they depend on the data)."""
    names = [f"{EVAL_PREFIX}{s.name}_{m}" for s in test_sets for m in EVAL_METRICS]
    return names + [f"{ROBUST_PREFIX}{p.key}_{m}" for p in perturbations for m in ROBUST_METRICS]


def metric_scalars(metrics: Metrics, prefix: str, names: Sequence[str]) -> dict[str, float]:
    """``{prefix + name: value}`` for ``names`` of ``metrics``."""
    values = metrics.scalars()
    return {f"{prefix}{name}": values[name] for name in names}


def source_scalars(predictions: Sequence[Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """Per-source metrics (``source_<name>_accuracy``, ``_auc``, ``_count``) of predictions that
    carry ``label``, ``prob_fake`` and ``source``, prefixed."""
    if not predictions:
        return {}
    labels = [p["label"] for p in predictions]
    scores = [p["prob_fake"] for p in predictions]
    sources = [p["source"] for p in predictions]
    return {f"{prefix}{k}": v for k, v in per_source_metrics(labels, scores, sources).items()}


def evaluate_protocol(
    model: Detector,
    config: FitConfig,
    *,
    val_threshold: float,
    test_split: ImageDataset | None,
    test_sets: Sequence[TestSet] = (),
    perturbations: Sequence[Perturbation] = (),
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Evaluates a selected checkpoint on extra test sets and on perturbed copies of its test split.

    Args:
        model: The detector (eval mode), e.g. from ``bnn.checkpoint.load_detector``.
        config: The cell's configuration (resolution, batch size, AMP, eval batch cap).
        val_threshold: Decision threshold chosen on validation (``Metrics.eer_threshold`` of val),
            for ``accuracy_valthr``.
        test_split: The cell's own test split (``bnn.splits.load_splits(config)["test"]``); needed
            when ``perturbations`` is not empty.
        test_sets: Extra test sets; those with a ``skip_reason`` are skipped with a warning.
        perturbations: Test-time perturbations applied to each decoded test image before the
            preprocessing and the detector's extra channels.
        device: Where to run; default: the model's device.
        should_stop: Polled before every batch (``bnn.signals.FitInterrupted``).

    Returns:
        ``{name: value}`` with the names of the module docstring; NaN where a metric is undefined.

    Raises:
        DatasetLayoutError, ValueError: An extra set cannot be read.
        FitInterrupted: ``should_stop()`` became true.
    """
    device = device or next(model.parameters()).device
    scalars: dict[str, float] = {}

    def run(dataset: ImageDataset, what: str) -> tuple[Metrics, list[dict]]:
        loader = make_loader(dataset, config, device, shuffle=False)
        _, metrics, predictions, skipped, _ = evaluate(
            model, loader, device, amp=config.amp, max_batches=config.max_eval_batches, desc=what,
            should_stop=should_stop, val_threshold=val_threshold)
        if skipped:
            log.warning("%s: %d unreadable image(s) skipped", what, skipped)
        return metrics, predictions

    for test_set in test_sets:
        if test_set.skip_reason:
            log.warning("extra test set %s skipped: %s", test_set.name, test_set.skip_reason)
            continue
        dataset = test_set.load(config.resolution)
        log.info("extra test set %s: %s", test_set.name, dataset.describe())
        metrics, predictions = run(dataset, f"eval {test_set.name}")
        prefix = f"{EVAL_PREFIX}{test_set.name}_"
        scalars.update(metric_scalars(metrics, prefix, EVAL_METRICS))
        scalars.update(source_scalars(predictions, prefix))
        log.info("extra test set %s: accuracy %.4f, AUC %.4f", test_set.name, metrics.accuracy, metrics.auc)
    if perturbations:
        if test_split is None:
            raise ValueError("perturbations need the cell's test split")
        for perturbation in perturbations:
            metrics, _ = run(test_split.perturbed(perturbation, perturbation.describe()), f"robust {perturbation.key}")
            scalars.update(metric_scalars(metrics, f"{ROBUST_PREFIX}{perturbation.key}_", ROBUST_METRICS))
            log.info("test split under %s: accuracy %.4f, AUC %.4f", perturbation.describe(), metrics.accuracy,
                     metrics.auc)
    return {name: float(value) for name, value in scalars.items()}
