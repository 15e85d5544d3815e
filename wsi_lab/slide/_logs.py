"""Routing of the reader libraries' log records into WSI Lab's own loggers.

tifffile and tiffslide report what they find odd in a file (``invalid circular reference to IFD``,
``unknown tag``...) as WARNING records on their own loggers. Without a handler configured anywhere,
Python's last-resort handler prints those to stderr, so a one-line error of the CLI grows four more
lines. :func:`route_library_logs` (called when the first slide opens) hands their records to
``wsi_lab.slide.libs.<name>`` at INFO level instead: nothing is lost (configure logging, or run with
``-v``, to see them) but nothing is printed uninvited. No handler is added to the root logger.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["route_library_logs", "LIBRARY_LOGGERS"]

#: loggers of the reader libraries whose records are routed
LIBRARY_LOGGERS = ("tifffile", "tiffslide", "imagecodecs")

_DONE = False
_LOCK = threading.Lock()


class _Forward(logging.Handler):
    """Re-emit a library's records on ``wsi_lab.slide.libs.<name>``, ERROR and below as INFO (a typed
    WSI Lab error says what failed)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(f"wsi_lab.slide.libs.{record.name}")
        level = logging.INFO if record.levelno <= logging.ERROR else record.levelno
        if target.isEnabledFor(level):
            target.log(level, "%s", record.getMessage())


def route_library_logs() -> None:
    """Route the reader libraries' log records (see the module docstring); idempotent."""
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        for name in LIBRARY_LOGGERS:
            lib = logging.getLogger(name)
            if not any(isinstance(h, _Forward) for h in lib.handlers):
                lib.addHandler(_Forward())
            lib.propagate = False
        _DONE = True
