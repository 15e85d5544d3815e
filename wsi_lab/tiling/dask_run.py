"""Run tiling over many slides on Dask (a LocalCluster by default, or any Client / scheduler address).

Work is split per slide (plan: mask + grid) and per region chunk (fine pass and/or JPEG writing, only
when pixels must be read). Results are gathered with ``as_completed``; per-slide outputs are written
atomically by the client: ``out/<slide_id>/tiles.parquet`` (+ ``tiles/<x>_<y>.jpg``, ``mask.png``) and
``manifest.json`` last. A slide whose manifest matches its parameters, table hash and tile files is
skipped on re-runs. Tile outputs are keyed by position, so a task retried after a lost worker rewrites
the same files: nothing is lost or duplicated.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.progress import ProgressCallback, ProgressTracker
from wsi_lab.tiling.outputs import (
    MANIFEST,
    TilingResult,
    params_hash,
    remove_partial_outputs,
    slide_id_of,
    slide_outputs_complete,
    write_manifest,
    write_slide_outputs,
)
from wsi_lab.tiling.params import TilingParams

log = logging.getLogger(__name__)

__all__ = ["run_tiling", "start_tiling", "TilingJob", "TilingResult", "MATERIALIZE"]

MATERIALIZE = (None, "jpeg", "tfrecord")


# ----------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------
_SLIDES: "OrderedDict[tuple, Any]" = OrderedDict()
_SLIDES_LOCK = threading.Lock()


def _open(path: str, params: TilingParams):
    """Open (and cache per worker process) a slide, applying ``slide_mpp`` when its metadata has none."""
    from wsi_lab.slide import open_slide

    key = (path, params.backend, params.slide_mpp)
    with _SLIDES_LOCK:
        if key in _SLIDES:
            _SLIDES.move_to_end(key)
            return _SLIDES[key]
    s = open_slide(path, backend=params.backend)
    if s.mpp is None and params.slide_mpp is not None:
        s = open_slide(path, backend=params.backend, mpp=params.slide_mpp)
    with _SLIDES_LOCK:
        _SLIDES[key] = s
        while len(_SLIDES) > 8:
            _SLIDES.popitem(last=False)[1].close()
    return s


def _plan_task(path: str, params_json: str):
    """Plan one slide: returns (table, mask or None, fine-pass modality or None)."""
    from wsi_lab.tiling.grid import plan_tiles
    from wsi_lab.tiling.twostage import resolve_modality
    from wsi_lab.tissue import TissueMask, detect_tissue

    p = TilingParams.from_json(params_json)
    slide = _open(path, p)
    mask = None
    if p.two_stage is None and p.method is not None:
        mask = detect_tissue(slide, p.method, downsample=p.mask_downsample, **p.method_params)
    table = plan_tiles(slide, p.tile_size, p.mpp, p.level, p.overlap, mask, p.min_tissue, p.two_stage,
                       mask_downsample=p.mask_downsample, method_params=p.method_params)
    modality = resolve_modality(slide, table, p.two_stage) if p.two_stage is not None else None
    return table, mask if isinstance(mask, TissueMask) else None, modality


def _chunk_task(path: str, params_json: str, rows: pd.DataFrame, modality: str | None, jpeg_dir: str | None):
    """Read the tiles of one region chunk: fine pass (two-stage) and/or write JPEGs keyed by position.
    Returns (kept rows, number of tiles read, megapixels read)."""
    from wsi_lab.io import save_image
    from wsi_lab.tiling.twostage import apply_fine_pass, read_tile

    p = TilingParams.from_json(params_json)
    slide = _open(path, p)

    def write(row, tile) -> None:
        save_image(tile, Path(jpeg_dir) / f"{int(row['x'])}_{int(row['y'])}.jpg", quality=p.jpeg_quality)

    mp = float((rows["read_size"].astype("float64") ** 2).sum()) / 1e6
    if p.two_stage is not None:
        rows.attrs = {"wsi_lab": {"params": {"min_tissue": p.min_tissue}}}
        kept = apply_fine_pass(slide, rows, p.two_stage, p.two_stage.min_fine_fraction or p.min_tissue, modality,
                               on_tile=write if jpeg_dir else None)
        return kept, len(rows), mp
    for row in rows.itertuples(index=False):
        tile = read_tile(slide, row.x, row.y, row.level, row.read_size, row.tile_size)
        save_image(tile, Path(jpeg_dir) / f"{int(row.x)}_{int(row.y)}.jpg", quality=p.jpeg_quality)
    return rows, len(rows), mp


def _tfrecord_task(table: pd.DataFrame, out_dir: str) -> Any:
    mod = importlib.import_module("wsi_lab.data.export_tfrecord")
    fn = getattr(mod, "write_tfrecords", None) or getattr(mod, "export_tfrecord")
    return fn(table, out_dir)




# ----------------------------------------------------------------------------------------------
# client side
# ----------------------------------------------------------------------------------------------
def _resolve_slides(slides: Any) -> list[Path]:
    from wsi_lab.slide import find_slides

    if isinstance(slides, (str, os.PathLike)) or hasattr(slides, "path"):
        slides = [slides]
    paths: list[Path] = []
    for s in slides:
        p = Path(getattr(s, "path", s))
        if p.is_dir() and not p.name.lower().endswith(".zarr"):
            paths += [Path(i.path) for i in find_slides(p, metadata=False)]
        else:
            paths.append(p)
    return paths


def _make_client(client: Any, n_workers: int | None):
    """(client, things to close): a LocalCluster (one single-threaded worker process per core, dashboard
    on 127.0.0.1) when ``client`` is None, a connection when it is an address, else the given Client."""
    from distributed import Client, LocalCluster

    if client is None:
        n = n_workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.WARNING)
        c = Client(cluster)
        return c, [c, cluster]
    if isinstance(client, str):
        c = Client(client, timeout="20s")
        return c, [c]
    return client, []


def _check_materialize(materialize: str | None) -> None:
    if materialize not in MATERIALIZE:
        raise InvalidParameterError(f"materialize must be None, 'jpeg' or 'tfrecord', got {materialize!r}")
    if materialize == "tfrecord":
        try:
            mod = importlib.import_module("wsi_lab.data.export_tfrecord")
        except ImportError as exc:
            raise InvalidParameterError("materialize='tfrecord' needs wsi_lab.data.export_tfrecord, which this "
                                        "installation lacks; use materialize='jpeg' or None") from exc
        if not (hasattr(mod, "write_tfrecords") or hasattr(mod, "export_tfrecord")):
            raise InvalidParameterError("materialize='tfrecord': wsi_lab.data.export_tfrecord has no write_tfrecords(); "
                                        "update wsi-lab or use materialize='jpeg'")


def run_tiling(slides: Any, params: TilingParams | None = None, client: Any = None, out: str | os.PathLike = "tiles",
               materialize: str | None = None, progress: ProgressCallback | None = None, n_workers: int | None = None,
               *, cancel: threading.Event | None = None, overrides: Mapping[str, TilingParams] | None = None,
               chunk_tiles: int = 256, force: bool = False) -> TilingResult:
    """Tile ``slides`` (paths, Slides, a folder, or a list of them) on Dask and write per-slide outputs
    under ``out`` (see the module docstring). ``client``: None (a LocalCluster of ``n_workers`` processes,
    closed at the end), a ``distributed.Client``, or a scheduler address. ``overrides`` maps slide id to
    its own :class:`TilingParams`. ``cancel`` (a threading.Event) stops the run between tasks; finished
    slides stay written. Slides that fail are reported in ``result.failed`` while the others finish.
    ``progress`` receives :class:`~wsi_lab.runs.ProgressEvent` (slides done, tiles kept, tiles/s, ETA)."""
    from distributed import as_completed

    params = (params or TilingParams()).validate()
    _check_materialize(materialize)
    if not isinstance(chunk_tiles, int) or chunk_tiles < 1:
        raise InvalidParameterError(f"chunk_tiles must be a positive integer, got {chunk_tiles!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = TilingResult(out=out)
    t0 = time.perf_counter()
    todo: dict[str, dict] = {}
    for path in _resolve_slides(slides):
        sid = slide_id_of(path)
        if sid in todo or sid in result.tables:
            result.failed[f"{sid} ({path})"] = f"DataError: another slide in this batch is also named {sid!r}; rename one"
            continue
        p = (overrides or {}).get(sid) or (overrides or {}).get(str(path)) or params
        p.validate()
        try:
            phash = params_hash(p, materialize, path)
        except OSError as exc:
            result.failed[sid] = f"SlideNotFoundError: {path}: {exc.strerror or exc}"
            continue
        sdir = out / sid
        if not force and slide_outputs_complete(sdir, phash):
            import json

            result.skipped.append(sid)
            result.tables[sid] = sdir / "tiles.parquet"
            result.n_tiles[sid] = int(json.loads((sdir / "manifest.json").read_text())["n_tiles"])
            continue
        todo[sid] = {"path": path, "params": p, "pjson": p.to_json(), "phash": phash, "sdir": sdir, "futures": set(),
                     "kept": [], "chunks": 0, "chunks_done": 0, "progress": 0.0, "plan": None}
    total = len(todo) + len(result.skipped) + len(result.failed)
    tracker = ProgressTracker(total, progress)
    finished = len(result.skipped) + len(result.failed)
    if not todo:
        result.elapsed_s = time.perf_counter() - t0
        tracker.update(f"nothing to do: {len(result.skipped)} complete, {len(result.failed)} failed", done=finished,
                       tiles=result.total_tiles, skipped=len(result.skipped), failed=len(result.failed), finished=True)
        return result

    dask_client, to_close = _make_client(client, n_workers)
    result.dashboard_link = tracker.dashboard = getattr(dask_client, "dashboard_link", None)
    log.info("Dask dashboard: %s", result.dashboard_link)
    tracker.update(f"Dask dashboard: {result.dashboard_link}", done=finished, skipped=len(result.skipped),
                   failed=len(result.failed))
    owner: dict[Any, tuple[str, str]] = {}
    run = uuid.uuid4().hex[:8]

    def submit(sid: str, kind: str, fn, *args):
        fut = dask_client.submit(fn, *args, key=f"wsi-{kind}-{sid}-{run}-{len(owner)}", retries=1)
        owner[fut] = (sid, kind)
        todo[sid]["futures"].add(fut)
        ac.add(fut)

    def fraction() -> float:
        return (finished + sum(st["progress"] for st in todo.values() if not st.get("closed"))) / max(total, 1)

    def close(sid: str, message: str, add_tiles: int = 0) -> None:
        nonlocal finished
        st = todo[sid]
        st["closed"] = True
        pending = [f for f in st["futures"] if not f.done()]
        if pending:
            dask_client.cancel(pending)
        finished += 1
        tracker.update(message, done=finished, failed=len(result.failed), fraction=fraction(), current=sid,
                       add_tiles=add_tiles)

    def finalize(sid: str, table: pd.DataFrame) -> None:
        st = todo[sid]
        table.attrs = st["plan"].attrs.copy()
        if st["params"].two_stage is not None:
            table.attrs["wsi_lab"] = {**table.attrs["wsi_lab"], "stage": "fine", "fine_modality": st["modality"]}
        table = write_slide_outputs(st["sdir"], table, st["mask"], st["params"], materialize, st["phash"], st["path"],
                                    {"tiles_read": st.get("read", 0)}, manifest=materialize != "tfrecord")
        st["table"] = table
        if materialize == "tfrecord":
            submit(sid, "tfrecord", _tfrecord_task, table, str(st["sdir"] / "tfrecords"))
            return
        done_slide(sid)

    def done_slide(sid: str) -> None:
        st = todo[sid]
        result.tables[sid] = st["sdir"] / "tiles.parquet"
        result.n_tiles[sid] = len(st["table"])
        close(sid, f"{sid}: {len(st['table'])} tiles", add_tiles=len(st["table"]) if not st["chunks"] else 0)

    def handle(fut) -> None:
        sid, kind = owner.pop(fut)
        st = todo[sid]
        st["futures"].discard(fut)
        if st.get("closed") or fut.status == "cancelled":
            return
        if fut.status == "error":
            exc = fut.exception()
            result.failed[sid] = f"{type(exc).__name__}: {exc}"
            log.warning("%s failed: %s", sid, result.failed[sid])
            close(sid, f"{sid} FAILED: {result.failed[sid]}")
            return
        res = fut.result()
        if kind == "plan":
            table, st["mask"], st["modality"] = res
            st["plan"] = table
            st["progress"] = 0.1
            if len(table) and (st["params"].two_stage is not None or materialize == "jpeg"):
                if materialize == "jpeg":
                    (st["sdir"] / "tiles").mkdir(parents=True, exist_ok=True)
                jdir = str(st["sdir"] / "tiles") if materialize == "jpeg" else None
                rows = table.copy()
                rows.attrs = {}
                starts = range(0, len(rows), chunk_tiles)
                st["chunks"] = len(starts)
                for i in starts:
                    submit(sid, "chunk", _chunk_task, str(st["path"]), st["pjson"], rows.iloc[i:i + chunk_tiles],
                           st["modality"], jdir)
                tracker.update(f"{sid}: {len(table)} candidate tiles, {st['chunks']} chunks", current=sid,
                               fraction=fraction())
            else:
                finalize(sid, table.copy())
        elif kind == "chunk":
            kept, n_read, mp = res
            st["kept"].append(kept)
            st["read"] = st.get("read", 0) + n_read
            result.tiles_read += n_read
            result.megapixels_read += mp
            st["chunks_done"] += 1
            st["progress"] = 0.1 + 0.9 * st["chunks_done"] / st["chunks"]
            tracker.update(add_tiles=len(kept), current=sid, fraction=fraction())
            if st["chunks_done"] == st["chunks"]:
                finalize(sid, pd.concat(st["kept"], ignore_index=True))
        elif kind == "tfrecord":
            write_manifest(st["sdir"], len(st["table"]), st["params"], materialize, st["phash"], st["path"], sid,
                           {"tfrecord": res if isinstance(res, (dict, list, str)) else None})
            done_slide(sid)

    ac = as_completed([])
    try:
        for sid, st in todo.items():
            (st["sdir"] / MANIFEST).unlink(missing_ok=True)  # its outputs change now: not complete until rewritten
            submit(sid, "plan", _plan_task, str(st["path"]), st["pjson"])
            tracker.update(current=sid)
        while True:
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                dask_client.cancel(list(owner))
                tracker.update("cancelled; finished slides are kept", done=finished)
                break
            batch = ac.next_batch(block=False)
            if not batch:
                if ac.is_empty():
                    break
                time.sleep(0.02)
                continue
            for fut in batch:
                if fut in owner:
                    handle(fut)
    finally:
        for thing in to_close:
            thing.close()
        # slides cancelled or failed mid-way leave no partial outputs (a task still running on an external
        # cluster may add a file after this; it has no manifest and the next run removes it)
        for sid, st in todo.items():
            if sid not in result.tables:
                remove_partial_outputs(st["sdir"])
    result.elapsed_s = time.perf_counter() - t0
    tracker.update(f"finished: {result.total_tiles} tiles, {len(result.failed)} failed" +
                   (" (cancelled)" if result.cancelled else ""), done=finished, failed=len(result.failed),
                   skipped=len(result.skipped), finished=True)
    return result


class TilingJob:
    """A :func:`run_tiling` running in a background thread (for UIs): ``cancel()``, ``done()``,
    ``result(timeout)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cancel = kwargs.pop("cancel", None) or threading.Event()
        self._result: TilingResult | None = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._result = run_tiling(*args, cancel=self._cancel, **kwargs)
            except BaseException as exc:  # re-raised by result()
                self._error = exc

        self._thread = threading.Thread(target=target, name="wsi-lab-tiling", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> TilingResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the tiling run is still going")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def start_tiling(slides: Any, params: TilingParams | None = None, **kwargs: Any) -> TilingJob:
    """Start :func:`run_tiling` in a background thread and return its :class:`TilingJob` handle."""
    return TilingJob(slides, params, **kwargs)
