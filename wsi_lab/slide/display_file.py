"""Display settings recorded with a session: ``display.json`` in a folder (the workshop/outputs folder;
the viewer uses the current directory), one entry per slide, written atomically.

Layout (version 1)::

    {"version": 1,
     "slides": {"<slide_id>": {"path": "<the slide's path as opened>", "dimensions": [w, h],
                               "settings": DisplaySettings.to_dict(), "saved": "<UTC ISO time>"}}}

An entry is found again by slide id and kept only when its level-0 dimensions match the slide opened
(another slide of the same name is not given foreign channels). A file that is not valid JSON of this
shape raises :class:`~wsi_lab.errors.InvalidParameterError` on load and is never overwritten on save.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError
from wsi_lab.io import atomic_write_bytes
from wsi_lab.slide.display import DisplaySettings

__all__ = ["DISPLAY_FILENAME", "display_file", "save_display_settings", "load_display_settings",
           "read_display_file", "recorded_display", "display_file_version"]

log = logging.getLogger(__name__)

#: the file name inside the session folder
DISPLAY_FILENAME = "display.json"
_LOCK = threading.Lock()  # one writer at a time in this process (read-merge-write)


def display_file(folder: str | os.PathLike | None = None) -> Path:
    """Path of the display file of ``folder`` (default: the current directory); a path ending in ``.json``
    is taken as the file itself."""
    p = Path(folder) if folder is not None else Path.cwd()
    return p if p.suffix == ".json" else p / DISPLAY_FILENAME


def read_display_file(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole display file as a dict (``{"version": 1, "slides": {}}`` when there is none)."""
    path = display_file(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": 1, "slides": {}}
    except OSError as exc:
        raise InvalidParameterError(f"{path}: display settings unreadable ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidParameterError(f"{path}: display settings are not valid JSON ({exc}); fix or remove the file") from exc
    if not (isinstance(data, dict) and isinstance(data.get("slides"), dict)):
        raise InvalidParameterError(f"{path}: display settings need an object with a 'slides' object; fix or remove the file")
    return data


def _slide_key(slide) -> tuple[str, str, list[int]]:
    return str(slide.slide_id), str(slide.path), [int(v) for v in slide.dimensions]


def save_display_settings(slide, settings: DisplaySettings | None,
                          folder: str | os.PathLike | None = None) -> Path:
    """Record ``settings`` for ``slide`` in ``folder``'s display file (atomic; other slides' entries kept);
    ``None`` removes the slide's entry. Returns the file's path."""
    path = display_file(folder)
    sid, spath, dims = _slide_key(slide)
    with _LOCK:
        data = read_display_file(path)  # refuses to overwrite a file it cannot read
        slides = dict(data["slides"])
        if settings is None:
            slides.pop(sid, None)
        else:
            slides[sid] = {"path": spath, "dimensions": dims, "settings": settings.to_dict(),
                           "saved": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        out = {**data, "version": 1, "slides": slides}
        atomic_write_bytes(path, (json.dumps(out, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return path


def load_display_settings(slide, folder: str | os.PathLike | None = None) -> DisplaySettings | None:
    """The settings recorded for ``slide`` in ``folder``'s display file, or None when there are none (or they
    were recorded for a slide of other dimensions). Automatic limits (``percentiles``) are taken again from
    the slide; a malformed file or entry raises :class:`InvalidParameterError`."""
    from wsi_lab.slide.display import display_from_spec

    sid, _path, dims = _slide_key(slide)
    entry = read_display_file(folder)["slides"].get(sid)
    if not isinstance(entry, dict) or list(entry.get("dimensions") or []) != dims:
        return None
    spec = entry.get("settings")
    if not isinstance(spec, dict):
        raise InvalidParameterError(f"{display_file(folder)}: the entry of {sid!r} has no settings object")
    return display_from_spec(slide, spec)


def recorded_display(slide, folder: str | os.PathLike | None = None) -> DisplaySettings | str:
    """What a person should see of ``slide``: the settings recorded in ``folder``'s display file, else
    ``"auto"`` (the slide's own statistics). A malformed file is logged and ignored here (displays go on)."""
    try:
        saved = load_display_settings(slide, folder)
    except InvalidParameterError as exc:
        log.warning("display settings of %s not used: %s", getattr(slide, "path", slide), exc)
        return "auto"
    return saved if saved is not None else "auto"


def display_file_version(folder: str | os.PathLike | None = None) -> int:
    """A number that changes whenever the display file is rewritten (from its modification time in ns,
    size and inode: an atomic rewrite is a new inode even within one clock tick; 0 when there is none):
    part of cache keys of displayed pictures, so a thumbnail follows a change of the recorded settings."""
    try:
        st = display_file(folder).stat()
    except OSError:
        return 0
    return hash((st.st_mtime_ns, st.st_size, st.st_ino)) or 1
