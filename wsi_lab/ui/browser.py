"""``SlideBrowser``: a thumbnail grid and a sortable metadata table of the slides under a folder.

A thin view over :func:`wsi_lab.find_slides` and :meth:`wsi_lab.Slide.get_thumbnail`. Thumbnails are
computed lazily in background threads (the kernel stays responsive) and cached per file version.
The selection is the observable ``selected`` trait: a list of slide paths.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import traitlets

from wsi_lab.slide import SlideInfo, find_slides, open_slide
from wsi_lab.slide.discovery import mpp_flags
from wsi_lab.ui.common import ErrorBox, encode_image

log = logging.getLogger(__name__)

#: sort keys offered in the browser: label -> table column
SORT_COLUMNS = {"name": "name", "vendor": "vendor", "size (px)": "pixels", "levels": "levels",
                "µm/px": "mpp", "magnification": "magnification", "file size": "size_mb", "flags": "flag_count"}

_THUMB_CACHE: dict[tuple, bytes] = {}
_THUMB_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wsi-lab-thumbs")
    return _POOL


def slide_table(infos: Sequence[SlideInfo], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per slide: name, vendor, size, levels, µm/px, magnification, file size, label, flags."""
    labels = labels or {}
    rows = []
    for i in infos:
        flags = mpp_flags(i)
        rows.append({
            "name": i.name, "slide_id": i.slide_id, "path": i.path, "vendor": i.vendor or "",
            "width": i.width, "height": i.height,
            "pixels": (i.width or 0) * (i.height or 0), "levels": i.level_count,
            "mpp": i.mpp_x, "mpp_y": i.mpp_y, "magnification": i.magnification,
            "size_mb": i.size_bytes / 1e6, "label": labels.get(i.slide_id, labels.get(i.name, "")),
            "flags": "; ".join(flags), "flag_count": len(flags),
        })
    return pd.DataFrame(rows, columns=["name", "slide_id", "path", "vendor", "width", "height", "pixels", "levels",
                                       "mpp", "mpp_y", "magnification", "size_mb", "label", "flags", "flag_count"])


