"""Loading weights users bring: official BNext ImageNet checkpoints and local timm weight files.

Nothing is downloaded. Weight files are looked up in ``$BNN_PRETRAINED_DIR`` if set, else in
``./pretrained/``; a missing file is an error that says what to download and where to put it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from bnn.safe_load import UnreadableCheckpointError, load_torch_file

if TYPE_CHECKING:  # the backbone package imports this module to load weights
    from bnn.backbones._registry import BackboneSpec

PRETRAINED_ENV = "BNN_PRETRAINED_DIR"
DEFAULT_PRETRAINED_DIR = "pretrained"


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model it is loaded into (a user's file, so a
    ``ValueError``: the command lines print it as one error, exit 2)."""


def pretrained_dir() -> Path:
    """The folder where weight files are looked up (``$BNN_PRETRAINED_DIR`` or ``./pretrained``)."""
    return Path(os.environ.get(PRETRAINED_ENV, DEFAULT_PRETRAINED_DIR)).expanduser()


def resolve_weights(backbone: str, spec: BackboneSpec, pretrained: str | os.PathLike | bool) -> Path:
    """Returns the weights path for a backbone, as timm's builder resolves a pretrained config.

    Args:
        backbone: The backbone's registered name (for messages).
        spec: Its registry entry (``weights_file`` and ``weights_source``).
        pretrained: A path, or ``True`` for ``spec.weights_file`` inside ``pretrained_dir()``.

    Raises:
        ValueError: ``pretrained`` is ``True`` and the backbone has no published weights.
        FileNotFoundError: The file is missing; the message says what to download and where.
    """
    if pretrained is True:
        if spec.weights_file is None:
            raise ValueError(f"backbone {backbone!r} has no published weights ({spec.weights_source})")
        path = pretrained_dir() / spec.weights_file
    else:
        path = Path(pretrained).expanduser()
    if not path.is_file():
        expected = spec.weights_file or "a weights file"
        raise FileNotFoundError(
            f"weights for {backbone!r} not found at '{path}'. Download {expected} from "
            f"{spec.weights_source} and put it in '{pretrained_dir()}/' (or set {PRETRAINED_ENV} "
            "to the folder holding it, or pass its path)."
        )
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads a flat state dict from ``path``.

    Accepts ``.safetensors`` files and torch files holding either a flat state dict or a dict with
    ``state_dict`` (official BNext ``*_checkpoint.pth.tar``, Lightning ``.ckpt``) or ``model``.
    A leading ``module.`` (DataParallel / the official ``ModuleDict``) is stripped from every key.

    Raises:
        UnreadableCheckpointError: The bytes are not a safetensors/torch file (header, truncation).
        UnsafeCheckpointError: A torch file would run code (``bnn.safe_load``).
        CheckpointMismatchError: The file holds no state dict of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except SafetensorError as err:  # the safetensors header or size is wrong
            raise UnreadableCheckpointError(path, str(err).splitlines()[0][:200], kind="safetensors") from None
    else:
        state = load_torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"'{path}' holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


_SHOWN = 5  # keys listed per kind of problem; the count says how many there are


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raises ``CheckpointMismatchError`` listing missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        for title, items in [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)]:
            if items:
                shown = "\n    ".join(items[:_SHOWN]) + (f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
                problems.append(f"  {len(items)} {title}:\n    {shown}")
        raise CheckpointMismatchError(
            f"checkpoint '{source}' does not match {type(module).__name__}:\n" + "\n".join(problems)
        )


def load_pretrained(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Loads an official BNext checkpoint (or any matching state dict) into ``module``, strictly.

    Args:
        module: The model, e.g. ``create_backbone("bnext_tiny")`` (1000-class head).
        path: A ``.pth``/``.pth.tar``/``.safetensors`` file; see ``read_state_dict``.

    Returns:
        ``module``, with the weights loaded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointMismatchError: Keys or shapes differ; the message lists them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    state = read_state_dict(path)
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)
    return module
