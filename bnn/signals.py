"""Stopping on SIGINT/SIGTERM at a safe point instead of wherever the signal lands.

Python's default SIGINT handler raises ``KeyboardInterrupt`` in whatever code runs, which can be a
database migration, a SQLAlchemy callback (where the exception is swallowed) or the middle of a
checkpoint write. ``StopRequest`` replaces it with a handler that only records the signal; long
loops poll the request (``bnn.train.fit``'s ``should_stop``, the study runner between cells) and
stop where nothing is half done.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class FitInterrupted(Exception):
    """Training or evaluation stopped at a safe point (between batches) because ``should_stop``
    returned true; ``bnn.train.fit``'s ``output_dir/last.pt`` holds the last finished epoch, so the
    same call resumes."""


class StopRequest:
    """SIGINT/SIGTERM set a flag that the runner and ``fit`` poll at safe points.

    Used as a context manager around everything a ``studies run`` does (store creation included),
    so that a signal is never raised inside library code. ``signal`` is the name of the first
    signal received, or ``None``.
    """

    def __init__(self, already: str | None = None) -> None:
        """``already``: a signal that arrived before this request existed (``studies.early_signals``)."""
        self.signal: str | None = already
        self._previous: dict = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        first = self.signal is None
        self.signal = signal.Signals(signum).name
        if first:
            log.warning("%s received: stopping at the next safe point (between batches, or before the next "
                        "cell); re-run the same command to resume", self.signal)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
