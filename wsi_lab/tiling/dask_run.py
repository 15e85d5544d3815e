"""Run tiling over many slides on Dask: a composition of the run layer (:mod:`wsi_lab.runs`: executor,
progress, manifests, Job) and tiling's task functions (:mod:`wsi_lab.tiling.tasks`).

Work is split per slide (plan: mask + grid) and per region chunk (fine pass and/or JPEG writing, only
when pixels must be read). Results are gathered with ``as_completed``; per-slide outputs are written by
the client (:mod:`wsi_lab.tiling.outputs`), the manifest last. A slide whose manifest matches its
slide file, parameters and listed files is skipped on re-runs. Task keys are hashes (a file name that
is not UTF-8 cannot break Dask's messages); tasks return their errors as values, so a corrupt file fails
once while a task lost with its worker is run again by Dask.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs import manifest as mf
from wsi_lab.runs.executors import check_scheduler_reachable, check_workers, dask_client
from wsi_lab.runs.job import Failure, ThreadJob
from wsi_lab.runs.progress import ItemStatus, ProgressCallback, ProgressTracker
from wsi_lab.tiling import tasks
from wsi_lab.tiling.outputs import (
    TABLE,
    TilingResult,
    clean_slide_dir,
    display_name,
    finish_slide,
    inputs_hash,
    params_hash,
    remove_partial_outputs,
    write_slide_outputs,
)
from wsi_lab.tiling.params import TilingParams

log = logging.getLogger(__name__)

__all__ = ["run_tiling", "start_tiling", "TilingJob", "TilingResult", "MATERIALIZE", "IF_NO_MPP"]

MATERIALIZE = (None, "jpeg", "tfrecord")
#: what to do with a slide whose metadata has no µm/px while the parameters ask for one: fail it, or
#: tile it at level 0 (native pixels)
IF_NO_MPP = ("fail", "level0")


@dataclass
class _Slide:
    """One slide's state during a run."""

    sid: str
    path: Path
    params: TilingParams
    inputs: str
    phash: str
    sdir: Path
    futures: set = field(default_factory=set)
    plan: pd.DataFrame | None = None
    mask: Any = None
    modality: str | None = None
    kept: list = field(default_factory=list)
    files: dict = field(default_factory=dict)  # tile JPEG name -> (bytes, sha256), measured by the writer
    chunks: int = 0
    chunks_done: int = 0
    tiles_read: int = 0
    table: pd.DataFrame | None = None
    closed: bool = False

    @property
    def progress(self) -> float:
        if self.plan is None:
            return 0.0
        return 0.1 + 0.9 * (self.chunks_done / self.chunks if self.chunks else 0.0)

    @property
    def pjson(self) -> str:
        return self.params.to_json()


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


def _check_arguments(params: TilingParams, materialize: str | None, chunk_tiles: int, if_no_mpp: str) -> None:
    params.validate()
    if materialize not in MATERIALIZE:
        raise InvalidParameterError(f"materialize must be None, 'jpeg' or 'tfrecord', got {materialize!r}")
    if isinstance(chunk_tiles, bool) or not isinstance(chunk_tiles, int) or chunk_tiles < 1:
        raise InvalidParameterError(f"chunk_tiles must be a positive integer, got {chunk_tiles!r}")
    if if_no_mpp not in IF_NO_MPP:
        raise InvalidParameterError(f"if_no_mpp must be one of {IF_NO_MPP}, got {if_no_mpp!r}")


