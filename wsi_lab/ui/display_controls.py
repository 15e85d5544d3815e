"""The channel picker and contrast/gamma controls (kernel side) of the viewer and the slide browser, over
:mod:`wsi_lab.slide.display` and :mod:`wsi_lab.slide.display_file`.

A widget with a ``display_state`` trait and a ``slide`` gets the controls from :func:`attach_display`: the
``SlideViewer`` (its tiles follow) and the browser's :class:`~wsi_lab.ui.channel_picker.ChannelPicker`
(its slide's thumbnail follows). The state::

    {"options": channel_options(slide),          # channels a picker offers ([] for brightfield: no picker)
     "settings": DisplaySettings.to_dict() | None, # what is shown (None: the slide as scanned)
     "token": display_token(settings) | "",       # the tile URLs' ?display= value ("": no picker)
     "file": "<display.json path>" | "", "error": ""}

The front end (``widgets/src/display.ts``) draws the picker from ``options`` and writes ``settings`` (with
``percentiles`` for automatic limits, or ``limits`` set by hand); the kernel resolves and validates them
(:func:`~wsi_lab.slide.display.display_from_spec`), shows them (the widget's ``show`` callback), records
them in the working folder's ``display.json`` and echoes the resolved limits back. Refused values leave
what is shown and recorded as it was and come back as a readable ``error``. Python calls :func:`set_display`.

Open views follow live, within this kernel: every attached widget is registered (weakly) under its slide's
resolved path and its display folder; an accepted change (shown and recorded) is pushed to the other live
widgets of the same slide and folder, which show it and update their ``display_state`` without writing the
file again or passing it on. Views that are not pickers (the tuner's background) join with
:func:`follow_display`. Other kernels and napari read ``display.json`` when they open a slide.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError, WSILabError
from wsi_lab.slide.display import DisplaySettings, channel_options, display_from_spec
from wsi_lab.slide.display_file import display_file, load_display_settings, save_display_settings
from wsi_lab.viewing import display_token

log = logging.getLogger(__name__)

__all__ = ["attach_display", "set_display", "current_display", "follow_display", "display_peers", "parse_color",
           "COLOR_NAMES"]

#: colour names a person may give instead of (r, g, b)
COLOR_NAMES: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "magenta": (255, 0, 255),
    "cyan": (0, 255, 255), "yellow": (255, 255, 0), "white": (255, 255, 255), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "orange": (255, 128, 0)}

ShowCallback = Callable[[DisplaySettings | None], None]
#: ``receive(owner, settings)``: how a registered view takes settings accepted by another view of its slide
Receiver = Callable[[Any, DisplaySettings | None], None]

# -- the views of each slide + display folder in this process (weak: closed or dropped views fall out) --------
_GroupKey = tuple[str, str]
_VIEWS: dict[_GroupKey, list[tuple[weakref.ref, Receiver]]] = {}
_VIEWS_LOCK = threading.Lock()


def _group_key(slide: Any, folder: str | os.PathLike | None) -> _GroupKey:
    """The registry key: the slide's resolved path and the resolved display folder (settings are per folder)."""
    path, where = Path(str(slide.path)), Path(folder if folder is not None else Path.cwd())
    try:
        return str(path.resolve()), str(where.resolve())
    except OSError:  # an odd path (a URL, a vanished folder): as given
        return str(path), str(where.absolute())


def _alive(owner: Any) -> bool:
    """A registered view still on screen: not collected and, for a widget, not closed (its comm gone)."""
    return owner is not None and getattr(owner, "comm", True) is not None


def _register(owner: Any, key: _GroupKey, receive: Receiver) -> None:
    with _VIEWS_LOCK:
        entries = [(ref, rec) for ref, rec in _VIEWS.get(key, []) if _alive(ref()) and ref() is not owner]
        entries.append((weakref.ref(owner), receive))
        _VIEWS[key] = entries


def _live_views(key: _GroupKey) -> list[tuple[Any, Receiver]]:
    """The live views registered under ``key`` (strong references, for one push); the dead are pruned."""
    with _VIEWS_LOCK:
        entries = _VIEWS.get(key, [])
        live = [(ref(), rec) for ref, rec in entries if _alive(ref())]
        if len(live) != len(entries):
            _VIEWS[key] = [(ref, rec) for ref, rec in entries if _alive(ref())]
            if not _VIEWS[key]:
                del _VIEWS[key]
        return live


def follow_display(owner: Any, slide: Any, receive: Receiver, folder: str | os.PathLike | None = None) -> None:
    """Have ``receive(owner, settings)`` called whenever a picker of ``slide`` recording in ``folder``
    (default: the current directory) accepts new settings, for as long as ``owner`` lives and is not closed
    (it is held weakly: ``receive`` should not hold it either, e.g. pass ``type(owner).method``)."""
    _register(owner, _group_key(slide, folder), receive)


