"""Training and evaluation of one detector configuration: ``fit(config) -> FitResult``.

Follows the recipe of Lanzino et al., CVPRW 2024 (AdamW, BCE with pos_weight, linear learning-rate
decay over 5 epochs), with what a study runner needs on top: the checkpoint is selected on
validation accuracy (ties: lower validation loss), the test split is evaluated once with it, every
epoch leaves a resumable checkpoint, and CPU runs repeat exactly for a given seed.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bnn.backbones.binary import BinaryConv2d, set_weight_temperature
from bnn.config import FitConfig
from bnn.cost import Cost, count
from bnn.data import ImageDataset, collate_skip, create_dataset
from bnn.detector import Detector, create_detector
from bnn.distill import load_teacher, mix_distillation, teacher_logits
from bnn.metrics import Metrics, bootstrap_ci, compute_metrics, per_source_metrics

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# Kept in best.pt: the decision threshold chosen on validation (its equal-error-rate threshold).
VAL_THRESHOLD_KEY = "val_eer_threshold"


@dataclass
class EpochStats:
    """What callbacks receive after every epoch (``epoch`` counts from 0)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float
    lr: float
    epoch_seconds: float
    train_images_per_second: float
    eval_images_per_second: float
    skipped_images: int


@dataclass
class FitResult:
    """Outcome of ``fit``.

    Attributes:
        config: The resolved configuration.
        best_epoch: Epoch whose checkpoint was selected on validation.
        history: One ``EpochStats`` per finished epoch.
        val: Validation metrics of the selected checkpoint.
        test: Test metrics of the selected checkpoint (the test split is read once, at the end).
        cost: Cost of the detector per image at the configured resolution.
        checkpoint: Path of the selected checkpoint (``best.pt``).
        skipped_images: Unreadable images skipped over the whole run.
        data: Which data the run used (the datasets' ``describe()``), per split.
        data_digest: Digests of the splits' file lists.
        test_predictions: Per test image: path, label (1 = fake), fake probability, source.
        test_extra: ``test_extra_scalars`` of the test predictions: 95% bootstrap intervals of
            accuracy and AUC, per-source metrics.
        device: Where it ran.
        resumed_from_epoch: Last finished epoch found in a checkpoint, or -1 for a fresh run.
    """

    config: FitConfig
    best_epoch: int
    history: list[EpochStats]
    val: Metrics
    test: Metrics
    cost: Cost
    checkpoint: Path
    skipped_images: int
    data: dict[str, str]
    data_digest: dict[str, str]
    test_predictions: list[dict] = field(repr=False, default_factory=list)
    test_extra: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    resumed_from_epoch: int = -1

    def scalars(self) -> dict[str, float]:
        """Every final scalar of the run by its metric name (``scalar_names()`` lists them):
        ``val_*`` and ``test_*`` metrics, the cost (``ops``, ``bops``, ``params``, ...),
        ``best_epoch`` and ``skipped_images``, the test split's confidence intervals and per-source
        metrics (``test_extra``)."""
        values = {**self.val.scalars("val_"), **self.test.scalars("test_"), **self.test_extra, **self.cost.as_dict()}
        values.update(best_epoch=self.best_epoch, skipped_images=self.skipped_images)
        return {name: float(value) for name, value in values.items()}


def scalar_names() -> list[str]:
    """The names ``FitResult.scalars()`` returns, known before any run (for validating objectives)."""
    metrics = [f.name for f in fields(Metrics) if f.name != "roc"]
    return [*(f"val_{m}" for m in metrics), *(f"test_{m}" for m in metrics), *CI_NAMES,
            *(f.name for f in fields(Cost)), "best_epoch", "skipped_images"]


# 95% bootstrap confidence intervals of the test split (``bnn.metrics.bootstrap_ci``).
CI_METRICS = ("accuracy", "auc")
CI_NAMES = tuple(f"test_{m}_ci_{end}" for m in CI_METRICS for end in ("low", "high"))


