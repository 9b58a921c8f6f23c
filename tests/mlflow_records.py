"""MLflow study records written by the runner's own writer, for the analysis and report tests.

``make_study_record`` writes, through ``studies.record_writer.Tracker`` (the one writer of the
record), a study whose cells the runner cannot train in a test (BNext-S, ResNet-50, many seeds):
each cell's ``FitResult`` is made up here (its metrics, cost and ROC chosen below) and the
Tracker logs it as it logs a trained one (run, tags, params, per-epoch and final metrics, dataset
inputs, artifacts). ``make_shared_records`` writes the studies that ``tests/test_analysis.py`` and
``tests/test_reports.py`` read, once a session (the ``study_records`` fixture of
``tests/conftest.py``). That a trained study's record reads back is ``tests/test_record_contract.py``'s job.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from bnn.cost import Cost
from bnn.metrics import Metrics
from bnn.train import EpochStats, FitResult
from studies import record as R
from studies.record_writer import Tracker
from studies.spec import Cell, Study, load_study

GIT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
SPECS = {  # backbone: (display name, family, binary, base OPs, BOPs, params, binary params)
    "bnext_tiny": ("BNext-T", "BNext", True, 88_000_000, 4_816_896_000, 29_800_000, 27_000_000),
    "bnext_small": ("BNext-S", "BNext", True, 191_000_000, 10_000_000_000, 67_100_000, 62_000_000),
    "bnext_middle": (
        "BNext-M",
        "BNext",
        True,
        339_000_000,
        18_000_000_000,
        133_000_000,
        125_000_000,
    ),
    "resnet50": ("ResNet-50", "ResNet", False, 4_100_000_000, 0, 23_500_000, 0),
}
# (backbone, features, frozen, test accuracy per seed); test AUC = (1 + accuracy) / 2.
DEFAULT_CELLS = [
    ("bnext_tiny", "rgb", False, [0.900, 0.910]),
    ("bnext_tiny", "rgb+sobel", False, [0.850]),
    ("bnext_tiny", "rgb+fft", False, [0.880]),
    ("bnext_tiny", "rgb+lbp", False, [0.885]),
    ("bnext_tiny", "rgb+sobel+fft", False, [0.840]),
    ("bnext_tiny", "rgb+sobel+lbp", False, [0.845]),
    ("bnext_tiny", "rgb+fft+lbp", False, [0.920, 0.930]),
    ("bnext_tiny", "rgb+sobel+fft+lbp", False, [0.860]),
    ("bnext_tiny", "rgb+fft+lbp", True, [0.800]),
    ("bnext_small", "rgb+fft+lbp", False, [0.940]),
    ("resnet50", "rgb", False, [0.950]),
]
EPOCHS = 3
# Measured latency (analysis.latency_frames): ms at batch 1 of the network per backbone; each extra input
# channel adds 0.5 ms end to end and each seed 0.1 ms. Two hosts; ResNet-50 skipped with a reason,
# BNext-T RGB+Mag.+LBP recorded as before latency was measured (no metric, no tag).
NETWORK_MS = {"bnext_tiny": 2.0, "bnext_small": 4.0, "bnext_middle": 6.0}
HOST_A, HOST_B = ("Test CPU A", "2"), ("Test CPU B", "4")
SKIPPED = "no exported engine for this backbone (test)"
OBJECTIVES = [
    {"metric": "test_auc", "direction": "maximize"},
    {"metric": "latency_ms", "direction": "minimize"},
]


def latency_of(backbone: str, features: str, frozen: bool, seed: int) -> tuple[dict, dict]:
    """(metrics, tags) a cell's run gets for its measured latency (see ``NETWORK_MS``)."""
    if backbone not in NETWORK_MS:
        return {}, {R.TAG_LATENCY_SKIPPED: SKIPPED}
    if features == "rgb+sobel+lbp":
        return {}, {}
    network = NETWORK_MS[backbone]
    total = network + 0.5 * (len(features.split("+")) - 1) + 0.1 * seed
    host, threads = HOST_B if frozen else HOST_A
    metrics = {"latency_ms": total, "latency_network_ms": network, "throughput_ips": 4000 / total}
    tags = {
        R.TAG_LATENCY_HOST: host,
        R.TAG_LATENCY_THREADS: threads,
        R.TAG_LATENCY_ENGINE: "openvino test binary",
    }
    return metrics, tags