def display_peers(owner: Any) -> list[Any]:
    """The other live views (attached widgets and followers) that ``owner``'s changes reach."""
    key = getattr(owner, "_display_key", None)
    return [] if key is None else [view for view, _ in _live_views(key) if view is not owner]


def _receive(widget: Any, settings: DisplaySettings | None) -> None:
    """Settings accepted by another view of the slide: shown and put in ``display_state`` (no file write,
    not passed on: the state is set as an echo)."""
    if settings == widget._display_settings:
        return
    widget._display_show(settings)
    widget._display_settings = settings
    _set_state(widget, settings, "")


def _push(origin: Any, settings: DisplaySettings | None) -> None:
    """Give ``settings`` (accepted and recorded by ``origin``) to every other live view of its slide and
    folder; one view failing (a closed front end, a closed slide) is logged and the others still get them."""
    key = getattr(origin, "_display_key", None)
    if key is None:
        return
    for view, receive in _live_views(key):
        if view is origin:
            continue
        try:
            receive(view, settings)
        except Exception:
            log.exception("display settings not passed on to %s", type(view).__name__)


def parse_color(value: Any) -> tuple[int, int, int]:
    """A channel colour as (r, g, b) in 0..255 from (r, g, b), ``"#rrggbb"`` or a name of
    :data:`COLOR_NAMES`; anything else raises :class:`InvalidParameterError` saying what is accepted."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in COLOR_NAMES:
            return COLOR_NAMES[text]
        if len(text) == 7 and text[0] == "#":
            try:
                return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))
            except ValueError:
                pass
    elif not isinstance(value, bytes) and hasattr(value, "__iter__"):
        items = list(value)
        try:
            rgb = [int(v) for v in items] if len(items) == 3 and all(float(v) == int(v) for v in items) else []
        except (TypeError, ValueError, OverflowError):
            rgb = []
        if len(rgb) == 3 and all(0 <= v <= 255 for v in rgb):
            return rgb[0], rgb[1], rgb[2]
    raise InvalidParameterError(f"unknown colour {value!r}: give (r, g, b) with values 0..255, '#rrggbb' "
                                f"or one of {', '.join(sorted(COLOR_NAMES))}")


def _state(widget: Any, settings: DisplaySettings | None, error: str = "") -> dict[str, Any]:
    folder = getattr(widget, "_display_folder", None)
    return {"options": widget._display_options, "settings": settings.to_dict() if settings is not None else None,
            "token": display_token(settings) if widget._display_options["channels"] else "",
            "file": str(display_file(folder)) if folder is not None else "", "error": error}


def _set_state(widget: Any, settings: DisplaySettings | None, error: str) -> None:
    widget._display_echo = True
    try:
        widget.display_state = _state(widget, settings, error)
    finally:
        widget._display_echo = False


def attach_display(widget: Any, folder: str | os.PathLike | None = None, record: bool = True,
                   show: ShowCallback | None = None, initial: DisplaySettings | None = None) -> None:
    """Give ``widget`` (a widget with ``slide`` and a ``display_state`` trait) its display controls: the
    picker's options, the settings recorded for the slide in ``folder``'s ``display.json`` (default: the
    current directory) when there are some, else ``initial``; with ``record``, every change is written back
    there. ``show(settings)`` puts new settings on screen; by default the widget is a ``SlideViewer`` and
    its ``deepzoom`` is given them (and ``initial`` defaults to its current settings)."""
    slide = widget.slide
    if show is None:
        show = widget.deepzoom.set_display
        if initial is None:
            initial = widget.deepzoom.display
    widget._display_show = show
    widget._display_options = channel_options(slide)
    widget._display_folder = Path(folder if folder is not None else Path.cwd()) if record else None
    settings, error = initial, ""
    if widget._display_options["channels"]:
        try:
            saved = load_display_settings(slide, folder)
        except WSILabError as exc:
            log.warning("display settings not loaded: %s", exc)
            saved, error = None, str(exc)
        if saved is not None:
            show(saved)
            settings = saved
    widget._display_settings = settings
    widget._display_echo = False
    widget.display_state = _state(widget, settings, error)
    widget.observe(lambda change: _on_state(widget, change), names="display_state")
    # recorded settings are shared by the slide's views in this folder: register to send and receive changes
    widget._display_key = _group_key(slide, widget._display_folder) if widget._display_folder is not None else None
    if widget._display_key is not None and widget._display_options["channels"]:
        _register(widget, widget._display_key, _receive)


def current_display(widget: Any) -> DisplaySettings | None:
    """The settings the widget shows (None: raw)."""
    return widget._display_settings


def _apply(widget: Any, settings: DisplaySettings | None, raise_errors: bool = False) -> None:
    """Show ``settings`` and record them in the session file, then pass them to the slide's other open views;
    a failure to show keeps the old settings (nothing recorded or passed on; raised again with
    ``raise_errors``), a failure to record is reported in the state's ``error`` (and nothing passed on)."""
    try:
        widget._display_show(settings)
    except (WSILabError, OSError) as exc:
        log.warning("display settings not shown: %s", exc)
        _set_state(widget, current_display(widget), f"display settings not shown: {exc}")
        if raise_errors:
            raise
        return
    widget._display_settings = settings
    error = ""
    folder = getattr(widget, "_display_folder", None)
    if folder is not None and widget._display_options["channels"]:
        try:
            save_display_settings(widget.slide, settings, folder)
        except (WSILabError, OSError) as exc:
            log.warning("display settings not recorded: %s", exc)
            error = f"display settings not recorded: {exc}"
    _set_state(widget, settings, error)
    if not error:
        _push(widget, settings)


