"""What the slide browser lists and draws, without widgets: the metadata table of a folder's slides
(:func:`slide_table`, :func:`list_slides`, cached per file version) and their thumbnails as a person sees
them (:func:`thumbnail_bytes`, cached per version of the slide and of ``display.json``;
:func:`displayed_thumbnail` for an open slide and given settings)."""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_lab.slide import SlideInfo, find_slides, open_slide
from wsi_lab.slide.discovery import mpp_flags
from wsi_lab.slide.display import DisplaySettings
from wsi_lab.slide.display_file import display_file_version, recorded_display
from wsi_lab.ui.common import encode_image

__all__ = ["SORT_COLUMNS", "TABLE_COLUMNS", "slide_table", "slide_table_html", "list_slides", "thumbnail_bytes", "displayed_thumbnail",
           "thumbnail_pool", "placeholder_png", "fmt_value"]

#: sort keys offered in the browser: label -> table column
SORT_COLUMNS = {"name": "name", "vendor": "vendor", "size (px)": "pixels", "levels": "levels",
                "µm/px": "mpp", "magnification": "magnification", "file size": "size_mb", "class": "class",
                "flags": "flag_count"}
TABLE_COLUMNS = ["name", "slide_id", "path", "vendor", "width", "height", "pixels", "levels", "mpp", "mpp_y",
                 "magnification", "size_mb", "class", "flags", "flag_count", "error"]

_THUMB_CACHE: dict[tuple, bytes] = {}
_INFO_CACHE: dict[tuple, SlideInfo] = {}
_THUMB_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def thumbnail_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wsi-lab-thumbs")
    return _POOL


def slide_table(infos: Sequence[SlideInfo], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per slide: name, vendor, size, levels, µm/px, magnification, file size, class (the user's
    class label of the slide, from ``labels``), flags and ``error`` ("" when the slide opened). Sizes and
    level counts are nullable integers, so an unreadable row never turns them into floats."""
    labels = labels or {}
    rows = []
    for i in infos:
        flags = mpp_flags(i)
        rows.append({
            "name": i.name, "slide_id": i.slide_id, "path": i.path, "vendor": i.vendor or "",
            "width": i.width, "height": i.height,
            "pixels": (i.width or 0) * (i.height or 0), "levels": i.level_count,
            "mpp": i.mpp_x, "mpp_y": i.mpp_y, "magnification": i.magnification,
            "size_mb": (i.size_bytes or 0) / 1e6, "class": labels.get(i.slide_id, labels.get(i.name, "")),
            "flags": "; ".join(flags), "flag_count": len(flags), "error": i.error or "",
        })
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ("width", "height", "levels"):
        df[col] = df[col].astype("Int64")
    return df


def list_slides(root: str | os.PathLike, workers: int = 4) -> list[SlideInfo]:
    """:func:`wsi_lab.find_slides` with each file's :class:`SlideInfo` cached per file version (path,
    size, mtime): only new or changed files are opened (:func:`wsi_lab.slide.describe_slide`, in
    ``workers`` threads). Unreadable files are listed with ``error`` set."""
    from wsi_lab.slide import describe_slide

    quick = find_slides(root, metadata=False)
    keys = {}
    for info in quick:
        st = os.stat(info.path)
        keys[info.path] = (info.path, st.st_size, st.st_mtime_ns)
    with _THUMB_LOCK:
        missing = [i.path for i in quick if keys[i.path] not in _INFO_CACHE]
    if missing:
        from wsi_lab.slide.bounded import default_open_timeout

        limit = default_open_timeout()
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            fresh = list(pool.map(lambda p: describe_slide(p, timeout=limit), missing))
        with _THUMB_LOCK:
            for path, info in zip(missing, fresh):
                _INFO_CACHE[keys[path]] = info
    with _THUMB_LOCK:
        return [_INFO_CACHE.get(keys[i.path], i) for i in quick]


def thumbnail_bytes(path: str | os.PathLike, max_size: int = 192, folder: str | os.PathLike | None = None) -> bytes:
    """JPEG bytes of the slide's thumbnail (at most ``max_size`` pixels a side) as a person sees it (the
    settings recorded in ``folder``'s ``display.json``, default the current directory, else automatic),
    cached per version of the slide file and of the display file."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, int(max_size), str(folder), display_file_version(folder))
    with _THUMB_LOCK:
        hit = _THUMB_CACHE.get(key)
    if hit is not None:
        return hit
    with open_slide(p) as s:
        # fluorescence made visible: the settings recorded by a picker (viewer's or browser's), else auto
        data = displayed_thumbnail(s, max_size, recorded_display(s, folder))
    with _THUMB_LOCK:
        _THUMB_CACHE[key] = data
    return data


def displayed_thumbnail(slide, max_size: int, display: DisplaySettings | str | None) -> bytes:
    """JPEG bytes of an open ``slide``'s thumbnail (at most ``max_size`` px a side) shown with ``display``
    (settings, ``"auto"``, or None for the raw pixels)."""
    return encode_image(slide.get_thumbnail(max_size, display=display if display is not None else "raw"),
                        "jpeg", quality=85)


def placeholder_png(size: int, text_color=(200, 200, 200)) -> bytes:
    arr = np.full((size * 3 // 4, size, 3), 240, np.uint8)
    arr[::8, :] = text_color
    return encode_image(arr, "png")


def fmt_value(v, spec: str = ".3g") -> str:
    """``v`` formatted with ``spec``; "—" for a missing value (None, NaN, pandas NA); an integer spec on
    a float value (a column widened by a missing row) still prints the integer."""
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return "—"
    if not isinstance(v, (int, float, np.number)):
        return str(v)
    if spec == "d":
        return str(int(v))
    return format(v, spec)


def slide_table_html(df: pd.DataFrame, selected: Sequence[str] = (), current: str | None = None) -> str:
    """The slide table (rows of :func:`slide_table`) as HTML: ticked rows ``selected``, the ``current`` one
    marked, flagged rows (µm/px and other metadata doubts) highlighted with their flags."""
    head = ["tile", "name", "vendor", "size (px)", "levels", "µm/px", "mag.", "MB", "class", "flags"]
    rows = []
    for _, r in df.iterrows():
        mpp = fmt_value(r["mpp"], ".4g")
        if r["mpp_y"] is not None and not pd.isna(r["mpp_y"]) and r["mpp_y"] != r["mpp"]:
            mpp += f" × {fmt_value(r['mpp_y'], '.4g')}"
        flagged = r["flag_count"] > 0
        size = f"{fmt_value(r['width'], 'd')} × {fmt_value(r['height'], 'd')}" if not pd.isna(r["width"]) else "—"
        name = html.escape(r["name"])
        if r["path"] == current:
            name = f"<b>▶ {name}</b>"
        cells = ["✔" if r["path"] in selected else "", name, html.escape(r["vendor"]), size,
                 fmt_value(r["levels"], "d"), mpp,
                 fmt_value(r["magnification"], "g"), f"{r['size_mb']:.1f}", html.escape(r["class"]),
                 ("⚠ " + html.escape(r["flags"])) if flagged else ""]
        style = ' style="background:#fff3e0"' if flagged else ""
        cls = ' class="wsi-lab-flagged"' if flagged else ""
        rows.append(f"<tr{cls}{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    th = "".join(f"<th style='text-align:left;padding-right:12px'>{h}</th>" for h in head)
    return (f"<table class='wsi-lab-slide-table' style='border-collapse:collapse;font-size:12px'>"
            f"<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