def thumbnail_bytes(path: str | os.PathLike, max_size: int = 192) -> bytes:
    """JPEG bytes of the slide's thumbnail (at most ``max_size`` pixels a side), cached per file version."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, int(max_size))
    with _THUMB_LOCK:
        hit = _THUMB_CACHE.get(key)
    if hit is not None:
        return hit
    with open_slide(p) as s:
        data = encode_image(s.get_thumbnail(max_size, display="auto"), "jpeg", quality=85)  # fluorescence made visible
    with _THUMB_LOCK:
        _THUMB_CACHE[key] = data
    return data


def _placeholder(size: int, text_color=(200, 200, 200)) -> bytes:
    arr = np.full((size * 3 // 4, size, 3), 240, np.uint8)
    arr[::8, :] = text_color
    return encode_image(arr, "png")


def _fmt(v, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return format(v, spec) if isinstance(v, (int, float, np.number)) else str(v)


class SlideBrowser(widgets.VBox):
    """Thumbnails and metadata of every slide under ``root``; filter, sort and select.

    ``selected`` (observable) is the list of selected slide paths. ``labels`` optionally maps a slide id
    (or file name) to a label string shown in the table and matched by the filter.
    """

    selected = traitlets.List(traitlets.Unicode(), help="paths of the selected slides").tag(sync=False)

    def __init__(self, root: str | os.PathLike, labels: Mapping[str, str] | None = None, thumb_size: int = 160,
                 infos: Sequence[SlideInfo] | None = None, **kwargs) -> None:
        self.root = Path(root).expanduser()
        self.thumb_size = int(thumb_size)
        self.errors = ErrorBox()
        self.filter_text = widgets.Text(placeholder="filter by name, vendor or label", description="Filter",
                                        continuous_update=True, layout=widgets.Layout(width="320px"))
        self.sort_by = widgets.Dropdown(options=list(SORT_COLUMNS), value="name", description="Sort by",
                                        layout=widgets.Layout(width="220px"))
        self.descending = widgets.Checkbox(value=False, description="descending", indent=False,
                                           layout=widgets.Layout(width="110px"))
        self.select_all = widgets.Button(description="Select shown", layout=widgets.Layout(width="110px"))
        self.clear_all = widgets.Button(description="Clear", layout=widgets.Layout(width="70px"))
        self.summary = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, {self.thumb_size + 24}px)", grid_gap="8px"))
        self.table_html = widgets.HTML()
        self._cards: dict[str, widgets.VBox] = {}
        self._toggles: dict[str, widgets.ToggleButton] = {}
        self._images: dict[str, widgets.Image] = {}
        self._futures: dict[str, Future] = {}
        self._syncing = False
        try:
            self.infos = list(infos) if infos is not None else find_slides(self.root)
        except Exception as exc:  # noqa: BLE001 - shown in the panel, logged
            log.info("slide browser: %s", exc)
            self.infos = []
            self.errors.show(exc)
        self.table = slide_table(self.infos, labels)
        if not self.infos and not self.errors.value:
            self.errors.show(f"No slides found under {self.root} (looked for .svs, .ndpi, .tif, .mrxs, ...).",
                             "warning")
        controls = widgets.HBox([self.filter_text, self.sort_by, self.descending, self.select_all, self.clear_all])
        super().__init__([self.errors, controls, self.summary, self.grid, self.table_html], **kwargs)
        self.add_class("wsi-lab-browser")
        for w in (self.filter_text, self.sort_by, self.descending):
            w.observe(lambda _change: self._render(), "value")
        self.select_all.on_click(lambda _b: self.select(list(self.visible["path"])))
        self.clear_all.on_click(lambda _b: self.select([]))
        self.observe(self._on_selected, "selected")
        self._render()

    # -- public -------------------------------------------------------------------------------
    @property
    def visible(self) -> pd.DataFrame:
        """The table rows that pass the filter, in the chosen order."""
        df = self.table
        q = self.filter_text.value.strip().lower()
        if q and len(df):
            hay = (df["name"] + " " + df["vendor"] + " " + df["label"]).str.lower()
            df = df[hay.str.contains(q, regex=False)]
        key = SORT_COLUMNS[self.sort_by.value]
        return df.sort_values([key, "name"], ascending=[not self.descending.value, True], na_position="last",
                              kind="stable")

    def select(self, paths: Sequence[str | os.PathLike]) -> None:
        """Set the selection to ``paths`` (unknown paths are ignored with a warning in the panel)."""
        known = set(self.table["path"]) if len(self.table) else set()
        wanted = [str(p) for p in paths]
        unknown = [p for p in wanted if p not in known]
        if unknown:
            self.errors.show(f"Not in this folder: {', '.join(unknown)}", "warning")
        self.selected = [p for p in wanted if p in known]

    def on_select(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(paths)`` whenever the selection changes."""
        self.observe(lambda change: callback(list(change["new"])), "selected")

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
        img = widgets.Image(value=_placeholder(self.thumb_size), format="png",
                            layout=widgets.Layout(max_width=f"{self.thumb_size}px",
                                                  max_height=f"{self.thumb_size}px", object_fit="contain"))
        toggle = widgets.ToggleButton(value=path in self.selected, description=row["name"], tooltip=path,
                                      layout=widgets.Layout(width=f"{self.thumb_size + 16}px"))
        toggle.observe(lambda ch, p=path: self._on_toggle(p, ch["new"]), "value")
        card = widgets.VBox([img, toggle], layout=widgets.Layout(align_items="center"))
        card.add_class("wsi-lab-thumb")
        self._cards[path], self._toggles[path], self._images[path] = card, toggle, img
        self._request_thumbnail(path)
        return card

    def _request_thumbnail(self, path: str) -> None:
        if path in self._futures:
            return
        # the job updates the widget itself, so a finished future means a drawn thumbnail
        self._futures[path] = _pool().submit(self._load_thumbnail, path)

    def _load_thumbnail(self, path: str) -> None:
        img = self._images[path]
        try:
            data = thumbnail_bytes(path, self.thumb_size)
        except Exception as exc:  # noqa: BLE001 - shown on the card, logged
            log.info("thumbnail of %s failed: %s", path, exc)
            img.value = _placeholder(self.thumb_size, (230, 120, 120))
            self._toggles[path].tooltip = f"{path}\nthumbnail failed: {exc}"
            return
        img.format, img.value = "jpeg", data
        img.add_class("wsi-lab-thumb-ready")

    def _render(self) -> None:
        vis = self.visible
        self.grid.children = [self._card(row) for _, row in vis.iterrows()]
        self.table_html.value = self._table_html(vis)
        n_flag = int((self.table["flag_count"] > 0).sum()) if len(self.table) else 0
        self.summary.value = (f"<b>{len(vis)}</b> of {len(self.table)} slides shown, "
                              f"<b>{len(self.selected)}</b> selected"
                              + (f", <span style='color:#b35c00'>{n_flag} flagged</span>" if n_flag else ""))

    def _table_html(self, df: pd.DataFrame) -> str:
        head = ["", "name", "vendor", "size (px)", "levels", "µm/px", "mag.", "MB", "label", "flags"]
        rows = []
        for _, r in df.iterrows():
            mpp = _fmt(r["mpp"], ".4g")
            if r["mpp_y"] is not None and not pd.isna(r["mpp_y"]) and r["mpp_y"] != r["mpp"]:
                mpp += f" × {_fmt(r['mpp_y'], '.4g')}"
            flagged = r["flag_count"] > 0
            cells = ["✔" if r["path"] in self.selected else "", html.escape(r["name"]), html.escape(r["vendor"]),
                     f"{_fmt(r['width'], 'd')} × {_fmt(r['height'], 'd')}" if r["width"] else "—",
                     _fmt(r["levels"], "d") if r["levels"] else "—", mpp,
                     _fmt(r["magnification"], "g"), f"{r['size_mb']:.1f}", html.escape(r["label"]),
                     ("⚠ " + html.escape(r["flags"])) if flagged else ""]
            style = ' style="background:#fff3e0"' if flagged else ""
            cls = ' class="wsi-lab-flagged"' if flagged else ""
            rows.append(f"<tr{cls}{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        th = "".join(f"<th style='text-align:left;padding-right:12px'>{h}</th>" for h in head)
        return (f"<table class='wsi-lab-slide-table' style='border-collapse:collapse;font-size:12px'>"
                f"<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

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
                toggle.button_style = "info" if toggle.value else ""
        finally:
            self._syncing = False
        self._render()