def test_extra_scalars(predictions: Sequence[dict], seed: int = 0) -> dict[str, float]:
    """From test predictions (``label``, ``prob_fake``, ``source``): ``test_accuracy_ci_low``,
    ``test_accuracy_ci_high``, ``test_auc_ci_low``, ``test_auc_ci_high`` (95% percentile
    bootstrap over images, 1000 resamples, seeded) and ``source_<name>_accuracy`` /
    ``_auc`` (fake sources against all reals) / ``_count`` per source."""
    labels = [p["label"] for p in predictions]
    scores = [p["prob_fake"] for p in predictions]
    values: dict[str, float] = {}
    for metric in CI_METRICS:
        low, high = bootstrap_ci(labels, scores, metric, seed=seed)
        values.update({f"test_{metric}_ci_low": low, f"test_{metric}_ci_high": high})
    if predictions:
        values.update(per_source_metrics(labels, scores, [p["source"] for p in predictions]))
    return values


class FitInterrupted(Exception):
    """``fit`` stopped at a safe point (between batches) because ``should_stop`` returned true;
    ``output_dir/last.pt`` holds the last finished epoch, so the same call resumes."""


Callback = Callable[[EpochStats], None]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_splits(config: FitConfig) -> dict[str, ImageDataset]:
    """The train, val and test datasets of ``config`` (listing only: no image is decoded).

    Raises:
        ValueError: A split has no image (an empty val split would make every validation metric
            NaN and the checkpoint selection meaningless), or train lacks one class.
        DatasetLayoutError, TypeError, KeyError: from ``bnn.data.create_dataset``.
    """
    caps = {"train": config.max_train_samples, "val": config.max_val_samples, "test": config.max_test_samples}
    splits = {}
    for split, cap in caps.items():
        ds = create_dataset(
            config.dataset, split, root=config.data_root, resolution=config.resolution,
            augment=config.augment.resolved(), **config.data_params,
        )
        splits[split] = ds.subsample(cap, seed=config.seed) if cap is not None else ds
        if len(splits[split]) == 0:
            hint = {"val": " (raise data_params.val_fraction, or give the dataset a val folder)"}.get(split, "")
            raise ValueError(f"the {split} split has no images{hint}: {splits[split].describe()}")
    counts = splits["train"].class_counts()
    if counts["fake"] == 0 or counts["real"] == 0:
        missing = "fake" if counts["fake"] == 0 else "real"
        raise ValueError(f"the train split has no {missing} images: {splits['train'].describe()}")
    return splits


def make_loader(ds: ImageDataset, config: FitConfig, device: torch.device, shuffle: bool, epoch: int = 0) -> DataLoader:
    workers = config.num_workers
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = 0 if device.type == "cpu" and cpus <= 2 else min(8, max(cpus - 1, 0))
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    return DataLoader(
        ds,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skip,
        generator=generator,
        persistent_workers=False,
    )


