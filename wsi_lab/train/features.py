"""Feature extraction: one ``<out>/<slide_id>.npz`` per slide with the tile features, the tile
coordinates (level-0 ``x, y`` plus ``level``, ``read_size``, ``tile_size``) and a JSON ``metadata``
record (backbone, weights SHA-256, input size, normalisation, pooling, encoder and tile µm/px, slide
path, a hash of the slide's rows). Batched; resumable per slide (a file whose metadata matches is
skipped); slides are shared out over the processes of a torchrun launch (one per GPU)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["extract_features", "read_features", "feature_path", "COORD_COLUMNS", "FEATURES_FORMAT"]

COORD_COLUMNS = ("x", "y", "level", "read_size", "tile_size")
FEATURES_FORMAT = "wsi_lab.features/1"


def feature_path(folder: str | os.PathLike, slide_id: str) -> Path:
    return Path(folder) / f"{slide_id}.npz"


def read_features(folder: str | os.PathLike, slide_id: str) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """``(features (N, D) float32, coordinates DataFrame, metadata)`` of one slide's feature file."""
    p = feature_path(folder, slide_id)
    if not p.is_file():
        raise DataError(f"{p}: no feature file for slide {slide_id!r}; run a features job over this table first")
    try:
        with np.load(p, allow_pickle=False) as z:
            feats = z["features"]
            coords = pd.DataFrame({c: z[c] for c in COORD_COLUMNS})
            meta = json.loads(str(z["metadata"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{p}: not a readable feature file ({type(exc).__name__}: {exc})") from exc
    return feats, coords, meta


def _rows_hash(rows: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for c in COORD_COLUMNS:
        h.update(np.ascontiguousarray(rows[c].to_numpy(np.int64)).tobytes())
    return h.hexdigest()[:16]


def _is_complete(path: Path, expected: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"]))
    except (OSError, KeyError, ValueError):
        log.warning("%s: unreadable; extracting again", path)
        return False
    return all(meta.get(k) == v for k, v in expected.items())


def _write(path: Path, feats: np.ndarray, rows: pd.DataFrame, meta: dict[str, Any]) -> None:
    arrays: dict[str, Any] = {c: rows[c].to_numpy(np.int64) for c in COORD_COLUMNS}
    arrays.update(features=feats.astype(np.float32), metadata=np.array(json.dumps(meta)))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def extract_features(spec, ctx) -> dict[str, Any]:
    """Run the spec's encoder (``model``: a registry name such as ``h-optimus-0`` or ``timm:<name>``, with
    ``weights``/``sha256`` and architecture overrides) over every tile of every slide of the table."""
    from wsi_lab.data.dataset import TileDataset
    from wsi_lab.models.encoders import build_encoder
    from wsi_lab.train.data import check_slides, load_job_table
    from wsi_lab.train.dist import autocast
    from wsi_lab.train.loop import emit_metric, emit_progress

    table = load_job_table(spec.table)
    if len(table) == 0:
        raise DataError(f"{spec.table}: the TileTable has no tiles")
    paths = check_slides(table)
    opts = {k: v for k, v in spec.model_options.items() if k not in ("weights", "sha256")}
    torch.manual_seed(spec.seed)
    encoder = build_encoder(spec.model_name, weights=spec.model.get("weights"), sha256=spec.model.get("sha256"),
                            **opts).to(ctx.device).eval()
    info = encoder.info
    sizes = sorted(pd.unique(table["tile_size"]).tolist())
    if sizes != [info.input_size]:
        raise InvalidParameterError(f"the table's tile_size {sizes} differs from encoder {info.name!r}'s input size "
                                    f"{info.input_size}; re-tile at {info.input_size} px"
                                    + (f" and {info.mpp} µm/px" if info.mpp else ""))
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    slide_ids = sorted(paths)
    mine = slide_ids[ctx.rank::ctx.world_size]
    done = skipped = 0
    for sid in mine:
        rows = table[table["slide_id"].astype(str) == sid].reset_index(drop=True)
        rows.attrs = table.attrs
        tile_mpp = float(rows["mpp"].iloc[0]) if "mpp" in rows.columns and pd.notna(rows["mpp"].iloc[0]) else None
        if tile_mpp and info.mpp and abs(tile_mpp / info.mpp - 1) > 0.1:
            log.warning("slide %s: tiles are at %.3g µm/px but %s was trained at %.3g µm/px", sid, tile_mpp,
                        info.name, info.mpp)
        meta = {"format": FEATURES_FORMAT, **encoder.metadata(), "slide_id": sid, "slide_path": paths[sid],
                "tiles": len(rows), "rows_sha": _rows_hash(rows), "tile_mpp": tile_mpp}
        target = feature_path(out, sid)
        if _is_complete(target, {k: meta[k] for k in ("format", "backbone", "arch", "weights_sha256", "input_size",
                                                      "pooling", "dim", "tiles", "rows_sha")}):
            skipped += 1
            print(f"slide {sid}: complete, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(TileDataset(rows), batch_size=spec.batch_size,
                                             num_workers=spec.num_workers)
        chunks = []
        with torch.no_grad():
            for images, _ in loader:
                with autocast(ctx, spec.precision):
                    chunks.append(encoder(images.to(ctx.device)).float().cpu().numpy())
        feats = np.concatenate(chunks) if chunks else np.zeros((0, info.dim), np.float32)
        dt = time.perf_counter() - t0
        _write(target, feats, rows, meta)
        done += 1
        rec = {"slide_id": sid, "split": "features", "tiles": len(rows), "tiles_per_s": len(rows) / dt if dt else 0.0}
        emit_metric(rec)
        if ctx.is_main:
            emit_progress(done + skipped, len(mine), "slides", f"slide {sid}: {len(rows)} tiles -> {target.name}",
                          {"tiles_per_s": rec["tiles_per_s"]})
    counts = ctx.all_sum([float(done), float(skipped)])
    return {"slides_written": int(counts[0]), "slides_skipped": int(counts[1]), "out": str(out)}