def _resolve(widget: Any, spec: dict[str, Any]) -> DisplaySettings:
    """A front end's ``spec`` as settings: colours given by name or ``#rrggbb`` are accepted; bad values
    raise :class:`InvalidParameterError`."""
    if isinstance(spec, dict) and isinstance(spec.get("colors"), list):
        spec = {**spec, "colors": [list(parse_color(c)) for c in spec["colors"]]}
    return display_from_spec(widget.slide, spec)


def _on_state(widget: Any, change: dict) -> None:
    """A change of ``display_state`` from the front end: resolve, apply and record its ``settings``; a
    refusal leaves everything as it was and puts a readable message in ``error``."""
    if widget._display_echo:
        return
    new = (change.get("new") or {}).get("settings")
    old = current_display(widget)
    if new == (old.to_dict() if old is not None else None):
        return
    try:
        settings = _resolve(widget, new) if new is not None else None
    except InvalidParameterError as exc:
        log.warning("display settings refused: %s", exc)
        _set_state(widget, old, f"display settings refused: {exc}")
        return
    except Exception as exc:  # a front end's odd value must not end in a traceback
        log.exception("display settings refused")
        _set_state(widget, old, f"display settings refused: {type(exc).__name__}: {exc}")
        return
    _apply(widget, settings)


def set_display(widget: Any, channels: Any = None, colors: Any = None, limits: Any = None,
                percentiles: Any = None, gamma: float | None = None, reset: bool = False) -> DisplaySettings | None:
    """Change what ``widget`` shows of a fluorescence slide and return the new settings: ``channels``
    (indices of the RGB read to show), ``colors`` (one per shown channel: (r, g, b), ``"#rrggbb"`` or a
    name), contrast ``limits`` (one (low, high) per shown channel, pixel values 0..255) or automatic
    ``percentiles`` (low, high), ``gamma``; ``reset`` goes back to the slide's automatic settings. Unnamed
    values are kept. Bad values raise :class:`InvalidParameterError` (nothing shown or recorded changes);
    a brightfield slide only takes ``gamma``."""
    from wsi_lab.slide.display import auto_display

    base = auto_display(widget.slide) if reset or current_display(widget) is None else current_display(widget)
    assert base is not None  # auto_display always returns settings
    spec = base.to_dict()
    if channels is not None:
        chans = [int(c) for c in channels]
        by_index = {o["index"]: o for o in widget._display_options["channels"]}
        if not by_index:
            raise InvalidParameterError(f"{widget.slide.path}: a brightfield slide has no channels to pick")
        unknown = [c for c in chans if c not in by_index]
        if unknown:
            raise InvalidParameterError(f"channels {unknown} do not exist; the slide has {sorted(by_index)}")
        old = dict(zip(spec["channels"], zip(spec["colors"], spec["limits"])))
        spec["channels"] = chans
        spec["colors"] = [old[c][0] if c in old else by_index[c]["color"] for c in chans]
        spec["limits"] = [old[c][1] if c in old else by_index[c]["limits"] for c in chans]
    if colors is not None:
        spec["colors"] = [list(parse_color(c)) for c in colors]
    if limits is not None:
        spec["limits"], spec["percentiles"] = [list(lim) for lim in limits], None
    if percentiles is not None:
        spec["percentiles"] = list(percentiles)
    if gamma is not None:
        spec["gamma"] = float(gamma)
    if spec["percentiles"] is None:
        spec["source"] = {}
    settings = display_from_spec(widget.slide, spec)
    _apply(widget, settings, raise_errors=True)
    return settings
