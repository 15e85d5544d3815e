"""``SlideBrowser``: a thumbnail grid and a sortable metadata table of the slides under a folder.

A thin view over :func:`wsi_lab.find_slides` and :meth:`wsi_lab.Slide.get_thumbnail`. Thumbnails are
computed lazily in background threads (the kernel stays responsive); thumbnails and metadata are cached
per file version (path, size, mtime), so a second ``Lab`` on the same folder opens no slide again.
Two observable traits: ``current`` (the slide the user is looking at: a click on a card's name) and
``selected`` (the slides to tile: the cards' checkboxes). A file that cannot be read is listed with the
reason and cannot be chosen; the others stay usable. When the current slide is multi-channel
(fluorescence), the viewer's channel picker (:class:`~wsi_lab.ui.channel_picker.ChannelPicker`) appears
above the grid: its changes redraw that slide's thumbnail at once and are recorded in the working folder's
``display.json``, where the viewer, the tuner and napari find them. Brightfield slides get no picker.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import traitlets

from wsi_lab.errors import InvalidParameterError, WSILabError
from wsi_lab.slide import Slide, SlideInfo, open_slide
from wsi_lab.slide.discovery import mpp_flags
from wsi_lab.slide.display import DisplaySettings
from wsi_lab.ui.channel_picker import ChannelPicker
from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.display_controls import follow_display
from wsi_lab.ui.slide_listing import (
    SORT_COLUMNS,
    TABLE_COLUMNS,
    displayed_thumbnail,
    list_slides,
    placeholder_png,
    slide_table,
    slide_table_html,
    thumbnail_bytes,
    thumbnail_pool,
)

__all__ = ["SlideBrowser", "slide_table", "list_slides", "thumbnail_bytes", "displayed_thumbnail", "mpp_flags",
           "SORT_COLUMNS", "TABLE_COLUMNS"]

log = logging.getLogger(__name__)


class SlideBrowser(widgets.VBox):
    """Thumbnails and metadata of every slide under ``root``; filter, sort, look at one, select some.

    ``current`` (observable) is the path of the slide being looked at (a click on a card's name);
    ``selected`` (observable) is the list of slide paths to tile (the cards' checkboxes). ``labels``
    optionally maps a slide id (or file name) to the slide's class (shown in the "class" column and
    matched by the filter). Unreadable files are listed with the reason and cannot be chosen.
    ``display_folder``: where display settings are read and recorded (``display.json``; default the
    current directory, as the viewer does). ``picker`` is the current slide's channel picker (None for a
    brightfield slide or none); :meth:`set_display` changes it from Python.
    """

    selected = traitlets.List(traitlets.Unicode(), help="paths of the slides selected for tiling").tag(sync=False)
    current = traitlets.Unicode(None, allow_none=True, help="path of the slide being looked at").tag(sync=False)

    def __init__(self, root: str | os.PathLike, labels: Mapping[str, str] | None = None, thumb_size: int = 160,
                 infos: Sequence[SlideInfo] | None = None, display_folder: str | os.PathLike | None = None,
                 **kwargs) -> None:
        self.root = Path(root).expanduser()
        self.thumb_size = int(thumb_size)
        self.display_folder = Path(display_folder) if display_folder is not None else None
        self.picker: ChannelPicker | None = None
        self._picker_slide: Slide | None = None
        self._live: set[str] = set()  # thumbnails redrawn by the picker (a late background one must not win)
        self.picker_box = widgets.VBox()
        self.picker_box.add_class("wsi-lab-browser-display")
        self.errors = ErrorBox()
        self.filter_text = widgets.Text(placeholder="filter by name, vendor or class", description="Filter",
                                        continuous_update=True, layout=widgets.Layout(width="320px"))
        self.sort_by = widgets.Dropdown(options=list(SORT_COLUMNS), value="name", description="Sort by",
                                        layout=widgets.Layout(width="220px"))
        self.descending = widgets.Checkbox(value=False, description="descending", indent=False,
                                           layout=widgets.Layout(width="110px"))
        self.select_all = widgets.Button(description="Select shown", tooltip="tick every readable slide shown",
                                         layout=widgets.Layout(width="110px"))
        self.clear_all = widgets.Button(description="Clear", tooltip="untick every slide",
                                        layout=widgets.Layout(width="70px"))
        self.hint = widgets.HTML("<small>Click a slide's name to look at it (Viewer, Tune; a fluorescence slide "
                                 "gets its channel picker here); tick the boxes of the slides to tile.</small>")
        self.summary = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, {self.thumb_size + 24}px)", grid_gap="8px"))
        self.table_html = widgets.HTML()
        self._cards: dict[str, widgets.VBox] = {}
        self._toggles: dict[str, widgets.Checkbox] = {}
        self._open_buttons: dict[str, widgets.Button] = {}
        self._images: dict[str, widgets.Image] = {}
        self._futures: dict[str, Future] = {}
        self._followers: dict[str, _CardFollower] = {}  # the cards' places among their slides' display views
        self._syncing = False
        try:
            self.infos = list(infos) if infos is not None else list_slides(self.root)
        except Exception as exc:  # noqa: BLE001 - shown in the panel, logged
            log.info("slide browser: %s", exc)
            self.infos = []
            self.errors.show(exc)
        self.table = slide_table(self.infos, labels)
        if not self.infos and not self.errors.value:
            self.errors.show(f"No slides found under {self.root} (looked for .svs, .ndpi, .tif, .mrxs, ...).",
                             "warning")
        elif self.infos and not len(self.readable):
            self.errors.show(f"None of the {len(self.infos)} slide file(s) under {self.root} could be read; "
                             "the table says why.", "warning")
        controls = widgets.HBox([self.filter_text, self.sort_by, self.descending, self.select_all, self.clear_all])
        super().__init__([self.errors, controls, self.hint, self.summary, self.picker_box, self.grid,
                          self.table_html], **kwargs)
        self.add_class("wsi-lab-browser")
        for w in (self.filter_text, self.sort_by, self.descending):
            w.observe(lambda _change: self._render(), "value")
        self.select_all.on_click(lambda _b: self.select(list(self._readable_paths(self.visible))))
        self.clear_all.on_click(lambda _b: self.select([]))
        self.observe(self._on_selected, "selected")
        self.observe(self._on_current, "current")
        self._render()

    # -- public -------------------------------------------------------------------------------
    @property
    def visible(self) -> pd.DataFrame:
        """The table rows that pass the filter, in the chosen order."""
        df = self.table
        q = self.filter_text.value.strip().lower()
        if q and len(df):
            hay = (df["name"] + " " + df["vendor"] + " " + df["class"]).str.lower()
            df = df[hay.str.contains(q, regex=False)]
        key = SORT_COLUMNS[self.sort_by.value]
        return df.sort_values([key, "name"], ascending=[not self.descending.value, True], na_position="last",
                              kind="stable")

    @property
    def readable(self) -> pd.DataFrame:
        """The table rows of the slides that opened (the ones that can be viewed, tuned and tiled)."""
        return self.table[self.table["error"] == ""] if len(self.table) else self.table

    @staticmethod
    def _readable_paths(df: pd.DataFrame) -> list[str]:
        return list(df.loc[df["error"] == "", "path"]) if len(df) else []

    def _check(self, paths: Sequence[str | os.PathLike]) -> list[str]:
        """``paths`` as strings, without the unknown and unreadable ones (named in a warning)."""
        known = set(self.table["path"]) if len(self.table) else set()
        bad = dict(zip(self.table["path"], self.table["error"])) if len(self.table) else {}
        wanted = [str(p) for p in paths]
        unknown = [p for p in wanted if p not in known]
        unreadable = [p for p in wanted if p in known and bad.get(p)]
        notes = []
        if unknown:
            notes.append(f"Not in this folder: {', '.join(unknown)}")
        if unreadable:
            notes.append("Cannot be read: " + "; ".join(f"{Path(p).name} ({bad[p]})" for p in unreadable))
        if notes:
            self.errors.show(". ".join(notes), "warning")
        return [p for p in wanted if p in known and not bad.get(p)]

    def select(self, paths: Sequence[str | os.PathLike]) -> None:
        """Set the slides to tile to ``paths`` (unknown or unreadable paths are left out, with a warning)."""
        self.selected = self._check(paths)

    def show(self, path: str | os.PathLike | None) -> None:
        """Make ``path`` the current slide (the one looked at); ``None`` for none."""
        if path is None:
            self.current = None
            return
        ok = self._check([path])
        if ok:
            self.current = ok[0]

    def on_select(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(paths)`` whenever the selection changes."""
        self.observe(lambda change: callback(list(change["new"])), "selected")

    def set_display(self, **changes) -> DisplaySettings | None:
        """Change the current slide's display (``channels``, ``colors``, ``limits``, ``percentiles``,
        ``gamma``, ``reset``: see :func:`wsi_lab.ui.display_controls.set_display`); its thumbnail follows
        and the settings are recorded. Bad values, or no multi-channel slide being looked at, raise
        :class:`InvalidParameterError`."""
        if self.picker is None:
            raise InvalidParameterError("no multi-channel slide is being looked at: click a fluorescence slide's "
                                        "name first (or call show(path))")
        return self.picker.set_display(**changes)

    def close(self) -> None:
        """Close the widget and the slide its channel picker holds open."""
        self._close_picker()
        self._followers.clear()  # the cards no longer follow display changes
        super().close()

    def wait_thumbnails(self, timeout: float | None = 60) -> bool:
        """Block until the thumbnails requested so far are done; True when all finished in time."""
        _done, pending = wait(list(self._futures.values()), timeout=timeout)
        return not pending

    # -- rendering ----------------------------------------------------------------------------
    def _card(self, row: pd.Series) -> widgets.VBox:
        path = row["path"]
        card = self._cards.get(path)
        if card is not None:
            return card
        error = row["error"]
        img = widgets.Image(value=placeholder_png(self.thumb_size), format="png",
                            layout=widgets.Layout(max_width=f"{self.thumb_size}px",
                                                  max_height=f"{self.thumb_size}px", object_fit="contain"))
        name = widgets.Button(description=row["name"], tooltip=f"look at {path}" if not error else f"{path}\n{error}",
                              disabled=bool(error), layout=widgets.Layout(width=f"{self.thumb_size + 16}px"))
        name.add_class("wsi-lab-thumb-name")
        name.on_click(lambda _b, p=path: self.show(p))
        toggle = widgets.Checkbox(value=path in self.selected, description="tile", indent=False,
                                  disabled=bool(error), tooltip=path if not error else f"{path}\n{error}",
                                  layout=widgets.Layout(width="60px"))
        toggle.add_class("wsi-lab-thumb-select")
        toggle.observe(lambda ch, p=path: self._on_toggle(p, ch["new"]), "value")
        kids: list[widgets.Widget] = [img, name, toggle]
        if error:
            reason = widgets.HTML(f"<small class='wsi-lab-unreadable' style='color:#8a1f11'>unreadable: "
                                  f"{html.escape(error[:160])}</small>",
                                  layout=widgets.Layout(max_width=f"{self.thumb_size + 16}px"))
            kids.append(reason)
        card = widgets.VBox(kids, layout=widgets.Layout(align_items="center"))
        card.add_class("wsi-lab-thumb")
        if error:
            card.add_class("wsi-lab-thumb-unreadable")
        self._cards[path], self._toggles[path], self._images[path] = card, toggle, img
        self._open_buttons[path] = name
        self._request_thumbnail(path, error)
        if not error:  # a display change made elsewhere (a viewer of this slide) redraws the card
            follower = self._followers[path] = _CardFollower(self, path)
            follow_display(follower, follower, _CardFollower.receive, self.display_folder)
        return card

    def _follow(self, path: str, settings: DisplaySettings | None) -> None:
        """Redraw ``path``'s card with ``settings`` accepted by another view of the slide (in the pool)."""
        try:
            with open_slide(path) as slide:
                self._redraw(path, slide, settings)
        except Exception as exc:  # noqa: BLE001 - the card keeps its picture; logged
            log.info("thumbnail of %s not redrawn: %s", path, exc)

    def _put_thumbnail(self, path: str, data: bytes, live: bool) -> None:
        """Show JPEG ``data`` on ``path``'s card; ``live``: drawn with settings just chosen (a background
        thumbnail finishing later must not replace it)."""
        if live:
            self._live.add(path)
        img = self._images[path]
        img.format, img.value = "jpeg", data
        img.add_class("wsi-lab-thumb-ready")

    def _request_thumbnail(self, path: str, error: str = "") -> None:
        if path in self._futures:
            return
        if error:  # known unreadable: no thread, a red placeholder with the reason
            self._images[path].value = placeholder_png(self.thumb_size, (230, 120, 120))
            self._toggles[path].tooltip = f"{path}\nthumbnail failed: {error}"
            done: Future = Future()
            done.set_result(None)
            self._futures[path] = done
            return
        # the job updates the widget itself, so a finished future means a drawn thumbnail
        self._futures[path] = thumbnail_pool().submit(self._load_thumbnail, path)

    def _load_thumbnail(self, path: str) -> None:
        img = self._images[path]
        try:
            data = thumbnail_bytes(path, self.thumb_size, self.display_folder)
        except Exception as exc:  # noqa: BLE001 - shown on the card, logged
            log.info("thumbnail of %s failed: %s", path, exc)
            img.value = placeholder_png(self.thumb_size, (230, 120, 120))
            self._toggles[path].tooltip = f"{path}\nthumbnail failed: {exc}"
            return
        if path in self._live:  # the picker drew a newer one meanwhile
            return
        self._put_thumbnail(path, data, live=False)

    # -- channel picker -----------------------------------------------------------------------
    def _close_picker(self) -> None:
        if self.picker is not None:
            self.picker.close()
            self.picker = None
        if self._picker_slide is not None:
            self._picker_slide.close()
            self._picker_slide = None
        self.picker_box.children = []

    def _show_picker(self, path: str | None) -> None:
        """The channel picker of ``path`` when it is multi-channel (none for brightfield or no slide)."""
        if self._picker_slide is not None and path is not None and str(self._picker_slide.path) == path:
            return
        self._close_picker()
        if path is None:
            return
        try:
            slide = open_slide(path)
        except WSILabError as exc:
            self.errors.show(exc)
            return
        try:
            picker = ChannelPicker(slide, show=functools.partial(self._redraw, path, slide), folder=self.display_folder)
        except WSILabError as exc:
            slide.close()
            self.errors.show(exc)
            return
        if not picker.has_channels:  # brightfield: no picker
            picker.close()
            slide.close()
            return
        self.picker, self._picker_slide = picker, slide
        caption = widgets.HTML(f"<b>Display of {html.escape(Path(path).name)}</b> <small>(recorded in "
                               f"{html.escape(picker.display_state.get('file', ''))}; the viewer, tuner and napari "
                               f"use it)</small>")
        self.picker_box.children = [caption, picker]

    def _redraw(self, path: str, slide: Slide, settings: DisplaySettings | None) -> None:
        """Redraw ``path``'s thumbnail with ``settings`` (the picker's ``show``)."""
        if path in self._images:
            self._put_thumbnail(path, displayed_thumbnail(slide, self.thumb_size, settings), live=True)

    def _render(self) -> None:
        vis = self.visible
        self.grid.children = [self._card(row) for _, row in vis.iterrows()]
        self.table_html.value = slide_table_html(vis, self.selected, self.current)
        n_bad = int((self.table["error"] != "").sum()) if len(self.table) else 0
        n_flag = int((self.table["flag_count"] > 0).sum()) - n_bad if len(self.table) else 0
        cur = f", looking at <b class='wsi-lab-current-name'>{html.escape(Path(self.current).name)}</b>" \
            if self.current else ""
        self.summary.value = (f"<b>{len(vis)}</b> of {len(self.table)} slides shown, "
                              f"<b>{len(self.selected)}</b> selected for tiling{cur}"
                              + (f", <span style='color:#b35c00'>{n_flag} flagged</span>" if n_flag else "")
                              + (f", <span class='wsi-lab-unreadable-count' style='color:#8a1f11'>{n_bad} "
                                 f"unreadable</span>" if n_bad else ""))

    # -- selection sync -----------------------------------------------------------------------
    def _on_toggle(self, path: str, value: bool) -> None:
        if self._syncing:
            return
        sel = [p for p in self.selected if p != path]
        if value:
            sel.append(path)
        self.selected = sel

    def _on_selected(self, _change) -> None:
        self._syncing = True
        try:
            for path, toggle in self._toggles.items():
                toggle.value = path in self.selected
        finally:
            self._syncing = False
        self._render()

    def _on_current(self, _change) -> None:
        self._show_picker(self.current)
        for path, button in self._open_buttons.items():
            button.button_style = "primary" if path == self.current else ""
            card = self._cards[path]
            if path == self.current:
                card.add_class("wsi-lab-current")
            else:
                card.remove_class("wsi-lab-current")
        self._render()



class _CardFollower:
    """A card's place among the views of its slide's display settings (held by the browser, so it goes
    with the browser): new settings accepted elsewhere redraw the card in the thumbnail pool, unless the
    browser's picker is open on that slide (its own ``show`` redraws it)."""

    def __init__(self, browser: SlideBrowser, path: str) -> None:
        self.browser, self.path = weakref.ref(browser), path

    def receive(self, settings: DisplaySettings | None) -> None:
        browser = self.browser()
        if browser is None:
            return
        open_on = browser._picker_slide
        if browser.picker is not None and open_on is not None and str(open_on.path) == self.path:
            return
        browser._futures[self.path] = thumbnail_pool().submit(browser._follow, self.path, settings)  # waited for too