@dataclass
class StudyRecord:
    """What ``make_study_record`` wrote."""

    tracking_uri: str
    study: str
    experiment_id: str
    parent_run_id: str
    finished: list[dict] = field(default_factory=list)  # one dict per finished run
    unfinished: dict[str, str] = field(default_factory=dict)  # run id -> status


def _cost(backbone: str, features: str, frozen: bool) -> Cost:
    """Adapter 3x3 conv of (3 + extra) channels -> 3 at 224x224 on top of the backbone's OPs."""
    _, _, _, base, bops, n_params, binary_params = SPECS[backbone]
    channels = len(features.split("+")) + 2
    ops = base + 224 * 224 * 3 * channels * 9
    return Cost(bops=bops, flops=ops - bops // 64, ops=ops, params=n_params, binary_params=binary_params,
                trainable_params=300 if frozen else n_params, storage_bytes=n_params // 8,
                feature_flops=1000 * (len(features.split("+")) - 1))


def _roc(auc: float) -> dict[str, list[float]]:
    """A binormal ROC curve with the given AUC (AUC = Phi(d / sqrt 2))."""
    from scipy.stats import norm

    d = np.sqrt(2) * norm.ppf(min(auc, 0.999))
    fpr = np.linspace(0, 1, 21)
    tpr = norm.cdf(norm.ppf(np.clip(fpr, 1e-6, 1 - 1e-6)) + d)
    tpr[0], tpr[-1] = 0.0, 1.0
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.linspace(1, 0, 21).tolist()}


def _split(accuracy: float, auc: float, eer: float, ap: float, real: float, fake: float, roc=None) -> Metrics:
    # Calibration and operating-point metrics are left out of these records (``_Made.omitted``):
    # the demo record is a study without the evaluation protocol's extra sections.
    return dataclasses.replace(Metrics.of_empty_split(), accuracy=accuracy, auc=auc, eer=eer, ap=ap,
                               accuracy_real=real, accuracy_fake=fake, count=32, roc=roc or {})


_NOT_RECORDED = ("ece", "brier", "tpr_at_fpr_1pct", "tpr_at_fpr_0p1pct", "eer_threshold", "accuracy_valthr")


@dataclass
class _Made(FitResult):
    """A made-up cell outcome; ``scalars()`` leaves out ``omitted`` (a record of an older version,
    or one a report must refuse)."""

    omitted: tuple[str, ...] = ()

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in super().scalars().items() if k not in self.omitted}


def _result(cell: Cell, accuracy: float, dataset: str, staging: Path, omit: tuple[str, ...]) -> _Made:
    config = cell.config
    val = _split(accuracy + 0.01, (1 + accuracy) / 2 + 0.002, 1 - accuracy, accuracy, accuracy, accuracy)
    test = _split(accuracy, (1 + accuracy) / 2, 1 - accuracy - 0.01, accuracy + 0.02, accuracy + 0.01,
                  accuracy - 0.01, roc=_roc((1 + accuracy) / 2))
    history = [_epoch(epoch, accuracy, config.seed) for epoch in range(EPOCHS)]
    labels = [0, 1] * 16
    predictions = [{"path": f"{i:03d}.png", "label": label, "prob_fake": 0.9 if label else 0.1, "source": ""}
                   for i, label in enumerate(labels)]
    omitted = (*(f"{split}_{m}" for split in ("val", "test") for m in _NOT_RECORDED), *omit)
    return _Made(config=config, best_epoch=EPOCHS - 1, history=history, val=val, test=test,
                 cost=_cost(config.backbone, config.features, config.freeze_backbone),
                 checkpoint=staging / "best.pt", skipped_images=0,
                 data={split: f"{dataset} benchmark (generated locally, 64 images)" for split in ("train", "val", "test")},
                 data_digest={"train": "abc"}, test_predictions=predictions, omitted=omitted)