def _amp_context(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _progress(iterable, **kwargs):
    return tqdm(iterable, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True, **kwargs)


class ProgressLog:
    """Periodic progress lines for a log when stderr is not a terminal (nohup, CI, cluster jobs).

    On a terminal the tqdm bars show progress and this logs nothing. Elsewhere ``update`` logs
    ``<desc>: <done>/<total> images, <rate> img/s, running loss <loss>`` at most every ``interval``
    seconds, so a long epoch is visibly alive.

    Args:
        desc: What is running (``epoch 3``).
        total: Images expected in the loop.
        interval: Seconds between lines.
        enabled: Log at all; default: stderr is not a terminal.
        clock: Seconds (``time.perf_counter``).
    """

    def __init__(
        self, desc: str, total: int, interval: float, enabled: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.desc, self.total, self.interval, self.clock = desc, total, interval, clock
        self.enabled = (not sys.stderr.isatty()) if enabled is None else enabled
        self.start = self.last = clock()

    def update(self, done: int, loss: float) -> None:
        """Called after each batch with images done so far and their mean loss."""
        now = self.clock()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        log.info("%s: %d/%d images, %.1f img/s, running loss %.4f", self.desc, done, self.total, rate, loss)


@torch.no_grad()
def evaluate(
    model: Detector,
    loader: DataLoader,
    device: torch.device,
    pos_weight: float = 1.0,
    amp: bool = True,
    max_batches: int | None = None,
    desc: str = "eval",
    should_stop: Callable[[], bool] | None = None,
    val_threshold: float | None = None,
) -> tuple[float, Metrics, list[dict], int, float]:
    """Runs ``model`` over ``loader`` (whose dataset is an ``ImageDataset``).

    Args:
        val_threshold: Decision threshold chosen on validation, for ``Metrics.accuracy_valthr``
            (``None``: the set's own equal-error-rate threshold, as for the validation split).

    Returns:
        (mean loss, metrics, per-sample predictions ``{path, label, prob_fake, source}``, skipped
        images, images per second).

    Raises:
        FitInterrupted: ``should_stop()`` became true (checked before every batch).
    """
    model.eval()
    losses, labels_all, probs_all, paths_all = [], [], [], []
    skipped, seen, start = 0, 0, time.perf_counter()
    weight = torch.tensor(pos_weight, device=device)
    for i, (images, labels, paths, n_skipped) in enumerate(_progress(loader, desc=desc)):
        if max_batches is not None and i >= max_batches:
            break
        if should_stop is not None and should_stop():
            raise FitInterrupted(f"stopped during {desc}")
        skipped += n_skipped
        if len(labels) == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _amp_context(device, amp):
            logits = model(images).float()
        losses.append(F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight, reduction="sum").item())
        labels_all.append(labels.cpu())
        probs_all.append(torch.sigmoid(logits).cpu())
        paths_all.extend(paths)
        seen += len(labels)
    elapsed = time.perf_counter() - start
    if seen == 0:
        return float("nan"), compute_metrics([], []), [], skipped, 0.0
    y = torch.cat(labels_all).numpy()
    p = torch.cat(probs_all).numpy()
    sources = loader.dataset.source_by_path()
    predictions = [{"path": path, "label": int(t), "prob_fake": float(q), "source": sources[path]}
                   for path, t, q in zip(paths_all, y, p, strict=True)]
    metrics = compute_metrics(y, p, val_threshold=val_threshold)
    return sum(losses) / seen, metrics, predictions, skipped, seen / max(elapsed, 1e-9)


def lr_at(config: FitConfig, progress: float) -> float:
    """Learning rate after ``progress`` epochs (a float: epoch + fraction of its batches done).

    ``linear`` (the paper's LinearLR, stepped once per epoch): ``lr`` at epoch 0 to ``min_lr`` at
    epoch ``lr_decay_epochs``, then flat. ``cosine`` (Loshchilov & Hutter, SGDR; BNext's and
    ReActNet's schedule), per step: from ``lr`` to ``min_lr`` over ``epochs``. Either one starts
    with a linear warm-up from 0 over ``warmup_epochs``, per step.
    """
    if config.warmup_epochs > 0 and progress < config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    if config.lr_schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1e-9)
        t = min(max(progress - config.warmup_epochs, 0.0) / span, 1.0)
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t))
    t = min(math.floor(progress), config.lr_decay_epochs) / config.lr_decay_epochs
    return config.lr + t * (config.min_lr - config.lr)


def _per_step_lr(config: FitConfig) -> bool:
    return config.lr_schedule != "linear" or config.warmup_epochs > 0


