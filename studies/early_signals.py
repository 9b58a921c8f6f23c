"""SIGINT/SIGTERM recorded from the first instruction of ``python -m studies``, before the heavy
imports (torch, MLflow, Optuna) run.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread is; during
those imports that can be inside a library's own ``try``/bare ``except`` or a weakref callback,
where it is swallowed and the command goes on (case C03: a Ctrl-C one second after start was lost
and the study ran to the end). ``hold()`` replaces both handlers with one that only records the
signal; ``studies run`` hands the record to its ``bnn.signals.StopRequest`` (``received()``), every
other command calls ``release()``, which restores the defaults and turns a signal that already
arrived into ``KeyboardInterrupt`` at a known place. Standard library only, so that importing it
costs nothing.
"""

from __future__ import annotations

import signal
import threading

_received: list[str] = []
_previous: dict = {}


def _record(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)


def hold() -> None:
    """Records SIGINT/SIGTERM instead of acting on them (main thread only; idempotent)."""
    if threading.current_thread() is not threading.main_thread() or _previous:
        return
    _received.clear()
    for s in (signal.SIGINT, signal.SIGTERM):
        _previous[s] = signal.signal(s, _record)


def received() -> str | None:
    """The first signal recorded since ``hold()``, or ``None``."""
    return _received[0] if _received else None


def release() -> None:
    """Restores the handlers ``hold()`` replaced; raises ``KeyboardInterrupt`` if a signal came."""
    for s, handler in _previous.items():
        signal.signal(s, handler)
    _previous.clear()
    if _received:
        name = _received[0]
        _received.clear()
        raise KeyboardInterrupt(name)