def _prepare(slides: Any, params: TilingParams, overrides: Mapping[str, TilingParams], out: Path,
             materialize: str | None, if_no_mpp: str, force: bool, result: TilingResult,
             passthrough: bool = True) -> list[_Slide]:
    """The slides to run; failures found before any work (missing file, duplicate id, a name that is not
    UTF-8) and complete slides (skipped, their folder cleaned of unlisted files) go into ``result``."""
    from wsi_lab.slide import slide_id

    todo: dict[str, _Slide] = {}
    for path in _resolve_slides(slides):
        sid = display_name(slide_id(path))
        try:
            os.fsdecode(path).encode("utf-8")
        except UnicodeEncodeError:
            result.failures.append(Failure(sid, "DataError", f"the file name {display_name(str(path))!r} is not valid "
                                           "UTF-8; rename the file and run again"))
            continue
        if sid in todo or sid in result.tables:
            result.failures.append(Failure(f"{sid} ({path})", "DataError",
                                           f"another slide in this batch is also named {sid!r}; rename one"))
            continue
        p = overrides.get(sid) or overrides.get(str(path)) or params
        p.validate()
        try:
            inputs = inputs_hash(path)
        except OSError as exc:
            result.failures.append(Failure(sid, "SlideNotFoundError", f"{path}: {exc.strerror or exc}"))
            continue
        phash, sdir = params_hash(p, materialize, if_no_mpp, passthrough), out / sid
        done = None if force else mf.check_manifest(sdir, "tiling", inputs_hash=inputs, params_hash=phash)
        if done is not None:
            clean_slide_dir(sdir, done)
            result.skipped.append(sid)
            result.tables[sid] = sdir / TABLE
            result.n_tiles[sid] = int(done["n_tiles"])
            continue
        todo[sid] = _Slide(sid, path, p, inputs, phash, sdir)
    return list(todo.values())


