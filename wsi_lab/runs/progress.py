"""One progress protocol for every long job (tiling, exports, training, inference).

A producer calls ``callback(ProgressEvent)``; the CLI renders events with :class:`TextProgressBar`
(stderr), widgets with an ipywidgets bar, and Dask runs also carry their dashboard link in
``event.dashboard``. ``done``/``total`` count ``unit`` (slides, tiles, epochs...), ``fraction`` is the
finer-grained 0..1 progress the ETA is computed from, ``metrics`` holds named numbers (tiling: ``tiles``,
``tiles_per_s``, ``tiles_done``, ``tiles_expected``; training: ``loss``...), and ``items`` the status of
every item (:class:`ItemStatus`). A callback must be cheap and must not raise; errors it raises are
logged and ignored by :class:`ProgressTracker` so a broken view never kills a run.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TextIO

log = logging.getLogger(__name__)

__all__ = ["ItemStatus", "ProgressEvent", "ProgressCallback", "ProgressTracker", "TextProgressBar", "null_progress"]


class ItemStatus(enum.StrEnum):
    """Status of one item of a run (a slide, a shard, an epoch)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def closed(self) -> bool:
        """True for the final states (done, skipped, failed, cancelled)."""
        return self not in (ItemStatus.QUEUED, ItemStatus.RUNNING)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of a long run (see the module docstring). ``rate`` is ``unit`` per second."""

    done: int
    total: int
    unit: str = "items"
    rate: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    items: Mapping[str, ItemStatus] = field(default_factory=dict)
    current: str = ""          # the item being worked on
    message: str = ""          # a human sentence: "slide X done: 1234 tiles", "X failed: ..."
    fraction: float = 0.0      # 0..1, finer grained than done/total
    finished: bool = False
    dashboard: str | None = None

    def count(self, status: ItemStatus) -> int:
        """How many items have ``status``."""
        return sum(1 for s in self.items.values() if s == status)

    @property
    def failed(self) -> int:
        """Items failed (or ``metrics['failed']`` when items are not tracked)."""
        return self.count(ItemStatus.FAILED) if self.items else int(self.metrics.get("failed", 0))

    @property
    def skipped(self) -> int:
        """Items skipped (or ``metrics['skipped']`` when items are not tracked)."""
        return self.count(ItemStatus.SKIPPED) if self.items else int(self.metrics.get("skipped", 0))

    # tiling's convenience names (metrics under the hood)
    @property
    def tiles(self) -> int:
        return int(self.metrics.get("tiles", 0))

    @property
    def tiles_per_s(self) -> float:
        return float(self.metrics.get("tiles_per_s", 0.0))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["items"] = {k: str(v) for k, v in self.items.items()}
        d["metrics"] = dict(self.metrics)
        return d


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(event: ProgressEvent) -> None:
    """A callback that ignores every event (``progress=None`` means this)."""


class ProgressTracker:
    """Keeps counters, item statuses, metrics and timing for a run and sends :class:`ProgressEvent`.

    ``update(...)`` changes counters and emits. Metrics named in ``rates`` also get a ``<name>_per_s``
    metric (value / elapsed s). The ETA comes from elapsed time and ``fraction`` (chunk-grained when the
    producer sets it), so it is meaningful while the first item is still running. Thread-safe.
    """

    def __init__(self, total: int, callback: ProgressCallback | None = None, unit: str = "items",
                 dashboard: str | None = None, items: Iterable[str] = (), rates: Iterable[str] = ()) -> None:
        self.total = int(total)
        self.callback = callback or null_progress
        self.unit = unit
        self.dashboard = dashboard
        self.start = time.perf_counter()
        self.done = 0
        self.fraction = 0.0
        self.current = ""
        self.rates = tuple(rates)
        self.metrics: dict[str, float] = {k: 0.0 for k in self.rates}  # counted metrics first, then their rates
        self.items: dict[str, ItemStatus] = {str(i): ItemStatus.QUEUED for i in items}
        self._lock = threading.RLock()

    def set_item(self, item: str, status: ItemStatus | str) -> None:
        """Record an item's status (no event is sent; the next ``update`` carries it)."""
        with self._lock:
            self.items[str(item)] = ItemStatus(status)

    def update(self, message: str = "", *, done: int | None = None, add_done: int = 0,
               metrics: Mapping[str, float] | None = None, add: Mapping[str, float] | None = None,
               item: str | None = None, status: ItemStatus | str | None = None, current: str | None = None,
               fraction: float | None = None, finished: bool = False) -> ProgressEvent:
        """Apply changes and emit an event: ``done``/``add_done`` (units), ``metrics`` (set) / ``add``
        (increment), ``item`` + ``status``, ``current``, ``fraction`` (monotonic), ``finished``."""
        with self._lock:
            if done is not None:
                self.done = int(done)
            self.done += int(add_done)
            for k, v in (metrics or {}).items():
                self.metrics[k] = float(v)
            for k, v in (add or {}).items():
                self.metrics[k] = self.metrics.get(k, 0.0) + float(v)
            if item is not None and status is not None:
                self.items[str(item)] = ItemStatus(status)
            if current is not None:
                self.current = current
            if fraction is not None:
                self.fraction = min(1.0, max(self.fraction, float(fraction)))
            elif self.total:
                self.fraction = max(self.fraction, min(1.0, self.done / self.total))
            elapsed = time.perf_counter() - self.start
            for k in self.rates:
                self.metrics[f"{k}_per_s"] = self.metrics.get(k, 0.0) / elapsed if elapsed > 0 else 0.0
            eta = None
            if finished:
                eta = 0.0
            elif 0 < self.fraction < 1 and elapsed > 0:
                eta = elapsed * (1 - self.fraction) / self.fraction
            event = ProgressEvent(
                done=self.done, total=self.total, unit=self.unit, rate=self.done / elapsed if elapsed > 0 else 0.0,
                eta_s=eta, elapsed_s=elapsed, metrics=dict(self.metrics), items=dict(self.items),
                current=self.current, message=message, fraction=1.0 if finished else self.fraction,
                finished=finished, dashboard=self.dashboard)
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


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``tiles_done``/``tiles_expected`` pairs as ``a/b tiles``, ``x_per_s`` as ``n x/s``, others as ``v name``."""
    parts = []
    for k, v in metrics.items():
        if k.endswith("_expected") or k in ("failed", "skipped"):
            continue
        if k.endswith("_done") and f"{k[:-5]}_expected" in metrics:
            parts.append(f"{v:.0f}/{metrics[k[:-5] + '_expected']:.0f} {k[:-5].replace('_', ' ')} read")
        elif k.endswith("_per_s"):
            parts.append(f"{v:.0f} {k[:-6]}/s")
        else:
            parts.append(f"{v:.4g} {k.replace('_', ' ')}")
    return "  ".join(parts)


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
        metrics = format_metrics(event.metrics)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {event.done}/{event.total} {event.unit}"
                + (f"  {metrics}" if metrics else "") + f"  ETA {_fmt_time(event.eta_s)}"
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
