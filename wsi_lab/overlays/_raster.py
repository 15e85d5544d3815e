"""Geometry and rasterisation: tile extents and vectorised painting of rectangles into pixels."""

from __future__ import annotations

import os

import numpy as np

from wsi_lab.errors import InvalidParameterError


def tile_extent(table, slide_or_downsamples=None) -> np.ndarray:
    """Level-0 side length (pixels) of every tile of ``table``: the ``size0`` column when present, else
    ``read_size * level_downsample(level)``. ``slide_or_downsamples`` is a Slide (or anything with
    ``level_downsamples``) or a sequence of per-level downsamples; when omitted, tiles at levels > 0
    use ``table.attrs["wsi_lab"]`` (``level_downsamples``, else the header of its ``slide_path``)."""
    if "size0" in table.columns:
        return table["size0"].to_numpy(dtype=float)
    for col in ("read_size",):
        if col not in table.columns:
            raise InvalidParameterError(f"tile table has no {col!r} (or 'size0') column; columns are {list(table.columns)}")
    read = table["read_size"].to_numpy(dtype=float)
    levels = table["level"].to_numpy(dtype=int) if "level" in table.columns else np.zeros(len(table), int)
    if slide_or_downsamples is None and len(levels) and levels.max() > 0:
        slide_or_downsamples = _downsamples_from_attrs(table)
    if slide_or_downsamples is None:
        if len(levels) and levels.max() > 0:
            raise InvalidParameterError(
                "tiles are read at levels > 0, so their level-0 size needs the slide's level downsamples: "
                "pass slide=<Slide> (or the list of downsamples), or add a 'size0' column")
        return read
    ds = getattr(slide_or_downsamples, "level_downsamples", slide_or_downsamples)
    ds = np.asarray(list(ds), float)
    if len(levels) and (levels.min() < 0 or levels.max() >= len(ds)):
        raise InvalidParameterError(f"tile levels {sorted(set(levels.tolist()))} do not all exist; the slide has {len(ds)} level(s)")
    return read * ds[levels] if len(levels) else read


def _downsamples_from_attrs(table):
    """Level downsamples recorded with a TileTable, or read from the header of its slide; else None."""
    meta = table.attrs.get("wsi_lab") if isinstance(getattr(table, "attrs", None), dict) else None
    if not isinstance(meta, dict):
        return None
    if meta.get("level_downsamples"):
        return meta["level_downsamples"]
    path = meta.get("slide_path")
    if not path or not os.path.exists(path):
        return None
    from wsi_lab.slide import open_slide

    with open_slide(path, backend=meta.get("backend") or "auto") as slide:
        return slide.level_downsamples


def _centre_range(start: np.ndarray, stop: np.ndarray, origin: float, scale: float, n: int):
    """Output-pixel index ranges [i0, i1) whose centres fall in level-0 [start, stop); ≥ 1 pixel for
    spans that are inside the output but thinner than a pixel; clipped to [0, n)."""
    a = (start - origin) * scale - 0.5
    b = (stop - origin) * scale - 0.5
    i0 = np.ceil(a)
    i1 = np.ceil(b)
    thin = i1 <= i0
    mid = np.floor(((start + stop) / 2 - origin) * scale)
    i0 = np.where(thin, mid, i0)
    i1 = np.where(thin, mid + 1, i1)
    return np.clip(i0, 0, n).astype(np.int64), np.clip(i1, 0, n).astype(np.int64)


#: rectangles of at least this many output pixels are painted by slicing, smaller ones all at once
_SLICE_AREA = 256


def _paint(out_size: tuple[int, int], x0, x1, y0, y1) -> np.ndarray:
    """Rasterise rectangles of output pixels [x0, x1) x [y0, y1); returns an (H, W) int64 array with
    the index of the last rectangle covering each pixel, -1 where none does. Large rectangles are
    sliced (there are few of them per output), small ones are painted all at once with numpy."""
    ow, oh = out_size
    out = np.full((oh, ow), -1, np.int64)
    w, h = x1 - x0, y1 - y0
    rank = np.flatnonzero((w > 0) & (h > 0))
    area = w[rank] * h[rank]
    for r in rank[area >= _SLICE_AREA]:
        view = out[y0[r]:y1[r], x0[r]:x1[r]]
        np.maximum(view, r, out=view)
    small = rank[area < _SLICE_AREA]
    if not len(small):
        return out
    flat_out = np.full(oh * ow, -1, np.int64)
    n = w[small] * h[small]
    ends = np.cumsum(n)
    start = 0
    while start < len(small):  # batches of ~4M pixels bound the memory
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + 4_000_000, side="right")), start + 1)
        r, cnt = small[start:stop], n[start:stop]
        rep = np.repeat(np.arange(len(r)), cnt)
        local = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ww = w[r][rep]
        flat = (y0[r][rep] + local // ww) * ow + x0[r][rep] + local % ww
        flat_out[flat] = r[rep]  # ascending ranks: the later rectangle is written last
        start = stop
    np.maximum(out, flat_out.reshape(oh, ow), out=out)
    return out


def _check_box(box, out_size) -> tuple[float, float, float, float, int, int]:
    try:
        bx, by, bw, bh = (float(v) for v in box)
        ow, oh = (int(v) for v in out_size)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"box must be (x, y, w, h) and out_size (width, height); got {box!r}, {out_size!r}") from exc
    if not (bw > 0 and bh > 0 and ow > 0 and oh > 0) or ow * oh > 2**26:
        raise InvalidParameterError(f"box {box!r} and out_size {out_size!r} must be positive (out_size ≤ 64 MP)")
    return bx, by, bw, bh, ow, oh

