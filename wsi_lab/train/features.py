"""Feature extraction: one ``<out>/<slide_id>.npz`` per slide with the tile features, the tile
coordinates (level-0 ``x, y`` plus ``level``, ``read_size``, ``tile_size``) and a JSON ``metadata``
record (backbone, weights SHA-256, input size, normalisation, pooling, encoder and tile µm/px, slide
path, a hash of the slide's rows). Batched (batch reads: each source tile decoded once); resumable per
slide (a file whose metadata matches is skipped); slides are shared out over the processes of a
torchrun launch (one per GPU), or fanned out as one Dask task per slide (:func:`extract_features_dask`,
or ``data: {"dask": "local" | address}`` in the spec): workers build the encoder once per process,
and a slide that fails is a :class:`~wsi_lab.runs.Failure` (returned as a value, never retried) while
the others finish."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["extract_features", "extract_features_dask", "FeaturesResult", "read_features", "feature_path",
           "COORD_COLUMNS", "FEATURES_FORMAT"]

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


_COMPLETE_KEYS = ("format", "backbone", "arch", "weights_sha256", "input_size", "pooling", "dim", "tiles", "rows_sha")


def _build_encoder(spec, device):
    from wsi_lab.models.encoders import build_encoder

    opts = {k: v for k, v in spec.model_options.items() if k not in ("weights", "sha256")}
    torch.manual_seed(spec.seed)
    return build_encoder(spec.model_name, weights=spec.model.get("weights"), sha256=spec.model.get("sha256"),
                         **opts).to(device).eval()


def _check_sizes(table: pd.DataFrame, info) -> None:
    sizes = sorted(pd.unique(table["tile_size"]).tolist())
    if sizes != [info.input_size]:
        raise InvalidParameterError(f"the table's tile_size {sizes} differs from encoder {info.name!r}'s input size "
                                    f"{info.input_size}; re-tile at {info.input_size} px"
                                    + (f" and {info.mpp} µm/px" if info.mpp else ""))


def _slide_features(spec, ctx, encoder, rows: pd.DataFrame, sid: str, slide_path: str, out: Path
                    ) -> tuple[str, dict[str, Any]]:
    """Extract (or skip, when complete) one slide's feature file: ``("done" | "skipped", record)``."""
    from wsi_lab.data.dataset import TileDataset, collate_tiles
    from wsi_lab.train.dist import autocast

    info = encoder.info
    tile_mpp = float(rows["mpp"].iloc[0]) if "mpp" in rows.columns and pd.notna(rows["mpp"].iloc[0]) else None
    if tile_mpp and info.mpp and abs(tile_mpp / info.mpp - 1) > 0.1:
        log.warning("slide %s: tiles are at %.3g µm/px but %s was trained at %.3g µm/px", sid, tile_mpp,
                    info.name, info.mpp)
    meta = {"format": FEATURES_FORMAT, **encoder.metadata(), "slide_id": sid, "slide_path": slide_path,
            "tiles": len(rows), "rows_sha": _rows_hash(rows), "tile_mpp": tile_mpp}
    target = feature_path(out, sid)
    if _is_complete(target, {k: meta[k] for k in _COMPLETE_KEYS}):
        return "skipped", {"slide_id": sid, "tiles": len(rows), "path": str(target)}
    t0 = time.perf_counter()
    ds = TileDataset(rows, slide_paths={sid: slide_path})
    # in table order (the feature rows must match the coordinates); each batch decodes its source tiles once
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        ds, batch_size=spec.batch_size, num_workers=spec.num_workers, collate_fn=collate_tiles)
    chunks = []
    try:
        with torch.no_grad():
            for images, _ in loader:
                with autocast(ctx, spec.precision):
                    chunks.append(encoder(images.to(ctx.device)).float().cpu().numpy())
    finally:
        ds.close()
    feats = np.concatenate(chunks) if chunks else np.zeros((0, info.dim), np.float32)
    dt = time.perf_counter() - t0
    _write(target, feats, rows, meta)
    return "done", {"slide_id": sid, "split": "features", "tiles": len(rows),
                    "tiles_per_s": len(rows) / dt if dt else 0.0, "path": str(target)}


def _slide_rows(table: pd.DataFrame, sid: str) -> pd.DataFrame:
    rows = table[table["slide_id"].astype(str) == sid].reset_index(drop=True)
    rows.attrs = table.attrs
    return rows


def extract_features(spec, ctx) -> dict[str, Any]:
    """Run the spec's encoder (``model``: a registry name such as ``h-optimus-0`` or ``timm:<name>``, with
    ``weights``/``sha256`` and architecture overrides) over every tile of every slide of the table.
    With ``data: {"dask": ...}`` the slides go out as Dask tasks (:func:`extract_features_dask`)."""
    from wsi_lab.train.data import check_slides, load_job_table
    from wsi_lab.train.loop import emit_metric, emit_progress

    if spec.data.get("dask"):
        res = extract_features_dask(spec, client=None if spec.data["dask"] == "local" else spec.data["dask"],
                                    n_workers=spec.data.get("n_workers"))
        for f in res.failures:
            print(f"slide {f.item}: failed: {f.error_type}: {f.message}", flush=True)
        if res.failures and not (res.done or res.skipped):
            raise DataError(f"feature extraction failed for every slide ({len(res.failures)}); first: "
                            f"{res.failures[0].item}: {res.failures[0].error_type}: {res.failures[0].message}")
        return res.summary()
    table = load_job_table(spec.table)
    if len(table) == 0:
        raise DataError(f"{spec.table}: the TileTable has no tiles")
    paths = check_slides(table)
    encoder = _build_encoder(spec, ctx.device)
    _check_sizes(table, encoder.info)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    slide_ids = sorted(paths)
    mine = slide_ids[ctx.rank::ctx.world_size]
    done = skipped = 0
    for sid in mine:
        state, rec = _slide_features(spec, ctx, encoder, _slide_rows(table, sid), sid, paths[sid], out)
        if state == "skipped":
            skipped += 1
            print(f"slide {sid}: complete, skipped", flush=True)
            continue
        done += 1
        rec.pop("path", None)
        emit_metric(rec)
        if ctx.is_main:
            emit_progress(done + skipped, len(mine), "slides", f"slide {sid}: {rec['tiles']} tiles -> "
                          f"{feature_path(out, sid).name}", {"tiles_per_s": rec["tiles_per_s"]})
    counts = ctx.all_sum([float(done), float(skipped)])
    return {"slides_written": int(counts[0]), "slides_skipped": int(counts[1]), "out": str(out)}