class _Runner:
    """Submits a run's tasks to a Dask client and turns their results into outputs and events."""

    def __init__(self, client: Any, todo: list[_Slide], result: TilingResult, tracker: ProgressTracker,
                 materialize: str | None, chunk_tiles: int, if_no_mpp: str, passthrough: bool = True) -> None:
        from distributed import as_completed

        self.client, self.result, self.tracker = client, result, tracker
        self.todo = {st.sid: st for st in todo}
        self.materialize, self.chunk_tiles, self.if_no_mpp = materialize, chunk_tiles, if_no_mpp
        self.passthrough = passthrough
        try:
            self.threads = max(1, sum(client.nthreads().values()))
        except Exception as exc:  # noqa: BLE001 - only sizes the chunks; one thread assumed
            log.debug("could not count the workers' threads: %s", exc)
            self.threads = 1
        self.owner: dict[Any, tuple[_Slide, str]] = {}
        self.finished = len(result.skipped) + len(result.failures)
        self.run_id = uuid.uuid4().hex[:8]
        self.ac = as_completed([])

    def submit(self, st: _Slide, kind: str, fn: Any, *args: Any) -> None:
        tag = hashlib.sha1(os.fsencode(st.path)).hexdigest()[:12]  # never the file name: keys must be ASCII
        fut = self.client.submit(fn, *args, key=f"wsi-{kind}-{tag}-{self.run_id}-{len(self.owner)}", retries=0)
        self.owner[fut] = (st, kind)
        st.futures.add(fut)
        self.ac.add(fut)

    def fraction(self) -> float:
        part = sum(st.progress for st in self.todo.values() if not st.closed)
        return (self.finished + part) / max(self.tracker.total, 1)

    def close(self, st: _Slide, status: ItemStatus, message: str, add_tiles: int = 0) -> None:
        st.closed = True
        pending = [f for f in st.futures if not f.done()]
        if pending:
            self.client.cancel(pending)
        self.finished += 1
        self.tracker.update(message, done=self.finished, fraction=self.fraction(), current=st.sid, item=st.sid,
                            status=status, add={"tiles": add_tiles})

    def fail(self, st: _Slide, error_type: str, message: str) -> None:
        failure = Failure(st.sid, error_type, message)
        self.result.failures.append(failure)
        log.info("%s failed: %s: %s", st.sid, error_type, message)  # the event and the summary say it
        self.close(st, ItemStatus.FAILED, display_name(f"{st.sid} FAILED: {error_type}: {message}"))

    def start(self) -> None:
        for st in self.todo.values():
            mf.invalidate(st.sdir)  # its outputs change now: not complete until rewritten
            self.submit(st, "plan", tasks.plan_task, str(st.path), self._plan_params(st).to_json())

    def _plan_params(self, st: _Slide) -> TilingParams:
        """The "no µm/px → tile by level 0" policy (``if_no_mpp="level0"``) applied to one slide."""
        if self.if_no_mpp != "level0" or st.params.mpp is None or st.params.slide_mpp is not None:
            return st.params
        from wsi_lab.slide import open_slide

        with open_slide(st.path, backend=st.params.backend) as s:
            if s.mpp is not None:
                return st.params
        log.info("%s has no µm/px: tiled at level 0", st.sid)
        st.params = st.params.replace(mpp=None, level=0)
        return st.params

    def handle(self, fut: Any) -> None:
        st, kind = self.owner.pop(fut)
        st.futures.discard(fut)
        if st.closed or fut.status == "cancelled":
            return
        if fut.status == "error":  # lost with workers more often than allowed, or a scheduler-side error
            exc = fut.exception()
            return self.fail(st, type(exc).__name__, str(exc))
        res = fut.result()
        if isinstance(res, tasks.TaskError):
            return self.fail(st, res.error_type, res.message)
        try:
            getattr(self, f"on_{kind}")(st, res)
        except Exception as exc:  # writing this slide's outputs failed: the others go on
            log.debug("%s: %s output failed", st.sid, kind, exc_info=True)
            self.fail(st, type(exc).__name__, str(exc))

    def on_plan(self, st: _Slide, res: tuple) -> None:
        st.plan, st.mask, st.modality = res
        table = st.plan
        self.tracker.set_item(st.sid, ItemStatus.RUNNING)
        if not len(table) or (st.params.two_stage is None and self.materialize != "jpeg"):
            return self.finalize(st, table.copy())
        jdir = None
        if self.materialize == "jpeg":
            (st.sdir / "tiles").mkdir(parents=True, exist_ok=True)
            jdir = str(st.sdir / "tiles")
        rows = table.copy()
        rows.attrs = {}
        bounds = tasks.chunk_bounds(len(rows), self.chunk_tiles, self.threads)
        st.chunks = len(bounds) - 1
        for i, j in zip(bounds[:-1], bounds[1:]):
            self.submit(st, "chunk", tasks.chunk_task, str(st.path), st.pjson, rows.iloc[i:j], st.modality, jdir,
                        self.passthrough)
        self.tracker.update(f"{st.sid}: {len(table)} candidate tiles, {st.chunks} chunks", current=st.sid,
                            fraction=self.fraction(), add={"tiles_expected": len(table)})

    def on_chunk(self, st: _Slide, res: tuple) -> None:
        kept, n_read, mp, *written = res
        st.kept.append(kept)
        st.files.update(*written)
        st.tiles_read += n_read
        self.result.tiles_read += n_read
        self.result.megapixels_read += mp
        st.chunks_done += 1
        self.tracker.update(current=st.sid, fraction=self.fraction(), add={"tiles": len(kept), "tiles_done": n_read})
        if st.chunks_done == st.chunks:
            self.finalize(st, pd.concat(st.kept, ignore_index=True))

    def finalize(self, st: _Slide, table: pd.DataFrame) -> None:
        assert st.plan is not None
        table.attrs = st.plan.attrs.copy()
        if st.params.two_stage is not None:
            table.attrs["wsi_lab"] = {**table.attrs["wsi_lab"], "stage": "fine", "fine_modality": st.modality}
        st.sdir.mkdir(parents=True, exist_ok=True)
        st.table = write_slide_outputs(st.sdir, table, st.mask, st.params, self.materialize, st.path)
        if self.materialize == "tfrecord":
            return self.submit(st, "tfrecord", tasks.tfrecord_task, st.table, str(st.sdir / "tfrecords"))
        self.done(st)

    def on_tfrecord(self, st: _Slide, res: dict) -> None:
        self.done(st, {"tfrecord": {"files": len(res.get("files", [])), "tiles": res.get("tiles")}})

    def done(self, st: _Slide, extra: dict | None = None) -> None:
        assert st.table is not None
        finish_slide(st.sdir, st.table, st.params, self.materialize, inputs=st.inputs, phash=st.phash, records=st.files,
                     slide_path=st.path, extra={"tiles_read": st.tiles_read, **(extra or {})})
        st.files = {}  # in the manifest now: a long batch holds only the slides in flight
        self.result.tables[st.sid] = st.sdir / TABLE
        self.result.n_tiles[st.sid] = len(st.table)
        self.close(st, ItemStatus.DONE, f"{st.sid}: {len(st.table)} tiles",
                   add_tiles=len(st.table) if not st.chunks else 0)

    def release(self, timeout: float = 15.0) -> None:
        """Cancel every task of the run, drop the client's references to them, and wait (up to ``timeout``
        seconds) until neither the scheduler nor a worker holds one: a cluster closed right after a cancel
        otherwise logs comm tracebacks ("Closed comm while trying to write") and lost-task warnings."""
        futures = list(self.owner)
        keys = [f.key for f in futures]
        if futures:
            self.client.cancel(futures)
        self.owner.clear()
        self.ac.clear()
        for st in self.todo.values():
            st.futures.clear()
        del futures
        deadline = time.monotonic() + timeout
        while keys and time.monotonic() < deadline:
            try:
                held = self.client.run_on_scheduler(_held_by_scheduler, keys=keys)
                held += sum(self.client.run(_held_by_worker, keys=keys).values())
            except Exception as exc:  # noqa: BLE001 - a closing cluster: nothing more to wait for
                log.debug("waiting for cancelled tasks: %s", exc)
                return
            if not held:
                return
            time.sleep(0.05)
        log.info("%d cancelled task(s) still running after %.0f s", len(keys), timeout)

    def loop(self, cancel: threading.Event | None) -> None:
        while True:
            if cancel is not None and cancel.is_set():
                self.result.cancelled = True
                self.release()
                for st in self.todo.values():
                    if not st.closed:
                        self.tracker.set_item(st.sid, ItemStatus.CANCELLED)
                self.tracker.update("cancelled; finished slides are kept", done=self.finished)
                return
            batch = self.ac.next_batch(block=False)
            if not batch:
                if self.ac.is_empty():
                    return
                time.sleep(0.02)
                continue
            for fut in batch:
                if fut in self.owner:
                    self.handle(fut)


