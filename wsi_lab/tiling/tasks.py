"""Tiling's task functions: what a Dask worker runs for one slide (plan) or one region chunk.

Each task catches its own exceptions and returns a :class:`TaskError` instead of raising, so a corrupt
file fails once (no retry that fails the same way again) and workers log no "Compute Failed"
tracebacks; only a lost worker makes Dask run a task again (it reschedules those by itself). Tile
outputs are keyed by position, so a task re-run after a lost worker rewrites the same files.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from wsi_lab.io import LRUCache
from wsi_lab.tiling.params import TilingParams

__all__ = ["TaskError", "plan_task", "chunk_task", "tfrecord_task", "open_for_tiling", "chunk_bounds"]


@dataclass(frozen=True)
class TaskError:
    """A task's exception, returned as a value: its type name and message."""

    error_type: str
    message: str


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - returned to the client, reported as this slide's failure
            return TaskError(type(exc).__name__, str(exc) or repr(exc))

    run.__name__ = run.__qualname__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


# per worker process: open slides, closed when evicted
_SLIDES: LRUCache[tuple, Any] = LRUCache(max_items=8, sizeof=lambda _s: 0, on_evict=lambda _k, s: s.close())


def open_for_tiling(path: str, params: TilingParams):
    """Open (and cache per worker process) a slide, with ``params.slide_mpp`` used only when its
    metadata has no µm/px (opened once: nothing leaks)."""
    from wsi_lab.slide import open_slide

    key = (path, params.backend, params.slide_mpp)
    return _SLIDES.get_or_load(key, lambda: open_slide(path, backend=params.backend, mpp=params.slide_mpp,
                                                       mpp_only_if_missing=True))


def chunk_bounds(n: int, chunk_tiles: int, threads: int = 1) -> list[int]:
    """Row offsets ``[0, ..., n]`` cutting ``n`` rows into chunks of at most ``chunk_tiles`` rows, of equal
    size (±1) and, where that keeps them at least a quarter of ``chunk_tiles``, as many as a multiple of
    ``threads``: no worker thread is left with a lone last chunk while the others idle."""
    if n <= 0:
        return [0]
    count = -(-n // chunk_tiles)
    if threads > 1 and count % threads:
        rounded = -(-count // threads) * threads
        if n / rounded >= chunk_tiles / 4:
            count = rounded
    size, extra = divmod(n, count)
    bounds = [0]
    for k in range(count):
        bounds.append(bounds[-1] + size + (k < extra))
    return bounds


@_guard
def plan_task(path: str, params_json: str):
    """Plan one slide: ``(table, TissueMask or None, fine-pass modality or None)``."""
    from wsi_lab.tiling.grid import plan_tiles
    from wsi_lab.tiling.twostage import resolve_modality
    from wsi_lab.tissue import TissueMask, detect_tissue

    p = TilingParams.from_json(params_json)
    slide = open_for_tiling(path, p)
    mask = None
    if p.two_stage is None and p.method is not None:
        mask = detect_tissue(slide, p.method, downsample=p.mask_downsample, **p.method_params)
    table = plan_tiles(slide, p.tile_size, p.mpp, p.level, p.overlap, mask, p.min_tissue, p.two_stage,
                       mask_downsample=p.mask_downsample, method_params=p.method_params)
    modality = resolve_modality(slide, table, p.two_stage) if p.two_stage is not None else None
    return table, mask if isinstance(mask, TissueMask) else None, modality


@_guard
def chunk_task(path: str, params_json: str, rows: pd.DataFrame, modality: str | None, jpeg_dir: str | None,
               passthrough: bool | None = None):
    """Read the tiles of one region chunk: fine pass (two-stage) and/or write JPEGs keyed by position
    (:class:`~wsi_lab.data.extract.TileCoder`: the slide's own JPEG tile passed through where a row is
    exactly one source tile and ``passthrough`` (None: this worker's ``WSI_LAB_JPEG_PASSTHROUGH``), else
    decoded, resized and encoded at ``jpeg_quality``).
    Returns ``(kept rows, tiles read, megapixels read, {"tiles/<x>_<y>.jpg": (bytes, sha256)})``."""
    from wsi_lab.data.extract import TileCoder
    from wsi_lab.tiling.twostage import apply_fine_pass

    p = TilingParams.from_json(params_json)
    slide = open_for_tiling(path, p)
    coder = TileCoder(p.jpeg_quality, passthrough=passthrough)
    written: dict[str, tuple[int, str | None]] = {}  # tiles/<name> -> (bytes, sha256) for the manifest

    def put(x: int, y: int, level: int, read_size: int, tile_size: int, tile=None) -> None:
        name = f"{x}_{y}.jpg"
        n, _passed, sha = coder.write_jpeg(os.path.join(str(jpeg_dir), name), slide, x, y, level, read_size, tile_size,
                                           pixels=tile, digest=True)
        written[f"tiles/{name}"] = (n, sha)

    def write(row, tile) -> None:
        put(int(row["x"]), int(row["y"]), int(row["level"]), int(row["read_size"]), int(row["tile_size"]), tile)

    mp = float((rows["read_size"].astype("float64") ** 2).sum()) / 1e6
    if p.two_stage is not None:
        rows.attrs = {"wsi_lab": {"params": {"min_tissue": p.min_tissue}}}
        kept = apply_fine_pass(slide, rows, p.two_stage, p.two_stage.min_fine_fraction or p.min_tissue, modality,
                               on_tile=write if jpeg_dir else None)
        return kept, len(rows), mp, written
    cols = [rows[c].to_numpy().tolist() for c in ("x", "y", "level", "read_size", "tile_size")]
    for x, y, level, read_size, tile_size in zip(*cols):
        put(x, y, level, read_size, tile_size)
    return rows, len(rows), mp, written


@_guard
def tfrecord_task(table: pd.DataFrame, out_dir: str) -> Any:
    """Write a slide's tiles as TFRecord shards (``wsi_lab.data.export_tfrecord``); returns its manifest."""
    mod = importlib.import_module("wsi_lab.data.export_tfrecord")
    return mod.export_tfrecord(table, out_dir)