# -- Dask fan-out ------------------------------------------------------------------------------
@dataclass
class FeaturesResult:
    """What a fanned-out features run did: slide ids ``done`` (written) and ``skipped`` (complete
    already), ``failures`` (one :class:`~wsi_lab.runs.Failure` per slide that failed), per-slide records."""

    out: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"slides_written": len(self.done), "slides_skipped": len(self.skipped),
                "slides_failed": len(self.failures), "out": self.out,
                "failed": {f.item: f"{f.error_type}: {f.message}" for f in self.failures}}


_WORKER_ENCODERS: dict[str, Any] = {}  # one encoder per worker process and model spec


def _features_task(spec_json: str, sid: str, slide_path: str, rows: pd.DataFrame) -> dict[str, Any]:
    """Dask task: one slide's feature file. Errors come back as values (never retried, never lost)."""
    from wsi_lab.errors import WSILabError
    from wsi_lab.train.dist import setup_context
    from wsi_lab.train.spec import JobSpec

    try:
        spec = JobSpec.from_json(spec_json)
        ctx = setup_context("local", spec.device)
        key = json.dumps([spec.model, spec.seed, str(ctx.device)], sort_keys=True)
        encoder = _WORKER_ENCODERS.get(key)
        if encoder is None:
            torch.set_num_threads(1)  # one single-threaded Dask worker per core
            encoder = _WORKER_ENCODERS[key] = _build_encoder(spec, ctx.device)
        _check_sizes(rows, encoder.info)
        if not Path(slide_path).exists():
            raise DataError(f"slide {sid!r}: {slide_path} is missing")
        state, rec = _slide_features(spec.replace(num_workers=0), ctx, encoder, rows, sid, slide_path,
                                     Path(spec.out))
        return {"slide_id": sid, "state": state, "record": rec}
    except (WSILabError, OSError, ValueError, RuntimeError) as exc:
        return {"slide_id": sid, "state": "failed", "error_type": type(exc).__name__, "message": str(exc)}


def extract_features_dask(spec, client: Any = None, n_workers: int | None = None, progress: Any = None
                          ) -> FeaturesResult:
    """Feature files for every slide of ``spec.table``, one Dask task per slide (``client``: None for a
    LocalCluster of ``n_workers`` processes, a scheduler address or a Client). Complete slides are
    skipped (in the worker, by their file's metadata); a failing slide is a ``Failure`` in the result
    while the others finish. ``progress`` receives :class:`~wsi_lab.runs.ProgressEvent` (unit ``slides``)."""
    from distributed import as_completed

    from wsi_lab.runs.executors import dask_client
    from wsi_lab.runs.job import Failure
    from wsi_lab.runs.progress import ProgressTracker
    from wsi_lab.train.data import load_job_table
    from wsi_lab.train.loop import emit_metric

    table = load_job_table(spec.table)
    if len(table) == 0:
        raise DataError(f"{spec.table}: the TileTable has no tiles")
    from wsi_lab.data.tile_reader import slide_paths_of

    paths = slide_paths_of(table)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    result = FeaturesResult(str(out))
    sids = sorted(paths)
    tracker = ProgressTracker(len(sids), progress, unit="slides", items=sids, rates=("tiles",))
    spec_json = spec.to_json()
    with dask_client(client, n_workers) as c:
        futures = []
        for sid in sids:
            digest = hashlib.sha256(f"{spec.hash()}:{paths[sid]}".encode()).hexdigest()[:16]
            futures.append(c.submit(_features_task, spec_json, sid, paths[sid], _slide_rows(table, sid),
                                    key=f"wsi-features-{sid}-{digest}", retries=0, pure=False))
        for fut in as_completed(futures):
            res = fut.result()
            sid = res["slide_id"]
            tiles = 0
            if res["state"] == "failed":
                result.failures.append(Failure(sid, res["error_type"], res["message"]))
                log.warning("slide %s: features failed: %s: %s", sid, res["error_type"], res["message"])
            elif res["state"] == "skipped":
                result.skipped.append(sid)
            else:
                result.done.append(sid)
                rec = {k: v for k, v in res["record"].items() if k != "path"}
                result.records.append(rec)
                tiles = int(rec["tiles"])
                emit_metric(rec)
            tracker.update(f"slide {sid}: {res['state']}", add_done=1, add={"tiles": tiles}, item=sid,
                           status=res["state"], current=sid)
    tracker.update("features done", finished=True)
    return result
