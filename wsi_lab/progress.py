"""One progress protocol for long work (tiling runs, batch jobs).

A producer calls ``callback(ProgressEvent)``; the CLI renders events with :class:`TextProgressBar`
(stderr), widgets with an ipywidgets bar, and Dask runs also expose their dashboard link in
``event.dashboard``. A callback must be cheap and must not raise; errors it raises are logged and
ignored by :class:`ProgressTracker` so a broken view never kills a run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, TextIO

log = logging.getLogger(__name__)

__all__ = ["ProgressEvent", "ProgressCallback", "ProgressTracker", "TextProgressBar", "null_progress"]


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of a long run. ``done``/``total`` count units of work (slides, or chunks when
    ``unit`` says so); ``tiles`` is the number of tiles kept so far."""

    done: int
    total: int
    tiles: int = 0
    tiles_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    current: str = ""          # the slide (or item) being worked on
    message: str = ""          # a human sentence: "slide X done: 1234 tiles", "failed: ..."
    failed: int = 0
    skipped: int = 0
    unit: str = "slides"
    fraction: float = 0.0      # 0..1, finer grained than done/total (counts chunks)
    dashboard: str | None = None
    finished: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(event: ProgressEvent) -> None:
    """A callback that ignores every event (``progress=None`` means this)."""


class ProgressTracker:
    """Keeps counters and timing for a run and sends :class:`ProgressEvent` to a callback.

    ``update(...)`` changes counters and emits; tiles/s and the ETA are derived from elapsed time
    and ``fraction`` (so the ETA is meaningful even while the first slide is still running).
    """

    def __init__(self, total: int, callback: ProgressCallback | None = None, unit: str = "slides",
                 dashboard: str | None = None) -> None:
        self.total = int(total)
        self.callback = callback or null_progress
        self.unit = unit
        self.dashboard = dashboard
        self.start = time.perf_counter()
        self.done = self.tiles = self.failed = self.skipped = 0
        self.fraction = 0.0
        self.current = ""

    def update(self, message: str = "", *, done: int | None = None, tiles: int | None = None,
               add_tiles: int = 0, current: str | None = None, fraction: float | None = None,
               failed: int | None = None, skipped: int | None = None, finished: bool = False) -> ProgressEvent:
        if done is not None:
            self.done = done
        if tiles is not None:
            self.tiles = tiles
        self.tiles += add_tiles
        if current is not None:
            self.current = current
        if failed is not None:
            self.failed = failed
        if skipped is not None:
            self.skipped = skipped
        if fraction is not None:
            self.fraction = min(1.0, max(self.fraction, fraction))
        elif self.total:
            self.fraction = max(self.fraction, self.done / self.total)
        elapsed = time.perf_counter() - self.start
        eta = None
        if finished:
            eta = 0.0
        elif 0 < self.fraction < 1 and elapsed > 0:
            eta = elapsed * (1 - self.fraction) / self.fraction
        event = ProgressEvent(
            done=self.done, total=self.total, tiles=self.tiles,
            tiles_per_s=self.tiles / elapsed if elapsed > 0 else 0.0, eta_s=eta, elapsed_s=elapsed,
            current=self.current, message=message, failed=self.failed, skipped=self.skipped,
            unit=self.unit, fraction=1.0 if finished else self.fraction, dashboard=self.dashboard,
            finished=finished,
        )
        try:
            self.callback(event)
        except Exception:  # a broken view must not stop the run
            log.exception("progress callback raised; continuing")
        return event


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class TextProgressBar:
    """Render events as a one-line bar on a text stream (stderr by default); messages are printed on
    their own lines above the bar. Use as ``progress=TextProgressBar()``."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self._last_len = 0
        self._last_print = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        if event.message:
            if tty and self._last_len:
                self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.write(event.message + "\n")
        filled = int(round(self.width * event.fraction))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {event.done}/{event.total} {event.unit}"
                f"  {event.tiles} tiles  {event.tiles_per_s:.0f} tiles/s  ETA {_fmt_time(event.eta_s)}"
                + (f"  {event.current}" if event.current and not event.finished else ""))
        if tty:
            self.stream.write("\r" + line.ljust(self._last_len))
            self._last_len = len(line)
            if event.finished:
                self.stream.write("\n")
                self._last_len = 0
        elif event.finished or time.monotonic() - self._last_print > 2.0:  # log files: a line every 2 s
            self._last_print = time.monotonic()
            self.stream.write(line + "\n")
        self.stream.flush()
