"""Export the tiles of a TileTable as JPEG files: ``out/<split>/<label>/<slide_id>_<x>_<y>.jpg``.

Each file is written atomically; a re-run skips files that already exist and are complete JPEGs, so
an interrupted export resumes where it stopped. The step manifest (:mod:`wsi_lab.runs.manifest`, kind
``"export_jpeg"``: every file with its size) is written last.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_lab.data.extract import TileCoder
from wsi_lab.data.tile_reader import (
    TILE_COLUMNS,
    SlideCache,
    label_index_of,
    label_key,
    require_columns,
    slide_paths_of,
)
from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs import manifest as mf
from wsi_lab.runs.progress import ProgressCallback, ProgressTracker
from wsi_lab.runs.spec import stable_hash

log = logging.getLogger(__name__)

__all__ = ["export_jpeg", "tile_filenames", "is_valid_jpeg"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def _safe(name: str) -> str:
    s = _UNSAFE.sub("_", name).strip(".") or "_"
    return s


def is_valid_jpeg(path: str | os.PathLike) -> bool:
    """Cheap completeness check: the file starts with SOI (FF D8) and ends with EOI (FF D9)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 4:
                return False
            fh.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8" and fh.read(2) == b"\xff\xd9"
    except OSError:
        return False


def tile_filenames(table: pd.DataFrame, layout: str = "auto", label_column: str = "label") -> list[str]:
    """Relative path of every row's JPEG: ``<split>/<label>/<slide_id>_<x>_<y>.jpg`` (``auto``: the
    split and label folders only when those columns exist; ``flat``: no folders). Rows sharing
    slide and (x, y) at different level/read size get ``_l<level>_r<read_size>`` appended."""
    if layout not in ("auto", "flat"):
        raise InvalidParameterError(f"layout must be 'auto' or 'flat', got {layout!r}")
    sids = table["slide_id"].astype(str).map(_safe)
    xs, ys = table["x"].astype("int64").astype(str), table["y"].astype("int64").astype(str)
    stems = sids + "_" + xs + "_" + ys
    if table.duplicated(["slide_id", "x", "y"]).any():
        stems = stems + "_l" + table["level"].astype(str) + "_r" + table["read_size"].astype(str)
    folders = pd.Series("", index=table.index)
    if layout == "auto":
        if "split" in table.columns:
            folders = folders + table["split"].map(lambda v: "unassigned" if pd.isna(v) else _safe(str(v))) + "/"
        if label_column in table.columns:
            folders = folders + table[label_column].map(lambda v: "unlabelled" if pd.isna(v) else _safe(label_key(v))) + "/"
    return (folders + stems + ".jpg").tolist()


