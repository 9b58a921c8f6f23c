"""Training and evaluation of one detector configuration: ``fit(config) -> FitResult``.

Follows the recipe of Lanzino et al., CVPRW 2024 (AdamW, BCE with pos_weight, linear learning-rate
decay over 5 epochs), with what a study runner needs on top: the data audit of the splits (``bnn.data.audit``), the
checkpoint selected on validation accuracy (ties: lower validation loss; ``selection_split: test``
selects on the test split instead, as the authors' code does, to measure what that inflates), the
test split evaluated once with it, every
epoch leaves a resumable checkpoint, and CPU runs repeat exactly for a given seed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bnn.backbones.binary import set_weight_temperature
from bnn.checkpoint import read_checkpoint, save_best, save_last, set_val_threshold
from bnn.config import FitConfig, create_detector_from_config
from bnn.cost import Cost, count
from bnn.data import ImageDataset, check_readable
from bnn.data.audit import AUDIT_METRICS, AuditReport
from bnn.detector import Detector
from bnn.device import amp_context, resolve_device, seed_everything
from bnn.distill import load_teacher, mix_distillation, teacher_logits
from bnn.evaluation import Evaluation, evaluate
from bnn.metrics import Metrics, bootstrap_ci, per_source_metrics
from bnn.optim import lr_at, parameter_groups, per_step_lr
from bnn.progress import ProgressLog, progress_bar
from bnn.signals import FitInterrupted
from bnn.splits import make_loader, prepare_splits

log = logging.getLogger(__name__)


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
    # With ``selection_split: test`` only: the test split's accuracy and loss, which select the checkpoint.
    selection_accuracy: float | None = None
    selection_loss: float | None = None


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
        audit: The data audit of the splits (``bnn.data.audit``); its ``AUDIT_METRICS`` are
            among ``scalars()``.
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
    audit: AuditReport | None = None

    def scalars(self) -> dict[str, float]:
        """Every final scalar of the run by its metric name (``scalar_names()`` lists them):
        ``val_*`` and ``test_*`` metrics, the cost (``ops``, ``bops``, ``params``, ...),
        ``best_epoch`` and ``skipped_images``, the test split's confidence intervals and per-source
        metrics (``test_extra``)."""
        values = {**self.val.scalars("val_"), **self.test.scalars("test_"), **self.test_extra, **self.cost.as_dict()}
        values.update(best_epoch=self.best_epoch, skipped_images=self.skipped_images)
        if self.audit is not None:
            values.update(self.audit.scalars())
        return {name: float(value) for name, value in values.items()}


def scalar_names() -> list[str]:
    """The names ``FitResult.scalars()`` returns, known before any run (for validating objectives)."""
    metrics = [f.name for f in fields(Metrics) if f.name != "roc"]
    return [*(f"val_{m}" for m in metrics), *(f"test_{m}" for m in metrics), *CI_NAMES,
            *(f.name for f in fields(Cost)), "best_epoch", "skipped_images", *AUDIT_METRICS]


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


Callback = Callable[[EpochStats], None]


def _selection(stats: EpochStats) -> tuple[float, float]:
    """(accuracy, loss) the checkpoint is selected on: validation, or test with ``selection_split: test``."""
    if stats.selection_accuracy is not None:
        return stats.selection_accuracy, stats.selection_loss
    return stats.val_accuracy, stats.val_loss


def _better(candidate: EpochStats, best: EpochStats | None) -> bool:
    if best is None or math.isnan(_selection(best)[0]):
        return True
    (accuracy, loss), (best_accuracy, best_loss) = _selection(candidate), _selection(best)
    if accuracy != best_accuracy:
        return accuracy > best_accuracy
    return loss < best_loss


def default_output_dir(config: FitConfig) -> Path:
    return Path("runs") / f"{config.backbone}-{config.features}-{config.content_id()}"


@dataclass
class _Trainer:
    """The objects one ``fit`` call trains with (built once, restored from ``last.pt`` on resume)."""

    config: FitConfig
    device: torch.device
    model: Detector
    teacher: Detector | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    pos_weight: float
    should_stop: Callable[[], bool] | None
    history: list[EpochStats] = field(default_factory=list)
    best: EpochStats | None = None
    skipped_total: int = 0
    start_epoch: int = 0
    resumed_from: int = -1

    def resume(self, last_path: Path) -> None:
        """Restores weights, optimiser, scaler and history from ``last.pt`` when it exists.

        Raises:
            ValueError: ``last.pt`` belongs to another configuration.
        """
        if not last_path.exists():
            return
        state = read_checkpoint(last_path, self.device)
        if state.get("content_id") != self.config.content_id():
            raise ValueError(
                f"'{last_path}' belongs to a different configuration ({state.get('content_id')} != "
                f"{self.config.content_id()}); use another output_dir or delete it"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = [EpochStats(**h) for h in state["history"]]
        self.best = EpochStats(**state["best"]) if state["best"] else None
        self.skipped_total = state["skipped_images"]
        self.start_epoch = state["epoch"] + 1
        self.resumed_from = state["epoch"]
        log.info("resuming %s after epoch %d", last_path.parent, state["epoch"])

    def train_epoch(self, loader: DataLoader, epoch: int, lr: float) -> tuple[float, int, int]:
        """One pass over the training loader; returns (summed loss, images used, images skipped).

        Raises:
            UnreadableSplitError: More unreadable images than ``MAX_UNREADABLE_FRACTION``, or no
                readable image of a class (``bnn.data.check_readable``).

        Raises:
            FitInterrupted: ``should_stop()`` became true (checked before every batch).
        """
        config, model, optimizer, scaler = self.config, self.model, self.optimizer, self.scaler
        trainable = [p for p in model.parameters() if p.requires_grad]
        weight = torch.tensor(self.pos_weight, device=self.device)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, seen, skipped, read_fake, read_total = 0.0, 0, 0, 0, 0
        n_batches = len(loader) if config.max_train_batches is None else min(len(loader), config.max_train_batches)
        progress_log = ProgressLog(f"epoch {epoch}", min(len(loader.dataset), n_batches * config.batch_size),
                                   config.log_every_seconds)
        for i, (images, labels, _, n_skipped) in enumerate(progress_bar(loader, desc=f"epoch {epoch}", total=n_batches)):
            if i >= n_batches:
                break
            if self.should_stop is not None and self.should_stop():
                raise FitInterrupted(f"stopped in epoch {epoch}, batch {i}")
            if per_step_lr(config):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(config, epoch + i / n_batches)
            skipped += n_skipped
            read_total += len(labels)
            read_fake += int(labels.sum().item()) if len(labels) else 0
            if len(labels) < 2:  # train-mode BatchNorm (the head's, a 1x1 stage's) cannot use 1 image
                if len(labels) == 1:
                    log.info("epoch %d: a training batch of one image left out (BatchNorm needs two)", epoch)
                continue
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with amp_context(self.device, config.amp):
                logits = model(images).float()
                soft = teacher_logits(self.teacher, images) if self.teacher is not None else None  # (B,), no grad
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
        check_readable(loader.dataset, read_fake, read_total, skipped)
        return loss_sum, seen, skipped

    def save(self, epoch: int, last_path: Path) -> None:
        """Writes ``last.pt`` (the resume state after ``epoch``)."""
        save_last(last_path, self.config, epoch, self.model, self.optimizer, self.scaler,
                  [asdict(h) for h in self.history], asdict(self.best), self.skipped_total)


def _build_trainer(
    config: FitConfig, device: torch.device, pos_weight: float, should_stop: Callable[[], bool] | None
) -> _Trainer:
    model = create_detector_from_config(config, pretrained=config.pretrained).to(device)
    teacher = load_teacher(config, device) if config.distill else None  # frozen, eval mode
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=config.betas)
    use_scaler = config.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    return _Trainer(config, device, model, teacher, optimizer, scaler, pos_weight, should_stop)


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
        A ``FitResult``; the selected checkpoint is ``output_dir/best.pt`` (``bnn.checkpoint``).
    """
    device = resolve_device(config.device)
    out = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    seed_everything(config.seed)

    prepared = prepare_splits(config)  # before anything is created: bad data leaves no output folder
    splits = prepared.datasets
    data = {name: ds.describe() for name, ds in splits.items()}
    for name, text in data.items():
        log.info("data %s: %s", name, text)
    for line in prepared.audit.lines():
        log.info("audit: %s", line)
    if config.selection_split == "test":
        log.warning("selection_split: test: the checkpoint is selected on the TEST split (as Lanzino et al.'s code "
                    "does for COCOFake and CIFAKE); its test metrics are optimistic, not a held-out estimate")
    counts = splits["train"].class_counts()
    pos_weight = counts["real"] / counts["fake"]

    # Seeded again: preparing the splits draws random numbers only when its caches are cold
    # (generating data, auditing), and the weights must not depend on what was cached.
    seed_everything(config.seed)
    trainer = _build_trainer(config, device, pos_weight, should_stop)  # a bad `pretrained:` fails here
    trainer.resume(out / "last.pt")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train_epochs(trainer, splits, out, data, prepared.audit, callbacks)
    except BaseException:
        if created and not any(out.iterdir()):  # failed before its first checkpoint: leave nothing
            out.rmdir()
        raise