def _held_by_scheduler(keys: list[str], dask_scheduler: Any) -> int:
    """How many of ``keys`` the scheduler still knows (run on it by ``client.run_on_scheduler``)."""
    return sum(k in dask_scheduler.tasks for k in keys)


def _held_by_worker(keys: list[str], dask_worker: Any) -> int:
    """How many of ``keys`` a worker still holds or runs (run on each by ``client.run``)."""
    return sum(k in dask_worker.state.tasks for k in keys)


def run_tiling(slides: Any, params: TilingParams | None = None, client: Any = None, out: str | os.PathLike = "tiles",
               materialize: str | None = None, progress: ProgressCallback | None = None, n_workers: int | None = None,
               *, cancel: threading.Event | None = None, overrides: Mapping[str, TilingParams] | None = None,
               chunk_tiles: int = 256, force: bool = False, if_no_mpp: str = "fail",
               passthrough: bool | None = None) -> TilingResult:
    """Tile ``slides`` (paths, Slides, a folder, or a list of them) on Dask and write per-slide outputs
    under ``out`` (see the module docstring). ``client``: None (a LocalCluster of ``n_workers`` processes,
    closed at the end), a ``distributed.Client``, or a scheduler address (checked first: "cannot reach
    tcp://… within 5 s"). ``overrides`` maps slide id to its own :class:`TilingParams`. ``cancel`` (a
    threading.Event) stops the run between tasks; finished slides stay written, unfinished ones leave
    nothing. Slides that fail are reported in ``result.failures`` while the others finish.
    ``if_no_mpp="level0"`` tiles slides without µm/px at level 0 instead of failing them. ``progress``
    receives :class:`~wsi_lab.runs.ProgressEvent` (slides done; metrics ``tiles`` kept, ``tiles_per_s``,
    ``tiles_done``/``tiles_expected`` candidate tiles read; per-slide statuses). ``passthrough``: write a
    JPEG folder's aligned tiles as the slide's own JPEG bytes (None: unless ``WSI_LAB_JPEG_PASSTHROUGH=0``
    in this process); part of what a re-run compares, so toggling it tiles the slides again."""
    from wsi_lab.data.extract import passthrough_default

    params = params or TilingParams()
    passthrough = passthrough_default() if passthrough is None else bool(passthrough)
    _check_arguments(params, materialize, chunk_tiles, if_no_mpp)
    if isinstance(client, str):
        client = check_scheduler_reachable(client)  # before anything else: a wrong address is never "done"
    elif client is None:
        check_workers(n_workers)
    out = Path(out)
    result = TilingResult(out=out)
    t0 = time.perf_counter()
    todo = _prepare(slides, params, dict(overrides or {}), out, materialize, if_no_mpp, force, result, passthrough)
    items = [*result.skipped, *(f.item for f in result.failures), *(st.sid for st in todo)]
    tracker = ProgressTracker(len(items), progress, unit="slides", items=items, rates=("tiles",))
    for sid in result.skipped:
        tracker.set_item(sid, ItemStatus.SKIPPED)
    for f in result.failures:
        tracker.set_item(f.item, ItemStatus.FAILED)
    if not items:
        result.no_slides = True
        log.warning("no slides to tile in %s: nothing to do", display_name(str(slides)))
    if not todo:
        result.elapsed_s = time.perf_counter() - t0
        tracker.update(f"nothing to do: {len(result.skipped)} complete, {len(result.failures)} failed",
                       done=len(items), metrics={"tiles": result.total_tiles}, finished=True)
        return result
    tracker.update(f"{len(todo)} slide(s) to tile: starting Dask", done=len(items) - len(todo))
    finished = len(items) - len(todo)
    try:
        with dask_client(client, n_workers) as c:
            result.dashboard_link = tracker.dashboard = getattr(c, "dashboard_link", None)
            log.info("Dask dashboard: %s", result.dashboard_link)
            runner = _Runner(c, todo, result, tracker, materialize, chunk_tiles, if_no_mpp, passthrough)
            tracker.update(f"Dask dashboard: {result.dashboard_link}", done=runner.finished)
            out.mkdir(parents=True, exist_ok=True)
            runner.start()
            runner.loop(cancel)
            finished = runner.finished
    finally:
        # after our own cluster is closed: slides cancelled or failed mid-way leave no partial outputs (a task
        # still running on an external cluster may add a file after this; it has no manifest and the next run
        # removes it)
        for st in todo:
            if st.sid not in result.tables:
                remove_partial_outputs(st.sdir)
    result.elapsed_s = time.perf_counter() - t0
    tracker.update(f"finished: {result.total_tiles} tiles, {len(result.failures)} failed" +
                   (" (cancelled)" if result.cancelled else ""), done=finished, finished=True)
    return result


