"""The job registry behind the Job console: every job the notebook started, whatever runs it.

Jobs live in a module-level registry, not in a widget: closing (or re-creating) the console never
orphans a running job, and a new console shows every job again with its whole history. This module
holds no pipeline rule; it reads the run layer's :class:`~wsi_lab.runs.Job` handle (status, progress
events, metrics records, logs, failures) and turns it into what a person reads:

- :func:`register_job` / :func:`registered_jobs`: the registry (``JobEntry`` per job, with an optional
  ``restart`` callable that resumes it: a training job relaunches its spec into the same ``out`` folder and
  continues after ``last.pt``; a tiling run skips the slides already complete);
- :func:`snapshot`: status, fraction, tiles/s, ETA, memory (RSS of the job's process tree), log tail and
  a readable error (never a traceback);
- :func:`status_rows`: one row per slide (tiling, inference) or per epoch (training);
- :func:`metric_series`: ``{(split, metric): (epochs, values)}`` for the charts.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wsi_lab.runs.job import Job, JobStatus
from wsi_lab.runs.progress import ItemStatus

log = logging.getLogger(__name__)

__all__ = ["JobEntry", "JobSnapshot", "register_job", "registered_jobs", "get_job", "forget_job", "snapshot",
           "status_rows", "metric_series", "readable_error", "process_memory", "wait_for_change", "KINDS",
           "start_prediction"]

KINDS = ("training", "tiling", "inference", "other")
_TRACE_LINE = re.compile(r'^\s*(Traceback \(most recent call last\)|File ".*", line \d+|\^+$)')


@dataclass
class JobEntry:
    """One row of the console: a job (``job``; the latest run when resumed), its kind, a label, the spec it
    ran (a dict, shown as JSON) and how to resume it (``restart() -> Job``, or None)."""

    id: str
    kind: str
    label: str
    job: Job
    spec: dict[str, Any] | None = None
    restart: Callable[[], Job] | None = None
    history: list[Job] = field(default_factory=list)   # earlier runs of the same entry (before a resume)
    created: float = field(default_factory=time.time)

    @property
    def runs(self) -> list[Job]:
        """Every run of this entry, oldest first (the current one last)."""
        return [*self.history, self.job]

    def resume(self) -> Job:
        """Start the job again (``restart``) when it is not running; the new run becomes ``job``."""
        from wsi_lab.errors import InvalidParameterError

        if not self.job.done():
            raise InvalidParameterError(f"{self.label} is still {self.job.status()}; cancel it before resuming")
        if self.restart is None:
            raise InvalidParameterError(f"{self.label} cannot be resumed from here (no restart recorded)")
        new = self.restart()
        _watch(new)
        with _LOCK:
            self.history.append(self.job)
            self.job = new
        _notify()
        return new


_LOCK = threading.RLock()
_CHANGED = threading.Condition(_LOCK)
_JOBS: dict[str, JobEntry] = {}
_IDS = itertools.count(1)
_GENERATION = [0]


def _notify() -> None:
    with _CHANGED:
        _GENERATION[0] += 1
        _CHANGED.notify_all()


def _watch(job: Job) -> None:
    job.on_progress(lambda _event: _notify())  # a progress event wakes the consoles at once


def wait_for_change(generation: int, timeout: float) -> int:
    """Block until a registered job reports progress (or a job is added/resumed) after ``generation``,
    or ``timeout`` s pass; returns the current generation."""
    with _CHANGED:
        if _GENERATION[0] == generation:
            _CHANGED.wait(timeout)
        return _GENERATION[0]


def register_job(job: Job, kind: str | None = None, label: str | None = None, spec: dict[str, Any] | None = None,
                 restart: Callable[[], Job] | None = None) -> JobEntry:
    """Add ``job`` to the registry (once: registering the same job again returns its entry). ``kind`` is
    guessed from the job (training for a ``TrainJob``, tiling for a ``TilingJob``) when not given."""
    with _LOCK:
        for entry in _JOBS.values():
            if job is entry.job or any(job is j for j in entry.history):
                return entry
        if kind is None:
            name = type(job).__name__
            kind = "training" if name == "TrainJob" else "tiling" if name == "TilingJob" else "other"
        if spec is None and hasattr(job, "spec") and hasattr(job.spec, "to_dict"):
            spec = job.spec.to_dict()
        jid = f"job-{next(_IDS)}"
        entry = JobEntry(jid, kind, label or f"{jid} {job.name}", job, spec, restart)
        _JOBS[jid] = entry
    _watch(job)
    _notify()
    return entry


def registered_jobs() -> list[JobEntry]:
    """Every registered job, oldest first."""
    with _LOCK:
        return list(_JOBS.values())


def get_job(job_id: str) -> JobEntry:
    """The entry called ``job_id`` (``KeyError`` naming the known ids when absent)."""
    with _LOCK:
        if job_id not in _JOBS:
            raise KeyError(f"no job {job_id!r}; known: {sorted(_JOBS)}")
        return _JOBS[job_id]


def forget_job(job_id: str) -> None:
    """Remove a finished job from the registry (a running job is refused: cancel it first)."""
    from wsi_lab.errors import InvalidParameterError

    with _LOCK:
        entry = _JOBS.get(job_id)
        if entry is None:
            return
        if not entry.job.done():
            raise InvalidParameterError(f"{entry.label} is still running; cancel it before removing it")
        del _JOBS[job_id]
    _notify()


# -- what a person reads ------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSnapshot:
    """A job as the console shows it. ``fraction`` 0..1; ``eta_s``/``memory_bytes`` None when unknown."""

    status: JobStatus
    fraction: float
    done: int
    total: int
    unit: str
    tiles_per_s: float | None
    eta_s: float | None
    elapsed_s: float
    memory_bytes: int | None
    log_tail: list[str]
    error: str | None
    failures: list[str]


def readable_error(exc: BaseException | None) -> str | None:
    """One readable message for a job's error: the typed error's text with traceback lines removed (a
    worker's stderr tail can hold a Python traceback; the widget never shows one)."""
    if exc is None:
        return None
    from wsi_lab.ui.common import describe_error

    lines = describe_error(exc).splitlines()
    keep: list[str] = []
    in_trace = False
    for line in lines:
        if line.strip().startswith("Traceback (most recent call last)"):
            in_trace = True
            continue
        if in_trace and (line.startswith((" ", "\t")) or _TRACE_LINE.match(line)):
            continue
        in_trace = False
        if line.strip():
            keep.append(line.strip())
    return " · ".join(keep) or type(exc).__name__


def process_memory(pid: int | None) -> int | None:
    """Resident memory in bytes of process ``pid`` and all its children (torchrun/horovodrun ranks), or
    None when it is gone or psutil is missing."""
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a rank that just exited
            continue
    return total


def _records(entry: JobEntry) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for job in entry.runs:
        with job._lock:  # the records list itself: no DataFrame per refresh
            rows.extend(dict(r) for r in job._metrics)
    return rows


def snapshot(entry: JobEntry, tail: int = 8) -> JobSnapshot:
    """Read ``entry``'s job now (cheap: no DataFrame is built)."""
    job = entry.job
    status = job.status()
    ev = job.last_event
    now = time.time()
    started = job.started_at or entry.created
    elapsed = (job.finished_at or now) - started
    fraction = float(ev.fraction) if ev is not None else (1.0 if status == JobStatus.DONE else 0.0)
    if status == JobStatus.DONE:
        fraction = 1.0
    eta: float | None = None
    if not status.finished:
        if ev is not None and ev.eta_s is not None:
            eta = max(0.0, float(ev.eta_s))
        elif 0 < fraction < 1 and elapsed > 0:
            eta = elapsed * (1 - fraction) / fraction
    rate: float | None = None
    train = [r for r in _records(entry) if r.get("split", "train") == "train" and "tiles_per_s" in r]
    if train:
        rate = float(train[-1]["tiles_per_s"])
    elif ev is not None and "tiles_per_s" in ev.metrics:
        rate = float(ev.metrics["tiles_per_s"])
    pid = getattr(job, "pid", None)
    memory = process_memory(pid) if pid is not None and not status.finished else None
    return JobSnapshot(status=status, fraction=min(1.0, max(0.0, fraction)), done=ev.done if ev else 0,
                       total=ev.total if ev else 0, unit=ev.unit if ev else "", tiles_per_s=rate, eta_s=eta,
                       elapsed_s=max(0.0, elapsed), memory_bytes=memory, log_tail=job.logs(tail=tail),
                       error=readable_error(job.error) if status == JobStatus.FAILED else None,
                       failures=[str(f) for f in job.failures])


def metric_series(entry: JobEntry) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """Per (split, metric): the epochs and values of every numeric metric a training job reported (a
    resumed run's records replace the earlier run's for the same epoch)."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for r in _records(entry):
        if "epoch" in r and "split" in r:
            by_key[(int(r["epoch"]), str(r["split"]))] = r
    out: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for (epoch, split), rec in sorted(by_key.items()):
        for name, value in rec.items():
            if name in ("epoch", "split", "time", "tiles") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or value != value:  # NaN: an undefined metric
                continue
            xs, ys = out.setdefault((split, name), ([], []))
            xs.append(epoch)
            ys.append(float(value))
    return out


def status_rows(entry: JobEntry) -> list[dict[str, str]]:
    """The status grid: per epoch for training (train/val loss, the first validation metric, tiles/s),
    per slide for tiling and inference (status, or the failure's message)."""
    job = entry.job
    if entry.kind == "training":
        series = metric_series(entry)
        total = int((entry.spec or {}).get("epochs") or 0)
        done = {e for (split, _), (xs, _) in series.items() for e in xs}
        rows = []
        for epoch in range(1, max([total, *done, 0]) + 1):
            row = {"epoch": str(epoch)}
            for (split, name), (xs, ys) in series.items():
                if epoch in xs and name in ("loss", "accuracy", "tiles_per_s"):
                    v = ys[xs.index(epoch)]
                    row[f"{split} {name.replace('_', ' ')}"] = f"{v:.0f}" if name == "tiles_per_s" else f"{v:.4f}"
            if epoch in done:
                row["status"] = "done"
            elif job.status() == JobStatus.RUNNING and epoch == max(done, default=0) + 1:
                row["status"] = "running"
            else:
                row["status"] = "cancelled" if job.status() == JobStatus.CANCELLED else \
                    "failed" if job.status() == JobStatus.FAILED and epoch == max(done, default=0) + 1 else "queued"
            rows.append(row)
        return rows
    ev = job.last_event
    failed = {f.item: f"{f.error_type}: {f.message}" for f in job.failures}
    items: dict[str, str] = {k: str(v) for k, v in (ev.items if ev is not None else {}).items()}
    for item, msg in failed.items():
        items[item] = f"failed: {msg}"
    if job.status() == JobStatus.CANCELLED:
        items = {k: (str(ItemStatus.CANCELLED) if v in (ItemStatus.QUEUED, ItemStatus.RUNNING) else v)
                 for k, v in items.items()}
    return [{"slide": k, "status": v} for k, v in items.items()]


def start_prediction(checkpoint: Any, table: Any, out: Any = None, label: str | None = None,
                     **options: Any) -> JobEntry:
    """Run :func:`wsi_lab.infer.run.predict_slides` in a background thread as a registered inference job
    (one status row per slide; failed slides are the job's failures; resuming re-runs it, skipping the
    slides already complete under ``out``). Returns the registry entry; ``entry.job.result()`` is the
    :class:`~wsi_lab.infer.run.PredictResult`."""
    from wsi_lab.runs.job import ThreadJob

    def start() -> Job:
        def target(job: ThreadJob) -> Any:
            from wsi_lab.infer.run import predict_slides

            res = predict_slides(checkpoint, table, out=out, progress=job.emit, **options)
            for f in res.failures:
                job.add_failure(f)
            job.record_metrics(tiles=len(res.table), slides=len(res.done), failed=len(res.failures))
            return res

        return ThreadJob(target, name="predict")

    return register_job(start(), "inference", label=label or "predict", restart=start)