def _parameter_groups(model: Detector, config: FitConfig) -> list[dict]:
    """AdamW groups: latent binary weights get ``binary_weight_decay`` when it is set.

    Weight decay pulls latent weights towards 0, where sign flips are cheapest, so BNN practice
    (ReActNet, BNext) sets it to 0 for them; ``None`` keeps one group with ``weight_decay``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.binary_weight_decay is None:
        return [{"params": trainable, "weight_decay": config.weight_decay}]
    binary = {id(m.weight) for m in model.modules() if isinstance(m, BinaryConv2d)}
    return [
        {"params": [p for p in trainable if id(p) not in binary], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if id(p) in binary], "weight_decay": config.binary_weight_decay},
    ]


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # unique: two writers never share it
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _better(candidate: EpochStats, best: EpochStats | None) -> bool:
    if best is None or math.isnan(best.val_accuracy):
        return True
    if candidate.val_accuracy != best.val_accuracy:
        return candidate.val_accuracy > best.val_accuracy
    return candidate.val_loss < best.val_loss


def default_output_dir(config: FitConfig) -> Path:
    return Path("runs") / f"{config.backbone}-{config.features}-{config.content_id()}"


def fit(
    config: FitConfig, callbacks: Sequence[Callback] = (), should_stop: Callable[[], bool] | None = None
) -> FitResult:
    """Trains one detector configuration, resuming from ``output_dir/last.pt`` when present.

    Args:
        config: The run's settings.
        callbacks: Called with an ``EpochStats`` after every finished epoch, in order. An exception
            raised by a callback stops the run after that epoch's checkpoint was written.
        should_stop: Polled before every training and evaluation batch; when it returns true,
            ``FitInterrupted`` is raised there (a safe point: the last finished epoch's
            ``last.pt`` is intact and the same call resumes from it).

    Raises:
        ValueError: An empty split, or a train split with one class (``load_splits``).
        FitInterrupted: ``should_stop()`` became true.

    Returns:
        A ``FitResult``; the selected checkpoint is ``output_dir/best.pt``.
    """
    device = resolve_device(config.device)
    out = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    seed_everything(config.seed)

    splits = load_splits(config)  # before anything is created: bad data leaves no output folder
    out.mkdir(parents=True, exist_ok=True)
    data = {name: ds.describe() for name, ds in splits.items()}
    for name, text in data.items():
        log.info("data %s: %s", name, text)
    counts = splits["train"].class_counts()
    pos_weight = counts["real"] / counts["fake"]

    model = create_detector(
        config.backbone, config.features, config.freeze_backbone, pretrained=config.pretrained, compat=config.compat,
        head=config.head,
    ).to(device)
    teacher = load_teacher(config, device) if config.distill else None  # frozen, eval mode
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.lr, betas=config.betas)
    use_scaler = config.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    weight = torch.tensor(pos_weight, device=device)

    history: list[EpochStats] = []
    best: EpochStats | None = None
    skipped_total = 0
    start_epoch = 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    resumed_from = -1
    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        if state.get("content_id") != config.content_id():
            raise RuntimeError(
                f"'{last_path}' belongs to a different configuration ({state.get('content_id')} != "
                f"{config.content_id()}); use another output_dir or delete it"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history = [EpochStats(**h) for h in state["history"]]
        best = EpochStats(**state["best"]) if state["best"] else None
        skipped_total = state["skipped_images"]
        start_epoch = state["epoch"] + 1
        resumed_from = state["epoch"]
        log.info("resuming %s after epoch %d", out, state["epoch"])

    val_loader = make_loader(splits["val"], config, device, shuffle=False)
    epochs = _progress(range(start_epoch, config.epochs), desc="epochs", initial=start_epoch, total=config.epochs)
    for epoch in epochs:
        torch.manual_seed(config.seed * 1000 + epoch)  # augmentation draws; same on resume
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.weight_temperature > 0:  # BNext's soft-to-hard weights: T = T0 * decay^epoch
            set_weight_temperature(model, config.weight_temperature * config.weight_temperature_decay**epoch)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss_sum, seen, epoch_skipped = 0.0, 0, 0
        loader = make_loader(splits["train"], config, device, shuffle=True, epoch=epoch)
        n_batches = len(loader) if config.max_train_batches is None else min(len(loader), config.max_train_batches)
        progress_log = ProgressLog(f"epoch {epoch}", min(len(loader.dataset), n_batches * config.batch_size),
                                   config.log_every_seconds)
        for i, (images, labels, _, n_skipped) in enumerate(_progress(loader, desc=f"epoch {epoch}", total=n_batches)):
            if i >= n_batches:
                break
            if should_stop is not None and should_stop():
                raise FitInterrupted(f"stopped in epoch {epoch}, batch {i}")
            if _per_step_lr(config):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(config, epoch + i / n_batches)
            epoch_skipped += n_skipped
            if len(labels) < 2:  # train-mode BatchNorm (the head's, a 1x1 stage's) cannot use 1 image
                if len(labels) == 1:
                    log.info("epoch %d: a training batch of one image left out (BatchNorm needs two)", epoch)
                continue
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with _amp_context(device, config.amp):
                logits = model(images).float()
                soft = teacher_logits(teacher, images) if teacher is not None else None  # (B,), no grad
            loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)
            if soft is not None:  # knowledge distillation (bnn.distill)
                loss = mix_distillation(loss, logits, soft, config.distill)
            scaler.scale(loss / config.grad_accumulation).backward()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            progress_log.update(seen, loss_sum / seen)
            if (i + 1) % config.grad_accumulation == 0 or i + 1 == n_batches:
                if config.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
        train_seconds = time.perf_counter() - start
        val_loss, val_metrics, _, val_skipped, eval_ips = evaluate(
            model, val_loader, device, pos_weight, config.amp, config.max_eval_batches, "val", should_stop
        )
        skipped_total += epoch_skipped + val_skipped
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_metrics.accuracy,
            val_auc=val_metrics.auc,
            lr=lr,
            epoch_seconds=time.perf_counter() - start,
            train_images_per_second=seen / max(train_seconds, 1e-9),
            eval_images_per_second=eval_ips,
            skipped_images=epoch_skipped + val_skipped,
        )
        history.append(stats)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val auc %.4f, %.1f img/s",
            epoch, stats.train_loss, val_loss, val_metrics.accuracy, val_metrics.auc, stats.train_images_per_second,
        )
        if _better(stats, best):
            best = stats
            _save_atomic({"model": model.state_dict(), "config": config.model_dump(mode="json"), "epoch": epoch}, best_path)
        _save_atomic(
            {
                "version": CHECKPOINT_VERSION,
                "content_id": config.content_id(),
                "config": config.model_dump(mode="json"),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": [asdict(h) for h in history],
                "best": asdict(best),
                "skipped_images": skipped_total,
            },
            last_path,
        )
        for callback in callbacks:
            callback(stats)

    # Selected checkpoint -> validation metrics and the single read of the test split.
    selected = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(selected["model"])
    _, val_metrics, _, _, _ = evaluate(
        model, val_loader, device, pos_weight, config.amp, config.max_eval_batches, "val", should_stop)
    if selected.get(VAL_THRESHOLD_KEY) != val_metrics.eer_threshold:  # for `bnn evaluate`'s accuracy_valthr
        _save_atomic({**selected, VAL_THRESHOLD_KEY: val_metrics.eer_threshold}, best_path)
    test_loader = make_loader(splits["test"], config, device, shuffle=False)
    _, test_metrics, predictions, test_skipped, _ = evaluate(
        model, test_loader, device, pos_weight, config.amp, config.max_eval_batches, "test", should_stop,
        val_threshold=val_metrics.eer_threshold,
    )
    skipped_total += test_skipped
    model_cost = count(model, (1, 3, config.resolution, config.resolution))
    return FitResult(
        config=config,
        best_epoch=best.epoch,
        history=history,
        val=val_metrics,
        test=test_metrics,
        cost=model_cost,
        checkpoint=best_path,
        skipped_images=skipped_total,
        data=data,
        data_digest={name: ds.digest() for name, ds in splits.items()},
        test_predictions=predictions,
        test_extra=test_extra_scalars(predictions, config.seed),
        device=str(device),
        resumed_from_epoch=resumed_from,
    )


def saved_val_threshold(checkpoint: str | os.PathLike) -> float | None:
    """The validation threshold ``fit`` stored in ``best.pt`` (``None`` for older checkpoints)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    value = state.get(VAL_THRESHOLD_KEY) if isinstance(state, dict) else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def load_detector(checkpoint: str | os.PathLike, device: str = "auto") -> tuple[Detector, FitConfig]:
    """Rebuilds the detector saved by ``fit`` (``best.pt``) in eval mode, with its config."""
    device_ = resolve_device(device)
    state = torch.load(checkpoint, map_location=device_, weights_only=False)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"'{checkpoint}' is not a checkpoint written by bnn.train.fit (best.pt / last.pt)")
    config = FitConfig.from_saved(state["config"])
    model = create_detector(config.backbone, config.features, config.freeze_backbone, compat=config.compat, head=config.head)
    model.load_state_dict(state["model"])
    return model.to(device_).eval(), config
