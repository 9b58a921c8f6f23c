"""What a user sees while a detector trains or evaluates: tqdm bars on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["ProgressLog", "progress_bar"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def progress_bar(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """A tqdm bar over ``iterable`` when stderr is a terminal (else the plain iterable's items)."""
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
