"""``ChannelPicker``: the viewer's channel picker (channels shown, colours, contrast limits, gamma) on its
own, for a widget that is not a viewer (the slide browser). The front end is the viewer's panel
(``widgets/src/display.ts`` bundled alone as ``static/picker.js``); the kernel side is
:mod:`wsi_lab.ui.display_controls`, so both pickers check, record (``display.json``) and reload settings
by the same rule. ``show(settings)`` puts each accepted change on screen (the browser redraws the slide's
thumbnail).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from wsi_lab.slide.display import DisplaySettings, auto_display
from wsi_lab.ui.display_controls import ShowCallback, attach_display, current_display, set_display

STATIC = Path(__file__).resolve().parents[1] / "static"

__all__ = ["ChannelPicker"]


class ChannelPicker(anywidget.AnyWidget):
    """Channel picker of an open fluorescence ``slide`` (a brightfield slide gets an empty picker: check
    :attr:`has_channels`). Settings start from those recorded in ``folder``'s ``display.json`` (default:
    the current directory), else the slide's automatic ones; every accepted change calls ``show`` and is
    recorded there. :attr:`settings` is what is shown; :meth:`set_display` changes it from Python."""

    _esm = STATIC / "picker.js"
    _css = STATIC / "picker.css"

    display_state = traitlets.Dict().tag(sync=True)  # the same state as SlideViewer's: ui/display_controls.py

    def __init__(self, slide: Any, show: ShowCallback | None = None, folder: str | os.PathLike | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slide = slide
        self.add_class("wsi-lab-channel-picker")
        attach_display(self, folder, show=show or (lambda _settings: None), initial=auto_display(slide))

    @property
    def has_channels(self) -> bool:
        """True for a slide with channels to pick (fluorescence); brightfield slides have none."""
        return bool(self.display_state.get("options", {}).get("channels"))

    @property
    def settings(self) -> DisplaySettings | None:
        """The settings shown now."""
        return current_display(self)

    @property
    def error(self) -> str:
        """The last refusal or recording failure, as a sentence ("" when none)."""
        return str(self.display_state.get("error", ""))

    def set_display(self, **changes: Any) -> DisplaySettings | None:
        """Channels, colours, contrast limits or percentiles, gamma, reset (see
        :func:`wsi_lab.ui.display_controls.set_display`)."""
        return set_display(self, **changes)
