"""The viewer's channel picker and contrast/gamma controls (kernel side), over
:mod:`wsi_lab.slide.display` and :mod:`wsi_lab.slide.display_file`.

The state travels in the viewer's ``display_state`` trait::

    {"options": channel_options(slide),          # channels a picker offers ([] for brightfield: no picker)
     "settings": DisplaySettings.to_dict() | None, # what the tiles show (None: the slide as scanned)
     "token": display_token(settings) | "",       # the tile URLs' ?display= value ("": no picker)
     "file": "<display.json path>" | "", "error": ""}

The front end (``widgets/src/display.ts``) draws the picker from ``options`` and writes ``settings`` (with
``percentiles`` for automatic limits, or ``limits`` set by hand); the kernel resolves and validates them
(:func:`~wsi_lab.slide.display.display_from_spec`), applies them to the comm path's pyramid, records them
in the session's ``display.json`` and echoes the resolved limits back. Python calls :func:`set_display`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError, WSILabError
from wsi_lab.slide.display import DisplaySettings, channel_options, display_from_spec
from wsi_lab.slide.display_file import display_file, load_display_settings, save_display_settings
from wsi_lab.viewing import display_token

log = logging.getLogger(__name__)

__all__ = ["attach_display", "set_display", "current_display"]


def _state(viewer: Any, settings: DisplaySettings | None, error: str = "") -> dict[str, Any]:
    folder = getattr(viewer, "_display_folder", None)
    return {"options": viewer._display_options, "settings": settings.to_dict() if settings is not None else None,
            "token": display_token(settings) if viewer._display_options["channels"] else "", "file": str(display_file(folder)) if folder is not None else "",
            "error": error}


def attach_display(viewer: Any, folder: str | os.PathLike | None = None, record: bool = True) -> None:
    """Give ``viewer`` (a ``SlideViewer`` with a ``deepzoom`` and a ``display_state`` trait) its display
    controls: the picker's options, the settings recorded for the slide in ``folder``'s ``display.json``
    (default: the current directory) when there are some, else the slide's automatic ones; with ``record``,
    every change is written back there."""
    slide = viewer.slide
    viewer._display_options = channel_options(slide)
    viewer._display_folder = Path(folder if folder is not None else Path.cwd()) if record else None
    settings, error = viewer.deepzoom.display, ""
    if viewer._display_options["channels"]:
        try:
            saved = load_display_settings(slide, folder)
        except WSILabError as exc:
            log.warning("display settings not loaded: %s", exc)
            saved, error = None, str(exc)
        if saved is not None:
            viewer.deepzoom.set_display(saved)
            settings = saved
    viewer._display_echo = False
    viewer.display_state = _state(viewer, settings, error)
    viewer.observe(lambda change: _on_state(viewer, change), names="display_state")


def current_display(viewer: Any) -> DisplaySettings | None:
    """The settings the viewer's tiles are shown with (None: raw)."""
    return viewer.deepzoom.display


def _apply(viewer: Any, settings: DisplaySettings | None) -> None:
    """Show ``settings`` (comm path pyramid, front end state) and record them in the session file."""
    viewer.deepzoom.set_display(settings)
    error = ""
    folder = getattr(viewer, "_display_folder", None)
    if folder is not None and viewer._display_options["channels"]:
        try:
            save_display_settings(viewer.slide, settings, folder)
        except (WSILabError, OSError) as exc:
            log.warning("display settings not recorded: %s", exc)
            error = f"display settings not recorded: {exc}"
    viewer._display_echo = True
    try:
        viewer.display_state = _state(viewer, settings, error)
    finally:
        viewer._display_echo = False


def _on_state(viewer: Any, change: dict) -> None:
    """A change of ``display_state`` from the front end: resolve, apply and record its ``settings``."""
    if viewer._display_echo:
        return
    new = (change.get("new") or {}).get("settings")
    old = current_display(viewer)
    if new == (old.to_dict() if old is not None else None):
        return
    try:
        settings = display_from_spec(viewer.slide, new) if new is not None else None
    except InvalidParameterError as exc:
        log.warning("display settings refused: %s", exc)
        viewer._display_echo = True
        try:
            viewer.display_state = _state(viewer, old, str(exc))
        finally:
            viewer._display_echo = False
        return
    _apply(viewer, settings)


def set_display(viewer: Any, channels: Any = None, colors: Any = None, limits: Any = None,
                percentiles: Any = None, gamma: float | None = None, reset: bool = False) -> DisplaySettings | None:
    """Change what ``viewer`` shows of a fluorescence slide and return the new settings: ``channels``
    (indices of the RGB read to show), ``colors`` (one (r, g, b) per shown channel), contrast ``limits``
    (one (low, high) per shown channel, pixel values 0..255) or automatic ``percentiles`` (low, high),
    ``gamma``; ``reset`` goes back to the slide's automatic settings. Unnamed values are kept. Bad values
    raise :class:`InvalidParameterError`; a brightfield slide only takes ``gamma``."""
    from wsi_lab.slide.display import auto_display

    base = auto_display(viewer.slide) if reset or current_display(viewer) is None else current_display(viewer)
    assert base is not None  # auto_display always returns settings
    spec = base.to_dict()
    if channels is not None:
        chans = [int(c) for c in channels]
        by_index = {o["index"]: o for o in viewer._display_options["channels"]}
        if not by_index:
            raise InvalidParameterError(f"{viewer.slide.path}: a brightfield slide has no channels to pick")
        unknown = [c for c in chans if c not in by_index]
        if unknown:
            raise InvalidParameterError(f"channels {unknown} do not exist; the slide has {sorted(by_index)}")
        old = dict(zip(spec["channels"], zip(spec["colors"], spec["limits"])))
        spec["channels"] = chans
        spec["colors"] = [old[c][0] if c in old else by_index[c]["color"] for c in chans]
        spec["limits"] = [old[c][1] if c in old else by_index[c]["limits"] for c in chans]
    if colors is not None:
        spec["colors"] = [list(c) for c in colors]
    if limits is not None:
        spec["limits"], spec["percentiles"] = [list(lim) for lim in limits], None
    if percentiles is not None:
        spec["percentiles"] = list(percentiles)
    if gamma is not None:
        spec["gamma"] = float(gamma)
    if spec["percentiles"] is None:
        spec["source"] = {}
    settings = display_from_spec(viewer.slide, spec)
    _apply(viewer, settings)
    return settings
