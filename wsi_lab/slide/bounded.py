"""Opening a slide with a time limit: :func:`open_bounded` (also ``open_slide(path, timeout=s)``).

A reader library can loop forever on a malformed file (cuCIM on some TIFF layouts spins at 100% CPU).
Code that opens files it did not choose (a folder listing, a tile server) must not hang with it, so the
open runs in a daemon worker thread and the caller waits at most ``timeout`` seconds; after that it gets
:class:`~wsi_lab.errors.SlideOpenError` ("timed out after N s") and the worker is abandoned: if it ever
finishes, the slide it opened is closed. Daemon threads do not keep the process alive at exit, unlike
the threads of a ``concurrent.futures`` pool, so a server still stops on SIGTERM.

While an abandoned open of a file (same path, size and modification time) is still running, new opens
of that file fail at once with the same error instead of starting another worker, so a listing that
is repeated every few seconds cannot pile up stuck threads.

The default limit for listings and servers is :func:`default_open_timeout` (``WSI_LAB_OPEN_TIMEOUT_S``,
60 s by default).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError, SlideOpenError

log = logging.getLogger(__name__)

__all__ = ["open_bounded", "default_open_timeout", "stuck_opens"]

_STUCK: dict[tuple[str, int, int], float] = {}  # (path, size, mtime_ns) -> timeout that expired
_STUCK_LOCK = threading.Lock()


def default_open_timeout() -> float:
    """Seconds a listing or a server waits for one slide to open: ``WSI_LAB_OPEN_TIMEOUT_S`` (default 60)."""
    raw = os.environ.get("WSI_LAB_OPEN_TIMEOUT_S", "60")
    try:
        value = float(raw)
    except ValueError:
        log.warning("WSI_LAB_OPEN_TIMEOUT_S=%r is not a number; using 60", raw)
        return 60.0
    return value if value > 0 else 60.0


def stuck_opens() -> int:
    """How many abandoned opens are still running (a health figure for servers and tests)."""
    with _STUCK_LOCK:
        return len(_STUCK)


def _version(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path), -1, -1)


def open_bounded(path: str | os.PathLike, timeout: float, **kw: Any) -> Any:
    """``open_slide(path, **kw)`` that gives up after ``timeout`` seconds (see the module docstring).
    Returns the :class:`~wsi_lab.slide.Slide`; raises what ``open_slide`` raises, or
    :class:`SlideOpenError` (with ``file`` and ``reason``) when the limit passes."""
    from wsi_lab.slide.slide import open_slide

    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InvalidParameterError(f"open timeout must be a positive number of seconds, got {timeout!r}")
    p = Path(path).expanduser()
    version = _version(p)
    with _STUCK_LOCK:
        stuck = _STUCK.get(version)
    if stuck is not None:
        raise SlideOpenError.at(p, f"opening timed out after {stuck:g} s (an earlier open of this file is still "
                                   "running); the file is probably malformed: check it with `wsi-lab info`")
    result: dict[str, Any] = {}
    done = threading.Event()
    state = {"abandoned": False}
    lock = threading.Lock()

    def work() -> None:
        try:
            slide = open_slide(p, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller (or dropped, with a log line, if it gave up)
            slide, result["error"] = None, exc
        with lock:
            abandoned = state["abandoned"]
            if not abandoned:
                result["slide"] = slide
        if abandoned:
            with _STUCK_LOCK:
                _STUCK.pop(version, None)
            log.info("abandoned open of %s finished after the time limit (%s)", p,
                     type(result["error"]).__name__ if "error" in result else "opened; closing it")
            if slide is not None:
                slide.close()
        done.set()

    threading.Thread(target=work, name=f"wsi_lab-open:{p.name[:40]}", daemon=True).start()
    if not done.wait(timeout):
        with lock:
            if "slide" not in result and "error" not in result:
                state["abandoned"] = True
        if state["abandoned"]:
            with _STUCK_LOCK:
                _STUCK[version] = float(timeout)
            log.warning("opening %s took more than %g s; gave up (the worker is abandoned)", p, timeout)
            raise SlideOpenError.at(p, f"opening timed out after {timeout:g} s; the file is probably malformed "
                                       "(a reader looped on it): check it with `wsi-lab info`")
        done.wait()
    if "error" in result:
        raise result["error"]
    return result["slide"]