def export_jpeg(table: pd.DataFrame, out_dir: str | os.PathLike, quality: int = 90, workers: int | None = None,
                layout: str = "auto", slide_paths: Mapping[str, str] | None = None,
                progress: ProgressCallback | None = None, overwrite: bool = False, backend: str = "auto",
                label_column: str = "label", passthrough: bool = True) -> pd.DataFrame:
    """Write every tile of ``table`` as a JPEG under ``out_dir`` and return a copy of the table with a
    ``file`` column (path relative to ``out_dir``). Tiles are read at their ``level`` (``read_size``² px
    from level-0 ``(x, y)``), resized to ``tile_size``². Existing complete files are kept (resume) unless
    ``overwrite``. ``workers`` threads (default: CPU count) each keep their own open slides.
    ``progress`` receives :class:`~wsi_lab.runs.ProgressEvent` (unit ``tiles``) as tiles finish.
    A row that is exactly one JPEG tile of the slide (same size and grid, no resize) is written as the
    slide's own JPEG bytes, lossless, unless ``passthrough=False`` or the slide's tiles were encoded at a
    higher quality than ``quality`` (then it is re-encoded: :mod:`wsi_lab.data.extract`).
    ``manifest.json`` is written last; ``.part`` files of a killed export are removed then."""
    require_columns(table, TILE_COLUMNS, "export_jpeg")
    coder = TileCoder(quality, passthrough)  # checks the quality
    workers = max(1, int(workers or os.cpu_count() or 1))
    paths = slide_paths_of(table, slide_paths)
    names = tile_filenames(table, layout, label_column)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mf.invalidate(out)  # files change now: not complete until the new manifest
    result = table.copy()
    result["file"] = names
    total = len(result)
    order = np.argsort(result["slide_id"].astype(str).to_numpy(), kind="stable")  # group reads by slide
    chunk = max(1, min(256, total // (workers * 4) or 1))
    chunks = [order[i:i + chunk] for i in range(0, total, chunk)]
    local = threading.local()
    out_s = os.fspath(out)
    made: set[str] = {out_s}
    sizes = np.full(total, -1, np.int64)  # bytes of each file written now (-1: kept from before, stat it)
    cols = {c: result[c].to_numpy() for c in ("slide_id", "x", "y", "level", "read_size", "tile_size")}

    def work(rows: np.ndarray) -> tuple[int, int, int]:
        cache = getattr(local, "cache", None)
        if cache is None:
            cache = local.cache = SlideCache(4, backend)
        written = skipped = passed = 0
        for i in rows:
            target = os.path.join(out_s, names[i])  # str paths: pathlib costs more than a tile's write here
            if not overwrite and is_valid_jpeg(target):
                skipped += 1
                continue
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            slide = cache.get(paths[str(cols["slide_id"][i])])
            sizes[i], p, _h = coder.write_jpeg(target, slide, int(cols["x"][i]), int(cols["y"][i]),
                                               int(cols["level"][i]), int(cols["read_size"][i]),
                                               int(cols["tile_size"][i]))
            written += 1
            passed += p
        return written, skipped, passed

    t0 = time.perf_counter()
    done = written = skipped = passed = 0
    tracker = ProgressTracker(total, progress, unit="tiles")
    tracker.update(f"exporting {total} tiles as JPEG to {out}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-jpeg") as pool:
        for (w, s, p), rows in zip(pool.map(work, chunks), chunks):
            written, skipped, passed, done = written + w, skipped + s, passed + p, done + len(rows)
            tracker.update(done=done, metrics={"tiles": done, "skipped": skipped, "passthrough": passed},
                           current=str(cols["slide_id"][rows[-1]]))
    tracker.update(f"{written} JPEG tiles written, {skipped} already there", finished=True)
    elapsed = time.perf_counter() - t0
    log.info("exported %d tiles to %s (%d written, %d of them passed through; %d already there) in %.1f s", total,
             out, written, passed, skipped, elapsed)
    rows_hash = pd.util.hash_pandas_object(result[[*TILE_COLUMNS, "file"]].astype(str), index=False)
    mf.write_manifest(
        out, "export_jpeg", inputs_hash=stable_hash({"rows": rows_hash.to_numpy().tobytes().hex(), "slides": paths}),
        params_hash=stable_hash({"quality": int(quality), "layout": layout, "label_column": label_column,
                                 "passthrough": bool(passthrough)}),
        files=[{"path": name, "bytes": int(size)} if size >= 0 else name for name, size in zip(names, sizes)],
        hash_limit=None,  # sizes only: hashing every tile again would double the export's I/O
        format="jpeg", quality=int(quality), layout=layout, tiles=total, written=written, skipped=skipped,
        passthrough=bool(passthrough), passed_through=passed,
        label_index=label_index_of(result, label_column),
        counts={k: int(v) for k, v in pd.Series([n.rsplit("/", 1)[0] if "/" in n else "." for n in names])
                .value_counts().sort_index().items()},
        slides=sorted(paths))
    meta = dict(result.attrs.get("wsi_lab") or {})
    for part in out.rglob(".*.part"):  # temp files of a killed export
        part.unlink(missing_ok=True)
    meta["export_jpeg"] = {"out_dir": str(out), "quality": int(quality), "written": written, "skipped": skipped,
                           "passed_through": passed}
    result.attrs["wsi_lab"] = meta
    return result
