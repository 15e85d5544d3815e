"""Segmentation inference: a :class:`~wsi_lab.models.segmentation.SegmentationModel` over a
TileTable's tiles, per-tile class maps stitched into one slide-level label mask at a coarse
downsample, and the predicted regions exported as ASAP XML and QuPath GeoJSON.

Per slide, under ``out/<slide_id>/``: ``mask.png`` (uint8 class indices, one pixel per
``downsample`` level-0 pixels), ``mask.json`` (downsample, classes, checkpoint hash, slide size),
``regions.xml`` (ASAP) and ``regions.geojson`` (QuPath), then a ``segment`` manifest (inputs: slide
file and rows; parameters: checkpoint hash, downsample), all written atomically; a re-run skips a
slide whose manifest checks out. The returned table gains ``pred_frac_<class>`` per tile.

Progress (:mod:`wsi_lab.runs.progress`, as ``predict``): unit ``tiles``, one item per slide (queued,
running, done / skipped / failed), an event per batch with the ``tiles`` segmented and ``tiles_per_s``;
a slide that fails is marked failed in a last ``finished`` event before its error is raised."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from wsi_lab.annotations import AnnotationSet, Region, write_asap, write_geojson_annotations
from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError
from wsi_lab.runs.progress import ProgressCallback, ProgressTracker

log = logging.getLogger(__name__)

__all__ = ["segment_slides", "SegmentResult", "mask_to_annotations", "read_mask", "KIND", "FORMATS"]

KIND = "segment"
FORMATS = ("xml", "geojson")
MAX_MASK_SIDE = 4096


@dataclass
class SegmentResult:
    """The table with ``pred_frac_<class>`` columns, and each slide's output files."""

    table: pd.DataFrame
    masks: dict[str, Path] = field(default_factory=dict)
    regions: dict[str, dict[str, Path]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    checkpoint_hash: str = ""


def mask_to_annotations(mask: np.ndarray, downsample: float, classes: list[str], min_area: float = 0.0,
                        colors: dict[str, str] | None = None) -> AnnotationSet:
    """The regions of a label ``mask`` (``downsample`` level-0 px per pixel) as an
    :class:`AnnotationSet`: one polygon per connected area of each non-background class, traced along
    pixel edges (holes kept), in level-0 pixels; areas under ``min_area`` level-0 px² are dropped.
    Rasterising the result at ``downsample`` gives ``mask`` back exactly."""
    from wsi_lab.infer.geojson import mask_contours

    regions = []
    for c, name in enumerate(classes):
        if c == 0 or not (mask == c).any():
            continue
        for k, poly in enumerate(mask_contours(mask == c, downsample)):
            r = Region.of(name, poly[0], poly[1:], name=f"{name} {k}", color=(colors or {}).get(name))
            if r.area() >= min_area:
                regions.append(r)
    groups = {n: {"color": (colors or {}).get(n), "parent": None} for n in classes[1:]}
    return AnnotationSet(regions, groups)


def read_mask(folder: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``(mask, meta)`` of one slide's output folder (``mask.png`` + ``mask.json``)."""
    p = Path(folder)
    try:
        meta = json.loads((p / "mask.json").read_text())
        mask = np.asarray(Image.open(p / "mask.png"))
    except FileNotFoundError as exc:
        raise DataError.at(p, "no segmentation mask here (mask.png + mask.json)") from exc
    except (OSError, ValueError) as exc:
        raise DataError.at(p, f"unreadable segmentation mask ({exc})") from exc
    return mask, meta


def _load(model_or_checkpoint: Any, device: torch.device) -> tuple[torch.nn.Module, str, str]:
    from wsi_lab.infer._engine import _state_hash
    from wsi_lab.io import file_sha256
    from wsi_lab.models.checkpoint import load

    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = getattr(model_or_checkpoint, "module", model_or_checkpoint)
        source, digest = "<model>", _state_hash(model)
        model = model.to(device).eval()
    elif isinstance(model_or_checkpoint, (str, os.PathLike)):
        source = str(model_or_checkpoint)
        model, digest = load(source, device=device), file_sha256(source)
    else:
        raise InvalidParameterError(f"segment needs a model or a checkpoint path, got {type(model_or_checkpoint).__name__}")
    if getattr(model, "kind", "") != "segmenter":
        raise CheckpointError(f"{source}: a {type(model).__name__} is not a segmentation model; train one with "
                              "task 'segment' (unet, deeplabv3)")
    return model, source, digest


def _geometry(path: str) -> tuple[tuple[int, int], list[float]]:
    from wsi_lab.slide import open_slide

    s = open_slide(path)
    try:
        return tuple(s.dimensions), [float(d) for d in s.level_downsamples]  # type: ignore[return-value]
    finally:
        s.close()


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


@torch.no_grad()
def _predict_slide(model: torch.nn.Module, rows: pd.DataFrame, path: str, ds_out: float, downs: list[float],
                   dims: tuple[int, int], device: torch.device, precision: str, batch_size: int,
                   on_batch: Any) -> tuple[np.ndarray, np.ndarray]:
    from wsi_lab.infer._engine import _batches, autocast

    k = len(getattr(model, "classes"))  # noqa: B009
    w, h = max(1, math.ceil(dims[0] / ds_out)), max(1, math.ceil(dims[1] / ds_out))
    mask = np.zeros((h, w), np.uint8)
    fracs = np.zeros((len(rows), k), np.float32)
    ext = rows["read_size"].to_numpy(float) * np.asarray(downs)[rows["level"].to_numpy(int)]
    xs, ys = rows["x"].to_numpy(float), rows["y"].to_numpy(float)
    i = 0
    for images in _batches(rows, path, batch_size, 0, device.type == "cuda", "auto"):
        with autocast(device, precision):
            pred = model(images.to(device)).float().argmax(1).cpu().numpy().astype(np.uint8)
        for p in pred:
            fracs[i] = np.bincount(p.ravel(), minlength=k)[:k] / p.size
            x0, y0 = int(round(xs[i] / ds_out)), int(round(ys[i] / ds_out))
            x1, y1 = int(round((xs[i] + ext[i]) / ds_out)), int(round((ys[i] + ext[i]) / ds_out))
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if cx1 > cx0 and cy1 > cy0:
                small = np.asarray(Image.fromarray(p).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
                mask[cy0:cy1, cx0:cx1] = small[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            i += 1
        if on_batch:
            on_batch(len(pred))
    return mask, fracs


def segment_slides(model_or_checkpoint: Any, table: pd.DataFrame, out: str | os.PathLike, *,
                   downsample: float | None = None, batch_size: int = 16, device: str | None = None,
                   precision: str = "auto", formats: tuple[str, ...] = FORMATS, min_area: float = 0.0,
                   slide_paths: dict[str, str] | None = None, progress: ProgressCallback | None = None) -> SegmentResult:
    """Segment every slide of ``table`` with a segmentation model or checkpoint, writing the outputs
    described in the module docstring under ``out``. ``downsample``: level-0 px per mask pixel
    (default: the tiles' own resolution, coarsened until the mask is at most 4096 px a side).
    ``formats``: region exports (``xml`` ASAP, ``geojson`` QuPath). Slides run one after another."""
    from wsi_lab.data.tile_reader import TILE_COLUMNS, require_columns, slide_paths_of
    from wsi_lab.infer._engine import resolve_device

    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise InvalidParameterError(f"formats {bad} are not among {FORMATS}")
    if downsample is not None and not (downsample > 0 and math.isfinite(downsample)):
        raise InvalidParameterError(f"downsample must be a positive number, got {downsample!r}")
    if not isinstance(table, pd.DataFrame) or len(table) == 0:
        raise DataError("segment: the TileTable is empty: nothing to segment (tile the slides first)")
    require_columns(table, TILE_COLUMNS, "segment")
    dev, prec = resolve_device(device, precision)
    model, source, digest = _load(model_or_checkpoint, dev)
    classes = [str(c) for c in getattr(model, "classes")]  # noqa: B009
    paths = slide_paths_of(table, slide_paths)
    tracker = ProgressTracker(len(table), progress, unit="tiles", items=sorted(paths), rates=("tiles",))
    result = SegmentResult(table.copy(), checkpoint_hash=digest)
    result.table.attrs = dict(table.attrs)
    fr_cols = [f"pred_frac_{c}" for c in classes]
    for c in fr_cols:
        result.table[c] = np.float32(np.nan)
    for sid, rows in table.groupby(table["slide_id"].astype(str), sort=True):
        try:
            _segment_one(model, sid, rows, paths[sid], Path(out) / sid, result, tracker, downsample=downsample,
                         dev=dev, prec=prec, batch_size=batch_size, formats=formats, min_area=min_area,
                         classes=classes, source=source, digest=digest, fr_cols=fr_cols)
        except Exception as exc:
            tracker.update(f"{sid}: failed: {type(exc).__name__}: {exc}", item=sid, status="failed", finished=True)
            raise
    tracker.update("segmentation finished", finished=True)
    meta = dict(result.table.attrs.get("wsi_lab") or {})
    meta["segment"] = {"checkpoint": source, "checkpoint_hash": digest, "classes": classes, "out": str(out)}
    result.table.attrs["wsi_lab"] = meta
    return result


def _segment_one(model: torch.nn.Module, sid: str, rows: pd.DataFrame, path: str, folder: Path, result: SegmentResult,
                 tracker: ProgressTracker, *, downsample: float | None, dev: torch.device, prec: str, batch_size: int,
                 formats: tuple[str, ...], min_area: float, classes: list[str], source: str, digest: str,
                 fr_cols: list[str]) -> None:
    """One slide of :func:`segment_slides`: skip it when its manifest checks out, else predict, write, record."""
    from wsi_lab.io import atomic_write_bytes, encode_image
    from wsi_lab.runs import manifest as mf

    if not Path(path).exists():
        raise DataError.at(path, f"slide {sid!r} of the table is missing")
    dims, downs = _geometry(path)
    tile_ds = float(np.min(rows["read_size"].to_numpy(float) * np.asarray(downs)[rows["level"].to_numpy(int)]
                           / rows["tile_size"].to_numpy(float)))
    ds_out = float(downsample) if downsample is not None else max(tile_ds, max(dims) / MAX_MASK_SIDE)
    st = os.stat(path)
    inputs = _hash(path, st.st_size, st.st_mtime_ns, rows[["x", "y", "level", "read_size", "tile_size"]].to_numpy().tolist())
    params = _hash(digest, ds_out, sorted(formats), min_area)
    done = mf.check_manifest(folder, KIND, inputs_hash=inputs, params_hash=params)
    if done is not None and "fractions" in done:
        result.table.loc[rows.index, fr_cols] = np.asarray(done["fractions"], np.float32)
        result.skipped.append(sid)
        tracker.update(f"{sid}: already segmented", add_done=len(rows), item=sid, status="skipped")
    else:
        tracker.update(f"{sid}: segmenting", item=sid, status="running", current=sid)
        mask, fracs = _predict_slide(model, rows, path, ds_out, downs, dims, dev, prec, batch_size,
                                     lambda n: tracker.update(add_done=n, add={"tiles": n}))
        folder.mkdir(parents=True, exist_ok=True)
        mf.invalidate(folder)
        atomic_write_bytes(folder / "mask.png", encode_image(mask, "png"))
        meta = {"slide_id": sid, "slide_path": path, "dimensions": list(dims), "downsample": ds_out,
                "classes": classes, "checkpoint": source, "checkpoint_hash": digest}
        atomic_write_bytes(folder / "mask.json", json.dumps(meta, indent=1).encode())
        files = ["mask.png", "mask.json"]
        if formats:
            regions = mask_to_annotations(mask, ds_out, classes, min_area)
            if "xml" in formats:
                write_asap(folder / "regions.xml", regions)
                files.append("regions.xml")
            if "geojson" in formats:
                write_geojson_annotations(folder / "regions.geojson", regions)
                files.append("regions.geojson")
        mf.write_manifest(folder, KIND, inputs_hash=inputs, params_hash=params, files=files, slide_id=sid,
                          tiles=len(rows), checkpoint_hash=digest, fractions=fracs.tolist())
        result.table.loc[rows.index, fr_cols] = fracs
        result.done.append(sid)
        tracker.update(f"{sid}: done", item=sid, status="done")
    result.masks[sid] = folder / "mask.png"
    result.regions[sid] = {f: folder / f"regions.{f}" for f in formats}
