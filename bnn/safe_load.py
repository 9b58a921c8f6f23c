"""Reading ``torch.save`` files without running code from them.

A ``.pt``/``.pth``/``.ckpt`` file is a pickle, and a pickle can call any Python function while it
loads (``os.system`` included), so every torch file this project reads goes through
``load_torch_file``: ``torch.load(..., weights_only=True)`` (PyTorch's restricted unpickler, which
rebuilds tensors, containers, numbers and strings only) plus an explicit allow-list of the few
plain-data types that published checkpoints hold. Anything else is refused before any of it runs,
with one line naming the file and the type it asked for.

The allow-list (``ALLOWED_GLOBALS``), and why each entry is there:

* numpy arrays, numpy scalars and their dtypes (``numpy.core.multiarray._reconstruct`` /
  ``scalar``, ``numpy.ndarray``, ``numpy.dtype`` and the numeric ``numpy.dtypes.*DType``, under
  both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` names): the training lists of the
  official BNext scripts (hpi-xnor/BNext ``save_checkpoint``) and many accuracy values are
  numpy arrays. These build arrays of numbers only: an object array (``numpy.dtypes.ObjectDType``)
  could hold any Python object, so it is refused like any other type outside the list.
* Lightning's ``AttributeDict`` (``lightning.fabric.utilities.data``, ``lightning_fabric...`` and
  ``pytorch_lightning.utilities.parsing``): a ``dict`` subclass that some Lightning versions store
  as ``hyper_parameters``; it is read as a plain ``dict`` (torch's unpickler fills only ``dict``
  and ``OrderedDict`` with items), so Lightning need not be installed.

The project's own ``best.pt``/``last.pt`` need none of them (tensors and plain data only). There is
deliberately no fallback to ``weights_only=False``: a file that needs another type is refused, and
its owner can convert a trusted file once (see ``UnsafeCheckpointError``).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["ALLOWED_GLOBALS", "UnsafeCheckpointError", "UnreadableCheckpointError", "load_torch_file"]


class UnsafeCheckpointError(ValueError):
    """A torch file needs a Python type outside the allow-list to load (it could run code); refused
    before anything in it ran."""


class UnreadableCheckpointError(ValueError):
    """A file is not a torch (or safetensors) file at all (text, random bytes, empty or truncated).

    Attributes:
        detail: The reader's own first line about it (``PytorchStreamReader failed ...``).
    """

    def __init__(self, path: str | os.PathLike, detail: str, kind: str = "PyTorch") -> None:
        self.detail = detail
        super().__init__(f"'{path}' is not a {kind} file ({detail})")


def _numpy_globals() -> list[tuple[Any, str]]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out: list[tuple[Any, str]] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    out += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for name in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                 "Float16", "Float32", "Float64", "Complex64", "Complex128"):
        dtype_class = getattr(np.dtypes, f"{name}DType", None)
        if dtype_class is not None:
            out.append((dtype_class, f"numpy.dtypes.{name}DType"))
    return out


_LIGHTNING_ATTRIBUTE_DICTS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)

# (object, the module.name a pickle refers to it by): torch.serialization.safe_globals' form.
ALLOWED_GLOBALS: list[tuple[Any, str]] = [
    *_numpy_globals(),
    *((dict, name) for name in _LIGHTNING_ATTRIBUTE_DICTS),
]
_ALLOWED_NAMES = frozenset(name for _, name in ALLOWED_GLOBALS)
_ALLOWED_SUMMARY = "tensors, containers, numbers, strings, numpy arrays and Lightning's AttributeDict"


def _refused_globals(path: str | os.PathLike, err: BaseException) -> list[str]:
    """The module.name globals the file asks for that are not allowed (read without loading)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        names = [name for name in found if name not in _ALLOWED_NAMES]
    except Exception:  # a legacy (non-zip) file: take the name from torch's own message
        names = []
    if not names:
        # a legacy file names the global; a type reached by BUILD (an object array's ObjectDType)
        # appears as "but got <class '...'>"
        match = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"but got <class '([\w.]+)'>", str(err))
        names = [match.group(1)] if match else []
    return names


def load_torch_file(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with ``ALLOWED_GLOBALS``: a torch file read as data.

    Args:
        path: A file written by ``torch.save`` (a project checkpoint, an official BNext
            ``*_checkpoint.pth.tar``, a Lightning ``.ckpt``, a timm ``.pth``).
        map_location: Where tensors go (``torch.load``'s argument).

    Returns:
        What the file holds (usually a dict); tensors on ``map_location``.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: ``path`` cannot be opened.
        UnsafeCheckpointError: The file needs a type outside the allow-list (it could run code);
            nothing of it ran. The message names the file and the type(s).
        UnreadableCheckpointError: The file is not a torch file (text, random bytes, truncated).
    """
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UnreadableCheckpointError(path, "the file is empty (0 bytes)")
    try:
        # torch warns about a pickle protocol it did not write before it refuses or reads the file;
        # the outcome (data, or one error) is what the user needs, not the warning.
        with torch.serialization.safe_globals(ALLOWED_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise UnreadableCheckpointError(path, _first_line(err)) from None
        names = _refused_globals(path, err)
        if not names:  # no Python type asked for: bytes that are not a pickle torch wrote
            raise UnreadableCheckpointError(path, _unpickler_reason(err)) from None
        what = ", ".join(f"{n} (a numpy object array: its items can be any Python object)" if n.endswith("ObjectDType")
                         else n for n in names)
        raise UnsafeCheckpointError(
            f"'{path}' was refused: loading it would call {what}, which is not plain data "
            f"(a pickle can run code). Accepted: {_ALLOWED_SUMMARY}. If you trust the file, convert it "
            "once to .safetensors (see docs/safety.md)"
        ) from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise  # the path itself (missing, a folder, no permission): the caller's message
    except Exception as err:
        if isinstance(err, RuntimeError) and "deserialize" in str(err):
            raise  # map_location names a device this machine lacks: not the file's fault
        # Anything else the restricted unpickler or torch's zip reader raises on bytes that are not
        # a torch file: EOFError, IndexError, "PytorchStreamReader failed reading zip archive", ...
        raise UnreadableCheckpointError(path, _first_line(err)) from None


def _unpickler_reason(err: BaseException) -> str:
    """The line of torch's long weights-only message that says what it met (its other lines are
    advice to load with ``weights_only=False``, which this module never does)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation", "(1)", "(2)"))]
    reason = (reasons[-1] if reasons else "refused by the restricted unpickler")[:200]
    if reason.startswith("Unsupported operand"):  # a pickle opcode torch.save never writes
        reason = f"a pickle that torch.save did not write: {reason} (pickle opcode)"
    return reason


def _first_line(err: BaseException) -> str:
    """The exception's first line, with its type where the text alone says nothing (``KeyError(101)``
    from the unpickler on text bytes would read as just "101")."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    first = text.splitlines()[0]
    if " " not in first:
        return f"{type(err).__name__}: {first} (bytes that are neither a zip archive nor a pickle torch.save wrote)"
    return first
