"""Export a TileTable as TFRecord shards for data-parallel training, without TensorFlow.

Layout under ``out_dir``::

    train/train-00000-of-00004.tfrecord ...   N shards per split, equal tile counts ±1, shuffled (seed)
    val/val-00000-of-00004.tfrecord ...
    test/<slide_id>.tfrecord                  one file per test slide (per-slide evaluation)
    manifest.json                             written last (wsi_lab.runs.manifest, kind "export_tfrecord"):
                                              schema, label_index, every file with its count, size, SHA-256

``N`` is the number of data-parallel workers (GPUs per host × hosts), so each worker reads its own
shard. Two record schemas (``tf.train.Example`` features):

- ``raw`` (classic): ``image_raw`` (bytes: tile_size² × 3 uint8 RGB, row-major), ``height``, ``width``,
  ``depth`` (int64), ``label`` (int64 class index, -1 unlabelled), ``slide_string`` (bytes), ``x``, ``y``.
- ``jpeg``: ``image/encoded`` (JPEG bytes), ``image/format`` (``b"jpeg"``), ``image/height``,
  ``image/width``, ``image/channels``, plus ``label``, ``slide_string``, ``x``, ``y`` (~20× smaller).

Files are written atomically; a re-run keeps files whose manifest entry matches (same rows, variant
and seed, same SHA-256 on disk) and rewrites the rest; files an earlier export listed that this one
does not (another shard count, slides no longer in the test split) are removed after the new manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.data.extract import TileCoder, encode_jpeg
from wsi_lab.data.tfrecord import TFRecordWriter, frame_record
from wsi_lab.data.tile_reader import (
    TILE_COLUMNS,
    SlideCache,
    label_index_of,
    label_indices,
    require_columns,
    slide_paths_of,
)
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.io import file_sha256
from wsi_lab.runs import manifest as mf
from wsi_lab.runs.progress import ProgressCallback, ProgressTracker
from wsi_lab.runs.spec import stable_hash

log = logging.getLogger(__name__)

__all__ = ["export_tfrecord", "shard_assignment", "SCHEMAS", "VARIANTS"]

VARIANTS = ("raw", "jpeg")
SCHEMAS = {
    "raw": {"image_raw": "bytes", "height": "int64", "width": "int64", "depth": "int64", "label": "int64",
            "slide_string": "bytes", "x": "int64", "y": "int64"},
    "jpeg": {"image/encoded": "bytes", "image/format": "bytes", "image/height": "int64", "image/width": "int64",
             "image/channels": "int64", "label": "int64", "slide_string": "bytes", "x": "int64", "y": "int64"},
}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def shard_assignment(n: int, shards: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(n)`` into ``shards`` shuffled index arrays whose sizes differ by at most one."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards <= 0:
        raise InvalidParameterError(f"shards must be a positive integer (one per data-parallel worker), got {shards!r}")
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[k::shards] for k in range(shards)]


def _uvarint(value: int) -> bytes:
    """Protobuf varint of an int64 (negative values as 10-byte two's complement, like encode_example)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([v]) for v in range(0x80)]


def _entry(key: bytes, feature: bytes) -> bytes:
    """One ``map<string, Feature>`` entry of ``Features`` (key, then the serialized Feature)."""
    body = b"\x0a" + _uvarint(len(key)) + key + b"\x12" + _uvarint(len(feature)) + feature
    return b"\x0a" + _uvarint(len(body)) + body


def _int_feature(value: int) -> bytes:
    vb = _uvarint(int(value))
    packed = b"\x0a" + _uvarint(len(vb)) + vb
    return b"\x1a" + _uvarint(len(packed)) + packed


def _bytes_head(n: int) -> bytes:
    """The Feature bytes before a ``n``-byte BytesList value (the value itself follows)."""
    inner = b"\x0a" + _uvarint(n)
    return b"\x0a" + _uvarint(len(inner) + n) + inner


def _bytes_feature(value: bytes) -> bytes:
    return _bytes_head(len(value)) + value


@functools.lru_cache(maxsize=64)
def _constant_entries(variant: str, h: int, w: int) -> dict[str, bytes]:
    """The entries every record of ``variant`` and size shares (cached: they are the same bytes each time)."""
    if variant == "raw":
        fixed: dict[str, bytes] = {"height": _int_feature(h), "width": _int_feature(w), "depth": _int_feature(3)}
    else:
        fixed = {"image/format": _bytes_feature(b"jpeg"), "image/height": _int_feature(h),
                 "image/width": _int_feature(w), "image/channels": _int_feature(3)}
    return {k: _entry(k.encode(), v) for k, v in fixed.items()}


def _example_parts(image: Any, label: int, slide_id: bytes, x: int, y: int, variant: str, h: int, w: int) -> list:
    """A serialized ``tf.train.Example`` of the export's schema as byte strings to join, the image bytes
    (``image``: bytes or a buffer) referenced, not copied; the same bytes :func:`encode_example` makes
    of the same features (keys sorted), built without its generic per-value machinery."""
    image_key = "image_raw" if variant == "raw" else "image/encoded"
    n = memoryview(image).nbytes
    varying = {"label": _entry(b"label", _int_feature(label)), "slide_string": _entry(b"slide_string",
               _bytes_feature(slide_id)), "x": _entry(b"x", _int_feature(x)), "y": _entry(b"y", _int_feature(y))}
    entries = {**_constant_entries(variant, h, w), **varying}
    fhead = _bytes_head(n)
    kb = image_key.encode()
    body_len = 1 + len(_uvarint(len(kb))) + len(kb) + 1 + len(_uvarint(len(fhead) + n)) + len(fhead) + n
    image_head = (b"\x0a" + _uvarint(body_len) + b"\x0a" + _uvarint(len(kb)) + kb + b"\x12"
                  + _uvarint(len(fhead) + n) + fhead)
    keys = sorted([*entries, image_key])
    at = keys.index(image_key)
    head = b"".join([entries[k] for k in keys[:at]] + [image_head])
    tail = b"".join([entries[k] for k in keys[at + 1:]])
    total = len(head) + n + len(tail)
    return [b"\x0a" + _uvarint(total) + head, image, tail]


def _example(tile: np.ndarray | bytes, label: int, slide_id: str, x: int, y: int, variant: str, quality: int,
             size: tuple[int, int] | None = None) -> bytes:
    """One serialized ``tf.train.Example``: ``tile`` is the pixels, or (``jpeg`` schema) ready JPEG bytes
    of ``size`` = (height, width)."""
    if isinstance(tile, (bytes, bytearray)):
        if size is None:
            raise ValueError("JPEG bytes need their size (height, width)")
        h, w = size
    else:
        h, w = tile.shape[:2]
    if variant == "raw":
        image: Any = np.ascontiguousarray(tile, np.uint8).data
    else:
        image = tile if isinstance(tile, (bytes, bytearray)) else encode_jpeg(tile, quality)
    return b"".join(_example_parts(image, int(label), slide_id.encode(), int(x), int(y), variant, int(h), int(w)))


def _fingerprint(rows: pd.DataFrame, labels: np.ndarray, params: dict) -> str:
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    h.update(pd.util.hash_pandas_object(rows[list(TILE_COLUMNS)].astype(str), index=False).to_numpy().tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def _plan(table: pd.DataFrame, shards: int, per_slide_test: bool, seed: int) -> list[dict]:
    """The files to write: ``{"path", "split", "rows" (positions in table), "slide_id"?}``."""
    if "split" in table.columns:
        splits = [str(s) for s in pd.unique(table["split"].dropna())]
        splits.sort(key=lambda s: (_SPLIT_ORDER.get(s, 9), s))
        if table["split"].isna().any():
            log.warning("%d tiles have no split and are not exported", int(table["split"].isna().sum()))
    else:
        splits = ["all"]
    split_col = table["split"].astype(str).to_numpy() if "split" in table.columns else np.full(len(table), "all")
    files: list[dict] = []
    for split in splits:
        rows = np.flatnonzero(split_col == split)
        if split == "test" and per_slide_test:
            sids = table["slide_id"].astype(str).to_numpy()[rows]
            for sid in sorted(set(sids)):
                files.append({"path": f"test/{sid}.tfrecord", "split": split, "slide_id": sid, "rows": rows[sids == sid]})
            continue
        if len(rows) < shards:
            raise DataError(f"split {split!r} has {len(rows)} tile(s), fewer than shards={shards}: every data-parallel "
                            "worker needs at least one; use fewer shards or more tiles")
        for k, part in enumerate(shard_assignment(len(rows), shards, seed + _SPLIT_ORDER.get(split, 9))):
            files.append({"path": f"{split}/{split}-{k:05d}-of-{shards:05d}.tfrecord", "split": split,
                          "rows": rows[part]})
    return files


def export_tfrecord(table: pd.DataFrame, out_dir: str | os.PathLike, shards: int = 1, variant: str = "raw",
                    per_slide_test: bool = True, seed: int = 0, quality: int = 90,
                    slide_paths: Mapping[str, str] | None = None, progress: ProgressCallback | None = None,
                    workers: int | None = None, backend: str = "auto", label_column: str = "label",
                    passthrough: bool = True) -> dict:
    """Write ``table``'s tiles as TFRecord files under ``out_dir`` (layout in the module docstring) and
    return the manifest (also written to ``out_dir/manifest.json``, last). Tiles are read at ``level``
    (``read_size``² px from level-0 ``(x, y)``) and resized to ``tile_size``². ``shards`` files per
    split hold equal tile counts ±1 in a seeded shuffled order; the test split gets one file per slide
    when ``per_slide_test``. ``progress`` receives :class:`~wsi_lab.runs.ProgressEvent` (unit ``tiles``).
    ``jpeg`` schema: a row that is exactly one JPEG tile of the slide carries the slide's own JPEG bytes
    (lossless) unless ``passthrough=False`` or the slide's tiles have a higher quality than ``quality``
    (:mod:`wsi_lab.data.extract`). Records are built and framed on ``workers`` threads."""
    if variant not in VARIANTS:
        raise InvalidParameterError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards <= 0:
        raise InvalidParameterError(f"shards must be a positive integer (one per data-parallel worker), got {shards!r}")
    coder = TileCoder(quality, passthrough)  # checks the quality
    require_columns(table, TILE_COLUMNS, "export_tfrecord")
    if table.empty:
        raise DataError("export_tfrecord: the table has no rows")
    table = table.reset_index(drop=True)
    paths = slide_paths_of(table, slide_paths)
    labels = label_indices(table, label_column)
    files = _plan(table, int(shards), per_slide_test, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_manifest = mf.read_manifest(out)
    previous: dict[str, dict] = {str(f.get("path")): f for f in (old_manifest or {}).get("files", [])
                                 if isinstance(f, dict)}
    params = {"variant": variant, "quality": int(quality), "seed": int(seed), "shards": int(shards)}
    if variant == "jpeg" and not passthrough:
        params["passthrough"] = False  # (absent when True: earlier exports' fingerprints stay valid)
    workers = max(1, int(workers or os.cpu_count() or 1))
    local = threading.local()
    cols = {c: table[c].to_numpy() for c in TILE_COLUMNS}
    sid_str = table["slide_id"].astype(str).to_numpy()

    def encode(i: int) -> tuple[bytes, bytes, bytes, bytes]:
        cache = getattr(local, "cache", None)
        if cache is None:
            cache = local.cache = SlideCache(16, backend)
        slide = cache.get(paths[sid_str[i]])
        x, y, level, rs, ts = (int(cols[c][i]) for c in ("x", "y", "level", "read_size", "tile_size"))
        if variant == "jpeg":
            tile: np.ndarray | bytes = coder.jpeg(slide, x, y, level, rs, ts)[0]
        else:
            tile = coder.pixels(slide, x, y, level, rs, ts)
        return frame_record(_example(tile, labels[i], sid_str[i], x, y, variant, quality, size=(ts, ts)))

    total = int(sum(len(f["rows"]) for f in files))
    done = written_tiles = 0
    t0 = time.perf_counter()
    entries = []
    tracker = ProgressTracker(total, progress, unit="tiles")
    tracker.update(f"exporting {total} tiles to {len(files)} TFRecord file(s) in {out}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-tfrecord") as pool:
        for f in files:
            rows = f["rows"]
            fp = _fingerprint(table.iloc[rows], labels[rows], params)
            target = out / f["path"]
            old = previous.get(f["path"])
            entry = {"path": f["path"], "split": f["split"], "records": int(len(rows)), "fingerprint": fp,
                     "labelled": int((np.asarray(labels)[rows] >= 0).sum())}  # Pipe mode plans from it
            if "slide_id" in f:
                entry["slide_id"] = f["slide_id"]
            if (old and old.get("fingerprint") == fp and target.is_file() and target.stat().st_size == old.get("bytes")
                    and old.get("sha256") == file_sha256(target)):  # the very file the manifest describes
                entry["bytes"], entry["sha256"] = old["bytes"], old["sha256"]
                log.info("%s is up to date, kept", target)
            else:
                window = workers * 32  # bounds the encoded records waiting in memory
                with TFRecordWriter(target) as writer:
                    for start in range(0, len(rows), window):
                        for framed in pool.map(encode, rows[start:start + window].tolist()):
                            writer.write_framed(framed)
                entry["bytes"], entry["sha256"] = writer.bytes_written, writer.sha256
                written_tiles += len(rows)
            entries.append(entry)
            done += len(rows)
            tracker.update(done=done, metrics={"tiles": done, "skipped": done - written_tiles}, current=f["path"])
    elapsed = time.perf_counter() - t0
    tracker.update(f"{len(files)} TFRecord file(s): {written_tiles} tiles written, {total - written_tiles} kept",
                   finished=True)
    per_split: dict[str, int] = {}
    for e in entries:
        per_split[e["split"]] = per_split.get(e["split"], 0) + e["records"]
    total_bytes = int(sum(e["bytes"] for e in entries))
    manifest = mf.write_manifest(
        out, "export_tfrecord", inputs_hash=stable_hash([e["fingerprint"] for e in entries]),
        params_hash=stable_hash({**params, "per_slide_test": bool(per_slide_test), "label_column": label_column}),
        files=entries, format="tfrecord", variant=variant, schema=SCHEMAS[variant], shards=int(shards),
        per_slide_test=bool(per_slide_test), seed=int(seed), quality=int(quality) if variant == "jpeg" else None,
        label_index=label_index_of(table, label_column), tiles=total, tiles_written=written_tiles,
        records_per_split=per_split, bytes=total_bytes, bytes_per_tile=total_bytes / max(total, 1))
    mf.clean_unlisted(out, manifest, owned=())  # temp files of a killed writer
    current = {e["path"] for e in entries}
    for rel in sorted(set(previous) - current):  # files of an earlier layout (other shards/splits): stale data
        stale = out / rel
        if stale.suffix == ".tfrecord" and stale.resolve().is_relative_to(out.resolve()):
            stale.unlink(missing_ok=True)
            log.info("removed %s (not part of this export)", stale)
    log.info("wrote %d TFRecord file(s) (%d tiles, %.1f MB) to %s in %.1f s", len(entries), total,
             total_bytes / 1e6, out, elapsed)
    return manifest
