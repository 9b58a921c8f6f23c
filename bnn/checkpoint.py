"""The checkpoints ``bnn.train.fit`` writes and everything that reads them back.

Two files per run folder, both ``torch.save`` dictionaries written atomically (temporary file +
``os.replace``, so a killed run never leaves half a file):

* ``last.pt``: the resume state after every finished epoch: ``version`` (``CHECKPOINT_VERSION``),
  ``content_id`` of the configuration, ``config`` (JSON-able dump), ``epoch``, ``model``,
  ``optimizer``, ``scaler``, ``history`` (epoch statistics), ``best`` and ``skipped_images``.
* ``best.pt``: the checkpoint selected on validation: ``model``, ``config``, ``epoch`` and, once
  the run has finished, ``VAL_THRESHOLD_KEY`` (the validation equal-error-rate threshold, used by
  ``bnn evaluate`` for ``accuracy_valthr``).

``save_last`` and ``save_best`` assemble and write them; ``load_detector`` rebuilds the detector of
either file (through ``bnn.config.create_detector_from_config``); training, export, the CLI, the
study runner and distillation (teachers) all load through it.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch

from bnn.config import FitConfig, create_detector_from_config
from bnn.detector import Detector
from bnn.device import resolve_device
from bnn.errors import STORAGE_ERRNOS, StorageError
from bnn.pretrained import check_state_dict
from bnn.safe_load import UnreadableCheckpointError, load_torch_file

__all__ = [
    "CHECKPOINT_VERSION",
    "VAL_THRESHOLD_KEY",
    "load_detector",
    "read_checkpoint",
    "save_atomic",
    "save_best",
    "save_last",
    "saved_val_threshold",
]

CHECKPOINT_VERSION = 1
# Kept in best.pt: the decision threshold chosen on validation (its equal-error-rate threshold).
VAL_THRESHOLD_KEY = "val_eer_threshold"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then an atomic rename onto it.

    The payload is serialised in memory first and written with plain file I/O, so a full disk is
    an ``OSError`` with its errno (torch's zip writer reports it as "unexpected pos"), and the
    temporary file is removed whatever fails.

    Raises:
        StorageError: The write failed (disk full, quota, read-only, I/O error): the message
            names ``path`` and the cause; ``path`` keeps its previous content.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # unique: two writers never share it
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        cause = STORAGE_ERRNOS.get(err.errno, err.strerror or str(err))
        raise StorageError(err.errno, f"cannot write '{path}': {cause}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_last(path: Path, config: FitConfig, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, history: list[dict[str, Any]], best: dict[str, Any],
              skipped_images: int) -> None:
    """Writes ``last.pt``, the resume state after ``epoch`` (keys in the module docstring)."""
    save_atomic(
        {
            "version": CHECKPOINT_VERSION,
            "content_id": config.content_id(),
            "config": config.model_dump(mode="json"),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "history": history,
            "best": best,
            "skipped_images": skipped_images,
        },
        path,
    )


def save_best(path: Path, config: FitConfig, epoch: int, model: torch.nn.Module) -> None:
    """Writes ``best.pt``: the weights selected at ``epoch``, without a threshold yet
    (``set_val_threshold`` adds it once the run has finished)."""
    save_atomic({"model": model.state_dict(), "config": config.model_dump(mode="json"), "epoch": epoch}, path)


def set_val_threshold(path: Path, selected: dict[str, Any], threshold: float) -> None:
    """Stores the validation threshold in ``best.pt`` (``selected``: its contents as read), unless
    it holds that threshold already (a resumed, finished run rewrites nothing)."""
    if selected.get(VAL_THRESHOLD_KEY) != threshold:
        save_atomic({**selected, VAL_THRESHOLD_KEY: threshold}, path)


def read_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The dictionary stored in ``path``, tensors mapped to ``device``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a checkpoint written by ``bnn.train.fit``; an
            ``UnsafeCheckpointError`` when it would run code (``bnn.safe_load``).
    """
    not_ours = f"'{path}' is not a checkpoint written by `python -m bnn train` (best.pt / last.pt)"
    if Path(path).suffix == ".safetensors":
        raise ValueError(f"{not_ours}: a .safetensors file holds weights only, not the configuration that "
                         "rebuilds a detector (backbone weights go in a run file's `pretrained:`)")
    try:
        state = load_torch_file(path, map_location=device)
    except UnreadableCheckpointError as err:
        raise ValueError(f"{not_ours}: {err.detail}") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(not_ours)
    if not isinstance(state["config"], dict):
        raise ValueError(f"{not_ours}: its 'config' is a {type(state['config']).__name__}, not a mapping of FitConfig keys")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise ValueError(f"{not_ours}: its 'model' is not a state dict of tensors")
    return state


def saved_val_threshold(checkpoint: str | os.PathLike) -> float | None:
    """The validation threshold ``fit`` stored in ``best.pt`` (``None`` for older checkpoints)."""
    value = read_checkpoint(checkpoint).get(VAL_THRESHOLD_KEY)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def load_detector(checkpoint: str | os.PathLike, device: str = "auto") -> tuple[Detector, FitConfig]:
    """Rebuilds the detector saved by ``fit`` (``best.pt`` or ``last.pt``) in eval mode.

    Args:
        checkpoint: The file.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:0``, ...

    Returns:
        The detector on ``device`` in eval mode, and its training configuration.

    Raises:
        FileNotFoundError, ValueError: As ``read_checkpoint``.
        pydantic.ValidationError: The stored configuration is not a valid ``FitConfig``.
        CheckpointMismatchError: The stored weights do not fit the model the configuration
            describes (a ``ValueError``; the message lists keys and shapes).
    """
    device_ = resolve_device(device)
    state = read_checkpoint(checkpoint, device_)
    config = FitConfig.from_saved(state["config"])
    model = create_detector_from_config(config)
    check_state_dict(model, state["model"], str(checkpoint))
    model.load_state_dict(state["model"])
    return model.to(device_).eval(), config
