"""MLflow study records written as the runner writes them, for the analysis and report tests.

``make_study_record`` writes a study with the names of ``studies.record`` (parent run, one child
run per cell with params, tags, final and per-epoch metrics, artifacts) for cells that the runner
cannot train in a test (BNext-S, ResNet-50, many seeds); ``make_shared_records`` writes the
studies that ``tests/test_analysis.py`` and ``tests/test_reports.py`` read, once a session (the
``study_records`` fixture of ``tests/conftest.py``). That the runner's writer and this reader agree
is ``tests/test_record_contract.py``'s job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from studies import record as R

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


def _ops(backbone: str, features: str) -> tuple[int, int, int]:
    """(ops, bops, flops): adapter 3x3 conv of (3 + extra) channels -> 3 at 224x224 on top."""
    _, _, _, base, bops, _, _ = SPECS[backbone]
    channels = len(features.split("+")) + 2
    ops = base + 224 * 224 * 3 * channels * 9
    return ops, bops, ops - bops // 64


def _params(
    backbone: str, features: str, frozen: bool, seed: int, dataset: str, axes: str
) -> dict[str, str]:
    """The flattened FitConfig, as ``studies.record_writer.Tracker`` logs it (strings, nested keys dotted)."""
    return {
        R.PARAM_BACKBONE: backbone,
        R.PARAM_FEATURES: features,
        R.PARAM_FREEZE_BACKBONE: str(frozen),
        "pretrained": "None",
        "compat": "exact",
        R.PARAM_DATASET: dataset,
        "data_root": "None",
        "data_params.count": "64",
        "resolution": "32",
        "epochs": str(EPOCHS),
        "batch_size": "16",
        "grad_accumulation": "1",
        "lr": "0.0001",
        "min_lr": "1e-05",
        "lr_decay_epochs": "5",
        "weight_decay": "0.01",
        "betas": "[0.9, 0.999]",
        "grad_clip_norm": "1.0",
        "amp": "True",
        "device": "auto",
        "num_workers": "None",
        R.PARAM_SEED: str(seed),
        "max_train_samples": "None",
        "max_val_samples": "None",
        "max_test_samples": "None",
        "max_train_batches": "None",
        "max_eval_batches": "None",
        R.PARAM_AXES: axes,
    }


def _roc(auc: float) -> dict[str, list[float]]:
    """A binormal ROC curve with the given AUC (AUC = Phi(d / sqrt 2))."""
    from scipy.stats import norm

    d = np.sqrt(2) * norm.ppf(min(auc, 0.999))
    fpr = np.linspace(0, 1, 21)
    tpr = norm.cdf(norm.ppf(np.clip(fpr, 1e-6, 1 - 1e-6)) + d)
    tpr[0], tpr[-1] = 0.0, 1.0
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.linspace(1, 0, 21).tolist()}


def make_study_record(
    tracking_uri: str,
    study: str = "demo",
    artifact_root: Path | None = None,
    cells: list | None = None,
    dataset: str = "synthetic",
    unfinished: bool = True,
    omit_metrics: tuple[str, ...] = (),
    commit_tag: str = R.TAG_GIT_COMMIT,
    latency: bool = False,
    objectives: list[dict] | None = None,
) -> StudyRecord:
    """Writes a study's MLflow record following the runner's contract.

    Args:
        tracking_uri: E.g. ``sqlite:///{tmp_path}/mlflow.db``.
        study: Study = experiment name.
        artifact_root: Folder for the experiment's artifacts (required for SQLite stores).
        cells: ``(backbone, features, frozen, [test accuracy per seed])``; default ``DEFAULT_CELLS``
            (8 feature sets of BNext-T, a frozen BNext-T, BNext-S, ResNet-50; two seeds for two).
        dataset: The ``dataset`` param of every cell.
        unfinished: Also add a FAILED and a RUNNING cell run.
        omit_metrics: Final metrics not to log (to make a report fail).
        commit_tag: The git commit's tag (``R.LEGACY_TAG_GIT_COMMIT`` for a record of an older version).
        latency: Log measured latency as ``latency_of`` says (two hosts, a skipped cell, a cell
            recorded as before latency existed).
        objectives: The study's objectives, tagged on the parent run (``R.TAG_OBJECTIVES``).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    location = (Path(artifact_root) / study).as_uri() if artifact_root else None
    experiment_id = client.create_experiment(study, artifact_location=location)
    parent = client.create_run(
        experiment_id,
        run_name=study,
        tags={
            R.TAG_ROLE: R.ROLE_STUDY,
            R.TAG_STUDY: study,
            commit_tag: GIT_COMMIT,
            **({R.TAG_OBJECTIVES: json.dumps(objectives)} if objectives else {}),
        },
    )
    parent_id = parent.info.run_id
    staging = Path(tempfile.mkdtemp(prefix="study-record-"))
    study_file = staging / f"{study}.yaml"
    study_file.write_text(f"name: {study}\ngrid:\n  features: {{powerset: [sobel, fft, lbp]}}\n")
    client.log_artifact(parent_id, str(study_file), artifact_path=R.ARTIFACT_STUDY_DIR)
    record = StudyRecord(tracking_uri, study, experiment_id, parent_id)

    cells = DEFAULT_CELLS if cells is None else cells
    for index, (backbone, features, frozen, accuracies) in enumerate(cells):
        for seed, accuracy in enumerate(accuracies):
            name, family, binary, _, _, n_params, binary_params = SPECS[backbone]
            ops, bops, flops = _ops(backbone, features)
            axes = f"features={features}|backbone={backbone}|freeze_backbone={frozen}"
            axes += f"|seed={seed}" if len(accuracies) > 1 else ""
            tags = {
                R.TAG_PARENT_RUN_ID: parent_id,
                R.TAG_ROLE: R.ROLE_CELL,
                R.TAG_CELL_ID: f"{index:06x}{seed:06x}",
                R.TAG_CELL_STUDY: study,
                R.TAG_MODEL: name,
                R.TAG_FAMILY: family,
                R.TAG_BINARY: str(binary).lower(),
                R.TAG_DATA: f"{dataset} benchmark (generated locally, 64 images)",
                R.TAG_SYNTHETIC: str(dataset == "synthetic").lower(),
                R.TAG_DATA_DIGEST: "train:abc",
                R.TAG_ATTEMPTS: "1",
                commit_tag: GIT_COMMIT,
            }
            timed, timing_tags = latency_of(backbone, features, frozen, seed) if latency else ({}, {})
            tags.update(timing_tags)
            run_id = client.create_run(
                experiment_id, run_name=f"{name} {features}", tags=tags
            ).info.run_id
            params = _params(backbone, features, frozen, seed, dataset, axes)
            final = {
                "val_accuracy": accuracy + 0.01,
                "val_auc": (1 + accuracy) / 2 + 0.002,
                "val_eer": 1 - accuracy,
                "val_ap": accuracy,
                "val_accuracy_real": accuracy,
                "val_accuracy_fake": accuracy,
                "test_accuracy": accuracy,
                "test_auc": (1 + accuracy) / 2,
                "test_eer": 1 - accuracy - 0.01,
                "test_ap": accuracy + 0.02,
                "test_accuracy_real": accuracy + 0.01,
                "test_accuracy_fake": accuracy - 0.01,
                "val_count": 32,
                "test_count": 32,
                "best_epoch": EPOCHS - 1,
                "skipped_images": 0,
                "bops": bops,
                "flops": flops,
                "ops": ops,
                "params": n_params,
                "binary_params": binary_params,
                "trainable_params": 300 if frozen else n_params,
                "storage_bytes": n_params // 8,
                "feature_flops": 1000 * (len(features.split("+")) - 1),
                **timed,
            }
            final = {k: v for k, v in final.items() if k not in omit_metrics}
            metrics = [Metric(k, float(v), 0, 0) for k, v in final.items()]
            for epoch in range(EPOCHS):
                progress = (epoch + 1) / EPOCHS
                epoch_values = dict(
                    zip(
                        R.EPOCH_METRICS,  # train loss, val loss, val acc, val AUC, lr, s, images/s
                        (
                            0.7 - 0.3 * progress - 0.05 * seed,
                            0.72 - 0.25 * progress,
                            0.5 + (accuracy + 0.01 - 0.5) * progress,
                            0.5 + accuracy / 2 * progress,
                            1e-4 / (epoch + 1),
                            2.0,
                            32.0,
                        ),
                        strict=True,
                    )
                )
                metrics += [Metric(k, v, epoch, epoch) for k, v in epoch_values.items()]
            client.log_batch(
                run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()]
            )
            tmp = staging / run_id
            roc = tmp / R.ARTIFACT_ROC
            roc.parent.mkdir(parents=True)
            roc.write_text(json.dumps(_roc((1 + accuracy) / 2)))
            (tmp / R.ARTIFACT_CONFIG).write_text(
                f"backbone: {backbone}\nfeatures: {features}\nseed: {seed}\n"
            )
            client.log_artifact(run_id, str(tmp / R.ARTIFACT_CONFIG))
            client.log_artifacts(run_id, str(roc.parent), artifact_path=Path(R.ARTIFACT_ROC).parent.as_posix())
            client.set_terminated(run_id, "FINISHED")
            record.finished.append(
                {
                    "run_id": run_id,
                    "backbone": backbone,
                    "features": features,
                    "frozen": frozen,
                    "seed": seed,
                    **final,
                }
            )
    if unfinished:
        for status in ("FAILED", "RUNNING"):
            tags = {
                R.TAG_PARENT_RUN_ID: parent_id,
                R.TAG_ROLE: R.ROLE_CELL,
                R.TAG_CELL_ID: f"bad{status.lower()}",
                R.TAG_CELL_STUDY: study,
                R.TAG_MODEL: "BNext-M",
                R.TAG_FAMILY: "BNext",
                R.TAG_BINARY: R.TRUE,
                commit_tag: GIT_COMMIT,
            }
            run_id = client.create_run(
                experiment_id, run_name=f"BNext-M {status}", tags=tags
            ).info.run_id
            params = _params("bnext_middle", "rgb", False, 0, dataset, "backbone=bnext_middle")
            client.log_batch(
                run_id,
                params=[Param(k, v) for k, v in params.items()],
                metrics=[Metric(R.EPOCH_METRICS[0], 0.69, 0, 0)],
                tags=[RunTag(R.TAG_FAILURE, "boom")] if status == "FAILED" else [],
            )
            if status != "RUNNING":
                client.set_terminated(run_id, status)
            record.unfinished[run_id] = status
    client.set_terminated(parent_id, "FINISHED")
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
    artifacts = root / "artifacts"
    coco = [
        ("bnext_tiny", "rgb+fft+lbp", False, [0.95]),
        ("bnext_tiny", "rgb+fft+lbp", True, [0.85]),
    ]
    return {
        "demo": make_study_record(
            uri, "demo", artifact_root=artifacts, latency=True, objectives=OBJECTIVES
        ),
        "other": make_study_record(  # as an older version wrote it: the custom commit tag
            uri,
            "other",
            artifact_root=artifacts,
            cells=DEFAULT_CELLS[:1],
            unfinished=False,
            commit_tag=R.LEGACY_TAG_GIT_COMMIT,
        ),
        "coco": make_study_record(
            uri, "coco", artifact_root=artifacts, cells=coco, dataset="cocofake", unfinished=False
        ),
        "broken": make_study_record(
            uri,
            "broken",
            artifact_root=artifacts,
            cells=DEFAULT_CELLS[:2],
            unfinished=False,
            omit_metrics=("test_auc",),
        ),
        "aliased": _renamed(
            make_study_record(
                uri, "aliased", artifact_root=artifacts, cells=DEFAULT_CELLS[:1], unfinished=False
            ),
            "aliased-experiment",
        ),
    }


def _renamed(record: StudyRecord, name: str) -> StudyRecord:
    """The study's experiment renamed: it is then found by its parent's ``bnn.study`` tag."""
    MlflowClient(tracking_uri=record.tracking_uri).rename_experiment(record.experiment_id, name)
    return record