def _train_epochs(trainer: _Trainer, splits: dict[str, ImageDataset], out: Path, data: dict[str, str],
                  audit: AuditReport, callbacks: Sequence[Callback]) -> FitResult:
    """The epoch loop of ``fit`` (after ``trainer.resume``), then the final evaluation."""
    config, device = trainer.config, trainer.device
    last_path, best_path = out / "last.pt", out / "best.pt"

    val_loader = make_loader(splits["val"], config, device, shuffle=False)
    selection_loader = make_loader(splits["test"], config, device, shuffle=False) if config.selection_split == "test" else None
    epochs = progress_bar(range(trainer.start_epoch, config.epochs), desc="epochs", initial=trainer.start_epoch,
                          total=config.epochs)
    for epoch in epochs:
        stats = _run_epoch(trainer, splits["train"], val_loader, epoch, selection_loader)
        trainer.history.append(stats)
        if _better(stats, trainer.best):
            trainer.best = stats
            save_best(best_path, config, epoch, trainer.model)
        trainer.save(epoch, last_path)
        for callback in callbacks:
            callback(stats)
    return _final_result(trainer, splits, val_loader, best_path, data, audit)


def _run_epoch(trainer: _Trainer, train_split: ImageDataset, val_loader: DataLoader, epoch: int,
               selection_loader: DataLoader | None = None) -> EpochStats:
    """Trains ``epoch`` and validates (and with ``selection_loader`` evaluates that split too, for
    the checkpoint selection); returns its statistics (``trainer.skipped_total`` grows)."""
    config, model, device = trainer.config, trainer.model, trainer.device
    torch.manual_seed(config.seed * 1000 + epoch)  # augmentation draws; same on resume
    lr = lr_at(config, epoch)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    if config.weight_temperature > 0:  # BNext's soft-to-hard weights: T = T0 * decay^epoch
        set_weight_temperature(model, config.weight_temperature * config.weight_temperature_decay**epoch)
    start = time.perf_counter()
    loader = make_loader(train_split, config, device, shuffle=True, epoch=epoch)
    loss_sum, seen, train_skipped = trainer.train_epoch(loader, epoch, lr)
    train_seconds = time.perf_counter() - start
    val = _evaluate(trainer, val_loader, "val")
    trainer.skipped_total += train_skipped + val.skipped
    selection = None
    if selection_loader is not None:
        selection = _evaluate(trainer, selection_loader, "selection (test)")
    stats = EpochStats(
        epoch=epoch,
        train_loss=loss_sum / max(seen, 1),
        val_loss=val.loss,
        val_accuracy=val.metrics.accuracy,
        val_auc=val.metrics.auc,
        lr=lr,
        epoch_seconds=time.perf_counter() - start,
        train_images_per_second=seen / max(train_seconds, 1e-9),
        eval_images_per_second=val.images_per_second,
        skipped_images=train_skipped + val.skipped,
        selection_accuracy=None if selection is None else selection.metrics.accuracy,
        selection_loss=None if selection is None else selection.loss,
    )
    log.info(
        "epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val auc %.4f, %.1f img/s",
        epoch, stats.train_loss, val.loss, val.metrics.accuracy, val.metrics.auc, stats.train_images_per_second,
    )
    return stats


