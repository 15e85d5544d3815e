"""``predict``: a model (or checkpoint) over a TileTable, one slide at a time, reading the tiles from
the slides. With ``out=`` every slide's predictions land in ``out/<slide_id>/predictions.parquet``
under a ``predict`` manifest (inputs: the slide file and its rows; parameters: the checkpoint hash),
so a re-run skips complete slides. With ``client=`` (``"local"``, a scheduler address or a Client)
slides fan out one Dask task each; a slide that fails is reported (``PredictResult.failures``, the
table's ``attrs["wsi_lab"]["predict"]["failed"]``) while the others finish."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.runs.job import Failure
from wsi_lab.runs.progress import ItemStatus, ProgressCallback, ProgressTracker

log = logging.getLogger(__name__)

__all__ = ["predict", "predict_slides", "PredictResult", "write_predictions", "read_predictions", "KIND", "PRED_FILE"]

KIND = "predict"
PRED_FILE = "predictions.parquet"
_GEOM = ("x", "y", "level", "read_size", "tile_size")


@dataclass
class PredictResult:
    """What a prediction run gives back: the table of every slide that finished, and per-slide status."""

    table: pd.DataFrame
    failures: list[Failure] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    checkpoint_hash: str = ""
    exceptions: list[BaseException] = field(default_factory=list, repr=False)  # in-process runs: the errors

    @property
    def failed(self) -> dict[str, str]:
        """``{slide_id: "Type: message"}`` of the slides that failed."""
        return {f.item: f"{f.error_type}: {f.message}" for f in self.failures}


def _inputs_hash(rows: pd.DataFrame, slide_path: str) -> str:
    h = hashlib.sha256(str(slide_path).encode())
    try:
        st = os.stat(slide_path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    except OSError:
        h.update(b"missing")
    for c in _GEOM:
        h.update(np.ascontiguousarray(rows[c].to_numpy(np.int64)).tobytes())
    return h.hexdigest()


def _params_hash(checkpoint_hash: str, features: str | os.PathLike | None, recon: bool = True) -> str:
    return hashlib.sha256(json.dumps([checkpoint_hash, None if features is None else str(features), recon]).encode()
                          ).hexdigest()


_MODELS: dict[str, Any] = {}  # per worker process: checkpoint path -> LoadedModel


def _worker_model(model_ref: Any, device: Any):
    from wsi_lab.infer._engine import LoadedModel, load_model

    if isinstance(model_ref, LoadedModel):  # in-process: already loaded (and moved to the device)
        return model_ref
    if isinstance(model_ref, (str, os.PathLike)):
        key = f"{model_ref}|{device}"
        if key not in _MODELS:
            _MODELS.clear()  # one model per worker at a time
            _MODELS[key] = load_model(model_ref, device)
        return _MODELS[key]
    return load_model(model_ref, device)


def _meta(lm_info: dict[str, Any]) -> dict[str, Any]:
    return {"predict": {k: lm_info[k] for k in ("checkpoint", "checkpoint_hash", "kind", "classes")}}


def _slide_task(model_ref: Any, rows: pd.DataFrame, slide_path: str, folder: str | None, opts: dict[str, Any],
                on_batch: Any = None) -> dict[str, Any]:
    """Predict one slide (in-process or on a Dask worker). Returns ``{"status", "columns" | "error_type",
    "message"}``; errors come back as values so one bad slide neither retries nor stops the others."""
    from wsi_lab.runs import manifest as mf

    sid = str(rows["slide_id"].iloc[0])
    try:
        from wsi_lab.infer._engine import resolve_device, run_rows

        device, precision = resolve_device(opts.get("device"), opts.get("precision", "auto"))
        lm = _worker_model(model_ref, device)
        inputs, params = _inputs_hash(rows, slide_path), _params_hash(lm.checkpoint_hash, opts.get("features"),
                                                                     bool(opts.get("recon_error", True)))
        info = {"checkpoint": lm.source, "checkpoint_hash": lm.checkpoint_hash, "kind": lm.kind, "classes": lm.classes}
        if folder is not None:
            done = mf.check_manifest(folder, KIND, inputs_hash=inputs, params_hash=params)
            if done is not None:
                saved = read_predictions(Path(folder) / PRED_FILE)
                if len(saved) == len(rows):
                    new = [c for c in saved.columns if c not in rows.columns]
                    return {"status": "skipped", "columns": saved[new].set_axis(rows.index), "info": info}
        cols = run_rows(lm, rows, slide_path, batch_size=int(opts.get("batch_size", 64)),
                        num_workers=int(opts.get("num_workers", 0)), device=device, precision=precision,
                        backend=opts.get("backend", "auto"), features=opts.get("features"), on_batch=on_batch,
                        recon_error=bool(opts.get("recon_error", True)))
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            mf.invalidate(folder)
            frame = rows.join(cols)
            frame.attrs = {"wsi_lab": {"slides": {sid: {"path": slide_path}}}}
            write_predictions(frame, Path(folder) / PRED_FILE, _meta(info)["predict"])
            mf.write_manifest(folder, KIND, inputs_hash=inputs, params_hash=params, files=[PRED_FILE],
                              slide_id=sid, tiles=len(rows), checkpoint_hash=lm.checkpoint_hash)
        return {"status": "done", "columns": cols, "info": info}
    except Exception as exc:  # noqa: BLE001 - reported per slide; the other slides go on
        log.warning("slide %s failed: %s: %s", sid, type(exc).__name__, exc)
        res: dict[str, Any] = {"status": "failed", "error_type": type(exc).__name__, "message": str(exc)}
        if opts.get("keep_exception"):  # in-process only: Dask results stay plain values
            res["exception"] = exc
        return res


def _slide_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(str(s), g) for s, g in table.groupby("slide_id", sort=False)]


def predict_slides(model_or_checkpoint: Any, table: pd.DataFrame, *, out: str | os.PathLike | None = None,
                   batch_size: int = 64, num_workers: int = 0, device: str | None = None, precision: str = "auto",
                   features: str | os.PathLike | None = None, client: Any = None, n_workers: int | None = None,
                   backend: str = "auto", slide_paths: dict[str, str] | None = None, label_column: str = "label",
                   recon_error: bool = True, progress: ProgressCallback | None = None,
                   source: str | None = None) -> PredictResult:
    """Run the model over every slide of ``table`` (see the module docstring); a :class:`PredictResult`.

    ``client``: None runs the slides here one after the other; ``"local"`` starts a LocalCluster of
    ``n_workers`` processes; a scheduler address or a ``distributed.Client`` uses that cluster.
    ``device`` None picks CUDA when present; ``precision`` ``auto`` is bf16/fp16 autocast on a GPU, fp32
    on the CPU. ``recon_error=False`` skips a VAE's decoder (latents only). ``source`` names the table
    in errors (e.g. its file). Raises before any work for an empty table, a tile size or class names
    the model does not match, or an unknown slide path."""
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.infer._engine import check_table, load_model, resolve_device

    if batch_size < 1:
        raise InvalidParameterError(f"batch_size must be >= 1, got {batch_size!r}")
    source = source or "table"
    dev, prec = resolve_device(device, precision)  # refuses fp16 on the CPU before anything runs
    lm = load_model(model_or_checkpoint, "cpu" if client is not None else dev)
    check_table(lm, table, source, label_column)
    if lm.kind == "mil" and features is None:
        raise InvalidParameterError(f"{lm.source}: an attention-MIL model predicts from tile features: pass "
                                    "features=<folder of the features job's .npz files>")
    paths = slide_paths_of(table, slide_paths)
    original_index, attrs = table.index, dict(table.attrs)
    table = table.reset_index(drop=True)  # positions: safe with any index (duplicates included)
    table.attrs = attrs
    groups = _slide_groups(table)
    opts = {"batch_size": batch_size, "num_workers": num_workers, "device": device, "precision": prec if client is None
            else precision, "features": None if features is None else str(features), "backend": backend,
            "recon_error": recon_error}
    folder_of = (lambda sid: str(Path(out) / sid)) if out is not None else (lambda sid: None)
    tracker = ProgressTracker(len(table), progress, unit="tiles", items=[s for s, _ in groups], rates=("tiles",))
    results: dict[str, dict[str, Any]] = {}

    def finish(sid: str, res: dict[str, Any], n: int, count_tiles: bool) -> None:
        results[sid] = res
        status = {"done": ItemStatus.DONE, "skipped": ItemStatus.SKIPPED}.get(res["status"], ItemStatus.FAILED)
        msg = f"{sid} {res['status']}" + (f": {res['error_type']}: {res['message']}" if status == ItemStatus.FAILED else "")
        tracker.update(msg, add_done=n if count_tiles else 0, add={"tiles": n} if count_tiles else None,
                       item=sid, status=status)

    if client is None:
        model_ref: Any = lm
        opts["keep_exception"] = True
        for sid, rows in groups:
            tracker.update(f"{sid} running", item=sid, status=ItemStatus.RUNNING, current=sid)
            before = tracker.done

            def on_batch(n: int) -> None:
                tracker.update(add_done=n, add={"tiles": n})

            res = _slide_task(model_ref, rows, paths[sid], folder_of(sid), opts, on_batch)
            finish(sid, res, len(rows) - (tracker.done - before), True)
    else:
        from wsi_lab.runs.executors import dask_client

        model_ref = lm.path if lm.path is not None else lm.model
        with dask_client(None if client == "local" else client, n_workers) as c:
            from distributed import as_completed

            tracker.dashboard = getattr(c, "dashboard_link", None)
            futures = {}
            for sid, rows in groups:
                # the key names the work (slide file + rows, checkpoint, output): a shared cluster never
                # hands back another call's result for other rows
                work = f"{_inputs_hash(rows, paths[sid])}|{lm.checkpoint_hash}|{out}|{sorted(opts.items())}"
                key = "predict-" + hashlib.sha256(work.encode()).hexdigest()[:24]
                futures[c.submit(_slide_task, model_ref, rows, paths[sid], folder_of(sid), opts, key=key,
                                 pure=False)] = (sid, len(rows))
            for fut in as_completed(futures):
                sid, n = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker lost for good: that slide fails, the rest go on
                    res = {"status": "failed", "error_type": type(exc).__name__, "message": str(exc)}
                finish(sid, res, n, True)
    result = _assemble(table, groups, results, lm, tracker)
    result.table.index = original_index[result.table.index.to_numpy()]
    return result


def _assemble(table: pd.DataFrame, groups, results, lm, tracker: ProgressTracker) -> PredictResult:
    failures: list[Failure] = []
    done: list[str] = []
    skipped: list[str] = []
    parts: list[pd.DataFrame] = []
    first_exc: list[BaseException] = []
    for sid, rows in groups:
        res = results[sid]
        if res["status"] == "failed":
            failures.append(Failure(sid, res["error_type"], res["message"]))
            if "exception" in res:
                first_exc.append(res["exception"])
            continue
        (done if res["status"] == "done" else skipped).append(sid)
        parts.append(rows.join(res["columns"]))
    if parts:
        out = pd.concat(parts).sort_index() if len(parts) > 1 else parts[0]
    else:
        out = table.iloc[:0].copy()
    meta = dict(table.attrs.get("wsi_lab") or {})
    meta["predict"] = {"checkpoint": lm.source, "checkpoint_hash": lm.checkpoint_hash, "kind": lm.kind,
                       "classes": lm.classes, "failed": {f.item: f"{f.error_type}: {f.message}" for f in failures}}
    out.attrs = {"wsi_lab": meta}
    tracker.update(f"{len(done)} predicted, {len(skipped)} skipped, {len(failures)} failed", finished=True)
    result = PredictResult(out, failures, done, skipped, lm.checkpoint_hash)
    result.exceptions = first_exc
    return result


def predict(model_or_checkpoint: Any, table: pd.DataFrame, **options: Any) -> pd.DataFrame:
    """The TileTable with prediction columns added: ``prob_<class>`` and ``pred`` (classifier),
    ``z_00..z_NN`` and ``recon_error`` (VAE), ``attention`` plus ``slide_prob_<class>``/``slide_pred``
    (MIL). Options as :func:`predict_slides`. Slides that failed are left out of the table and named
    in ``attrs["wsi_lab"]["predict"]["failed"]``; when every slide fails the first error is raised."""
    result = predict_slides(model_or_checkpoint, table, **options)
    if result.failures and not result.done and not result.skipped:
        f = result.failures[0]
        if result.exceptions and len(result.failures) == 1:
            raise result.exceptions[0]
        raise DataError(f"prediction failed for every slide ({len(result.failures)}); {f.item}: {f.error_type}: "
                        f"{f.message}")
    return result.table


def write_predictions(table: pd.DataFrame, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """Write predictions as Parquet (metadata in the schema: checkpoint hash, kind, class names) or as
    CSV (``.csv``; the same metadata in ``<path>.json`` beside it). Atomic."""
    from wsi_lab.data.table import _jsonable, write_table
    from wsi_lab.io import atomic_write_bytes

    p = Path(path)
    meta = dict(table.attrs.get("wsi_lab") or {})
    if info:
        meta["predict"] = {**meta.get("predict", {}), **info}
    if p.suffix.lower() == ".csv":
        atomic_write_bytes(p, table.to_csv(index=False).encode())
        atomic_write_bytes(p.with_name(p.name + ".json"), json.dumps(_jsonable(meta), indent=1).encode())
        return p
    return write_table(table, p, meta)


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """A predictions table written by :func:`write_predictions` (Parquet, or CSV with its ``.json``)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise DataError(f"{p}: no such predictions file")
        table = pd.read_csv(p)
        side = p.with_name(p.name + ".json")
        table.attrs["wsi_lab"] = json.loads(side.read_text()) if side.is_file() else {}
        return table
    from wsi_lab.data.table import read_table

    return read_table(p)