def _epoch(epoch: int, accuracy: float, seed: int) -> EpochStats:
    progress = (epoch + 1) / EPOCHS
    return EpochStats(epoch=epoch, train_loss=0.7 - 0.3 * progress - 0.05 * seed, val_loss=0.72 - 0.25 * progress,
                      val_accuracy=0.5 + (accuracy + 0.01 - 0.5) * progress, val_auc=0.5 + accuracy / 2 * progress,
                      lr=1e-4 / (epoch + 1), epoch_seconds=2.0, train_images_per_second=32.0,
                      eval_images_per_second=64.0, skipped_images=0)


def _study(tracking_uri: str, study: str, staging: Path, dataset: str, objectives: list[dict] | None) -> Study:
    """The study file (written to ``staging``) whose configuration every cell shares."""
    lines = [
        f"name: {study}",
        f"tracking_uri: {tracking_uri}",
        f"dataset: {dataset}",
        *(["data_params: {count: 64}"] if dataset == "synthetic" else []),
        f"defaults: {{backbone: bnext_tiny, resolution: 32, epochs: {EPOCHS}, batch_size: 16}}",
        "grid:",
        "  features: {powerset: [sobel, fft, lbp]}",
        f"objective: {json.dumps(objectives or [{'metric': 'val_accuracy', 'direction': 'maximize'}])}",
        f"latency: {{enabled: {str(bool(objectives)).lower()}}}",
        "log_checkpoint: false",
        f"runs_dir: {staging / 'runs'}",
    ]
    path = staging / f"{study}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_study(path)