def _evaluate(trainer: _Trainer, loader: DataLoader, desc: str, val_threshold: float | None = None) -> Evaluation:
    """``bnn.evaluation.evaluate`` of the trainer's model with the fit's loss weight, AMP, batch cap
    and stop request."""
    config = trainer.config
    return evaluate(trainer.model, loader, trainer.device, pos_weight=trainer.pos_weight, amp=config.amp,
                    max_batches=config.max_eval_batches, desc=desc, should_stop=trainer.should_stop,
                    val_threshold=val_threshold)


def _final_result(
    trainer: _Trainer, splits: dict[str, ImageDataset], val_loader: DataLoader, best_path: Path,
    data: dict[str, str], audit: AuditReport | None = None,
) -> FitResult:
    """Selected checkpoint -> validation metrics and the single read of the test split."""
    config, model, device = trainer.config, trainer.model, trainer.device
    selected = read_checkpoint(best_path, device)
    model.load_state_dict(selected["model"])
    val = _evaluate(trainer, val_loader, "val")
    set_val_threshold(best_path, selected, val.metrics.eer_threshold)  # for `bnn evaluate`'s accuracy_valthr
    test_loader = make_loader(splits["test"], config, device, shuffle=False)
    test = _evaluate(trainer, test_loader, "test", val_threshold=val.metrics.eer_threshold)
    return FitResult(
        config=config,
        best_epoch=trainer.best.epoch,
        history=trainer.history,
        val=val.metrics,
        test=test.metrics,
        cost=count(model, (1, 3, config.resolution, config.resolution)),
        checkpoint=best_path,
        skipped_images=trainer.skipped_total + test.skipped,
        data=data,
        data_digest={name: ds.digest() for name, ds in splits.items()},
        test_predictions=test.predictions,
        test_extra=test_extra_scalars(test.predictions, config.seed),
        device=str(device),
        resumed_from_epoch=trainer.resumed_from,
        audit=audit,
    )