class TilingJob(ThreadJob[TilingResult]):
    """A :func:`run_tiling` running in a background thread: the run layer's
    :class:`~wsi_lab.runs.Job` handle (``status()``, ``result(timeout)``, ``wait``, ``cancel()``,
    ``logs``, ``metrics``, ``failures``)."""

    def __init__(self, slides: Any, params: TilingParams | None = None, progress: ProgressCallback | None = None,
                 **kwargs: Any) -> None:
        external = kwargs.pop("cancel", None)

        def target(job: ThreadJob[TilingResult]) -> TilingResult:
            if external is not None:  # a caller's own Event also cancels the run
                def relay() -> None:
                    while not job.done():
                        if external.wait(0.2):
                            job.cancel()
                            return

                threading.Thread(target=relay, name="wsi-lab-tiling-cancel", daemon=True).start()
            res = run_tiling(slides, params, progress=job.emit, cancel=job.cancel_event, **kwargs)
            for f in res.failures:
                job.add_failure(f)
            job.record_metrics(tiles=res.total_tiles, slides=len(res.tables), failed=len(res.failures),
                               elapsed_s=res.elapsed_s, tiles_read=res.tiles_read)
            return res

        super().__init__(target, name="tiling", progress=progress)


def start_tiling(slides: Any, params: TilingParams | None = None, **kwargs: Any) -> TilingJob:
    """Start :func:`run_tiling` in a background thread and return its :class:`TilingJob` handle."""
    return TilingJob(slides, params, **kwargs)