def _drop_predictions(client: MlflowClient, run_id: str) -> None:
    """Removes the run's test predictions from its (local) artifact store: these records are of
    runs without per-image predictions, as an older version logged them."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    root = Path(url2pathname(urlparse(client.get_run(run_id).info.artifact_uri).path))
    shutil.rmtree(root / Path(R.ARTIFACT_PREDICTIONS).parent)


def make_study_record(
    tracking_uri: str,
    study: str = "demo",
    cells: list | None = None,
    dataset: str = "synthetic",
    unfinished: bool = True,
    omit_metrics: tuple[str, ...] = (),
    commit_tag: str = R.TAG_GIT_COMMIT,
    latency: bool = False,
    objectives: list[dict] | None = None,
) -> StudyRecord:
    """Writes a study's MLflow record with ``studies.record_writer.Tracker``.

    Args:
        tracking_uri: E.g. ``sqlite:///{tmp_path}/mlflow.db`` (artifacts go beside the database).
        study: Study = experiment name.
        cells: ``(backbone, features, frozen, [test accuracy per seed])``; default ``DEFAULT_CELLS``
            (8 feature sets of BNext-T, a frozen BNext-T, BNext-S, ResNet-50; two seeds for two).
        dataset: The ``dataset`` of every cell.
        unfinished: Also add a FAILED and a RUNNING cell run (BNext-M RGB, seeds 0 and 1).
        omit_metrics: Final metrics not to log (to make a report fail).
        commit_tag: The git commit's tag (``R.LEGACY_TAG_GIT_COMMIT`` for a record of an older
            version); its value is ``GIT_COMMIT``.
        latency: Log measured latency as ``latency_of`` says (two hosts, a skipped cell, a cell
            recorded as before latency existed), as the runner logs a measurement.
        objectives: The study's objectives (the parent run's ``R.TAG_OBJECTIVES``); without them
            the record is one of a version before objectives were tagged.
    """
    staging = Path(tempfile.mkdtemp(prefix="study-record-"))
    spec = _study(tracking_uri, study, staging, dataset, objectives)
    planned = [(backbone, features, frozen, seed, accuracy, len(accuracies) > 1)
               for backbone, features, frozen, accuracies in (DEFAULT_CELLS if cells is None else cells)
               for seed, accuracy in enumerate(accuracies)]
    failing = [("bnext_middle", "rgb", False, seed, None, False) for seed in (0, 1)] if unfinished else []
    made = []
    for backbone, features, frozen, seed, accuracy, seeded in planned + failing:
        axes = {"features": features, "backbone": backbone, "freeze_backbone": frozen, **({"seed": seed} if seeded else {})}
        config = spec.base.model_copy(update={"backbone": backbone, "features": features, "freeze_backbone": frozen,
                                              "seed": seed})
        made.append((Cell.of(config, axes, spec.runs_dir), accuracy))
    spec = dataclasses.replace(spec, cells=[cell for cell, _ in made])
    tracker = Tracker(spec)
    record = StudyRecord(tracking_uri, study, tracker.experiment_id, tracker.parent_id)
    runs = [tracker.parent_id]
    for cell, accuracy in made:
        run_id = tracker.cell_run(cell)
        runs.append(run_id)
        if accuracy is None:  # the FAILED and the RUNNING cell: one epoch's train loss
            status = "FAILED" if cell.config.seed == 0 else "RUNNING"
            tracker.client.log_metric(run_id, R.EPOCH_METRICS[0], 0.69, step=0)
            if status == "FAILED":
                tracker.end(run_id, status, "boom")
            record.unfinished[run_id] = status
            continue
        result = _result(cell, accuracy, dataset, staging, omit_metrics)
        for stats in result.history:
            tracker.epoch_logger(run_id)(stats)
        tracker.log_result(run_id, result)
        config = cell.config
        timed, timing_tags = latency_of(config.backbone, config.features, config.freeze_backbone, config.seed) \
            if latency else ({}, {})
        if timed or timing_tags:
            tracker.log_scalars(run_id, timed, timing_tags)
        tracker.end(run_id, "FINISHED")
        _drop_predictions(tracker.client, run_id)
        record.finished.append({"run_id": run_id, "backbone": config.backbone, "features": config.features,
                                "frozen": config.freeze_backbone, "seed": config.seed, **result.scalars(), **timed})
    tracker.finish_parent("FINISHED")
    for run_id in runs:  # the commit a fixed one (and its tag an older version's, if asked)
        tracker.client.delete_tag(run_id, R.TAG_GIT_COMMIT)
        tracker.client.set_tag(run_id, commit_tag, GIT_COMMIT)
    if not objectives:
        tracker.client.delete_tag(tracker.parent_id, R.TAG_OBJECTIVES)
    shutil.rmtree(staging, ignore_errors=True)
    return record


def make_shared_records(root: Path) -> dict[str, StudyRecord]:
    """The studies in one SQLite store under ``root`` (the ``study_records`` fixture of conftest).

    Studies: ``demo`` (the default cells, with a FAILED and a RUNNING run), ``other`` (one cell),
    ``coco`` (two cells on COCOFake, for the published block), ``broken`` (no ``test_auc``) and
    ``aliased`` (its experiment renamed). ``demo`` has measured latency (``latency_of``) and two
    objectives (``OBJECTIVES``); the others are recorded as before latency and objectives were.
    """
    uri = f"sqlite:///{root}/mlflow.db"
    coco = [
        ("bnext_tiny", "rgb+fft+lbp", False, [0.95]),
        ("bnext_tiny", "rgb+fft+lbp", True, [0.85]),
    ]
    return {
        "demo": make_study_record(
            uri, "demo", latency=True, objectives=OBJECTIVES
        ),
        "other": make_study_record(  # as an older version wrote it: the custom commit tag
            uri,
            "other",
            cells=DEFAULT_CELLS[:1],
            unfinished=False,
            commit_tag=R.LEGACY_TAG_GIT_COMMIT,
        ),
        "coco": make_study_record(
            uri, "coco", cells=coco, dataset="cocofake", unfinished=False
        ),
        "broken": make_study_record(
            uri,
            "broken",
            cells=DEFAULT_CELLS[:2],
            unfinished=False,
            omit_metrics=("test_auc",),
        ),
        "aliased": _renamed(
            make_study_record(
                uri, "aliased", cells=DEFAULT_CELLS[:1], unfinished=False
            ),
            "aliased-experiment",
        ),
    }


def _renamed(record: StudyRecord, name: str) -> StudyRecord:
    """The study's experiment renamed: it is then found by its parent's ``bnn.study`` tag."""
    MlflowClient(tracking_uri=record.tracking_uri).rename_experiment(record.experiment_id, name)
    return record
