"""``Job``: the handle of a long run, whatever runs it (a thread, a subprocess, a cluster, SageMaker).

A job has a :class:`JobStatus` (queued → running → done | failed | cancelled), a ``result``, a log
(``logs(tail=N)``), metrics (``metrics()`` as a pandas DataFrame, one row per record), ``failures``
(:class:`Failure` objects per item: the run goes on for the other items) and progress callbacks that
receive :class:`~wsi_lab.runs.progress.ProgressEvent`.

:class:`Job` records all of that; a launcher drives it through the recording methods (``_set_running``,
``log``, ``record_metrics``, ``add_failure``, ``emit``, ``_finish``). :class:`ThreadJob` runs a Python
function in a background thread (tiling uses it), :class:`SubprocessJob` runs a command (training
launchers: local, torchrun, horovodrun) and reads metrics from its output lines.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from wsi_lab.runs.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

__all__ = ["JobStatus", "Failure", "Job", "ThreadJob", "SubprocessJob", "JobCancelledError", "METRIC_PREFIX"]

T = TypeVar("T")

#: a subprocess prints ``WSI_LAB_METRIC {"step": 1, "loss": 0.5}`` to report a metrics record
METRIC_PREFIX = "WSI_LAB_METRIC "


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    def __str__(self) -> str:
        return self.value


class JobCancelledError(RuntimeError):
    """``result()`` of a job that was cancelled before it produced one."""


@dataclass(frozen=True)
class Failure:
    """One item that failed: ``item`` (slide id, shard, rank...), the error's type name and message."""

    item: str
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, item: str, exc: BaseException) -> Failure:
        return cls(str(item), type(exc).__name__, str(exc) or repr(exc))

    def __str__(self) -> str:
        return f"{self.item}: {self.error_type}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


class Job(Generic[T]):
    """A handle on a run (see the module docstring). Thread-safe; subclasses start the work."""

    def __init__(self, name: str = "job", progress: ProgressCallback | Sequence[ProgressCallback] | None = None,
                 max_log_lines: int = 10_000) -> None:
        self.name = name
        self.failures: list[Failure] = []
        self.last_event: ProgressEvent | None = None
        self.cancel_event = threading.Event()
        self._callbacks: list[ProgressCallback] = ([] if progress is None else
                                                   [progress] if callable(progress) else list(progress))
        self._status = JobStatus.QUEUED
        self._result: Any = None
        self._error: BaseException | None = None
        self._logs: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self._metrics: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._done = threading.Event()
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # -- the handle ---------------------------------------------------------------------------
    def status(self) -> JobStatus:
        """queued, running, done, failed or cancelled."""
        return self._status

    def done(self) -> bool:
        """True once the job finished (done, failed or cancelled)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job finishes or ``timeout`` s pass; returns the status then."""
        self._done.wait(timeout)
        return self._status

    def result(self, timeout: float | None = None) -> T:
        """The job's result; raises ``TimeoutError`` while it runs past ``timeout``, the job's own
        exception when it failed, :class:`JobCancelledError` when cancelled without a result."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.name} is still {self._status.value} after {timeout} s")
        if self._error is not None:
            raise self._error
        if self._status == JobStatus.CANCELLED and self._result is None:
            raise JobCancelledError(f"{self.name} was cancelled")
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error

    def cancel(self) -> None:
        """Ask the job to stop (it keeps what it finished; see the launcher's docs)."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def logs(self, tail: int | None = None) -> list[str]:
        """The job's log lines (the last ``tail`` when given)."""
        with self._lock:
            lines = list(self._logs)
        return lines[-tail:] if tail else lines

    def metrics(self):
        """Every metrics record as a pandas DataFrame (one row per record, a ``time`` column)."""
        import pandas as pd

        with self._lock:
            return pd.DataFrame(list(self._metrics))

    def on_progress(self, callback: ProgressCallback) -> None:
        """Add a progress callback (receives every later :class:`ProgressEvent`)."""
        self._callbacks.append(callback)

    # -- what launchers call --------------------------------------------------------------------
    def log(self, line: str) -> None:
        with self._lock:
            self._logs.extend(str(line).splitlines() or [""])

    def record_metrics(self, values: Mapping[str, Any] | None = None, **kw: Any) -> None:
        rec = {"time": time.time(), **(values or {}), **kw}
        with self._lock:
            self._metrics.append(rec)

    def add_failure(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)
        self.log(f"FAILED {failure}")

    def emit(self, event: ProgressEvent) -> None:
        """Send a progress event to every callback (a callback that raises is logged, not fatal)."""
        self.last_event = event
        if event.message:
            self.log(event.message)
        for cb in list(self._callbacks):
            try:
                cb(event)
            except Exception:  # a broken view must not stop the run
                log.exception("%s: progress callback raised; continuing", self.name)

    def _set_running(self) -> None:
        with self._lock:
            self.started_at = time.time()
            self._status = JobStatus.RUNNING

    def _finish(self, result: Any = None, error: BaseException | None = None,
                status: JobStatus | None = None) -> None:
        with self._lock:
            self._result, self._error = result, error
            self._status = status or (JobStatus.FAILED if error is not None else
                                      JobStatus.CANCELLED if self.cancel_event.is_set() else JobStatus.DONE)
            self.finished_at = time.time()
        self._done.set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._status.value}, {len(self.failures)} failure(s)>"


class ThreadJob(Job[T]):
    """Run ``target(job)`` in a daemon thread; the target reads ``job.cancel_event``, reports through
    ``job.emit``/``job.log``/``job.record_metrics``/``job.add_failure``, and returns the result. The
    status is ``cancelled`` when the job was cancelled, ``failed`` when the target raised."""

    def __init__(self, target: Callable[[ThreadJob[T]], T], name: str = "job",
                 progress: ProgressCallback | Sequence[ProgressCallback] | None = None, start: bool = True) -> None:
        super().__init__(name, progress)
        self._target = target
        self._thread = threading.Thread(target=self._run, name=f"wsi-lab-{name}", daemon=True)
        if start:
            self.start()

    def start(self) -> ThreadJob[T]:
        self._set_running()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._target(self)
        except BaseException as exc:  # re-raised by result()
            log.debug("%s failed", self.name, exc_info=True)
            self.log(f"{type(exc).__name__}: {exc}")
            self._finish(error=exc)
            return
        self._finish(result=result)


class SubprocessJob(Job[int]):
    """Run ``cmd`` (a list of arguments) as a child process in its own process group. Output lines go
    to ``logs()``; lines ``WSI_LAB_METRIC {json}`` are metrics records, lines ``WSI_LAB_PROGRESS {json}``
    (``ProgressEvent`` fields) are progress events. ``result()`` is the exit code; a non-zero code
    makes the job ``failed`` (``result()`` raises ``subprocess.CalledProcessError``). ``cancel()`` sends
    SIGTERM to the group, then SIGKILL after ``grace_s``."""

    PROGRESS_PREFIX = "WSI_LAB_PROGRESS "

    def __init__(self, cmd: Sequence[str], name: str = "process", env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
                 grace_s: float = 10.0) -> None:
        super().__init__(name, progress)
        self.cmd = [str(c) for c in cmd]
        self.grace_s = grace_s
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      bufsize=1, env=None if env is None else dict(env), cwd=cwd,
                                      start_new_session=True, errors="replace")
        self._set_running()
        threading.Thread(target=self._pump, name=f"wsi-lab-{name}-out", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _unwrap(self, line: str) -> str:
        """The report inside one output line (a launcher that prefixes its lines overrides this)."""
        return line

    def handle_line(self, line: str) -> None:
        """Take one output line: a metrics record, a progress event, or a log line."""
        line = self._unwrap(line)
        try:
            if line.startswith(METRIC_PREFIX):
                self.record_metrics(json.loads(line[len(METRIC_PREFIX):]))
                return
            if line.startswith(self.PROGRESS_PREFIX):
                self.emit(ProgressEvent(**json.loads(line[len(self.PROGRESS_PREFIX):])))
                return
        except (ValueError, TypeError) as exc:
            line = f"(unparsed report line: {exc}) {line}"
        self.log(line)

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.handle_line(line.rstrip("\n"))
        rc = self._proc.wait()
        try:
            if self.cancel_event.is_set():
                self._finish(result=rc, status=JobStatus.CANCELLED)
            elif rc != 0:
                self._finish(error=subprocess.CalledProcessError(rc, self.cmd, "\n".join(self.logs(tail=20))))
            else:
                self._finish(result=rc)
        except Exception as exc:  # a launcher's own _finish failing must not leave the job running for ever
            log.exception("%s: finishing the job failed", self.name)
            Job._finish(self, error=exc)

    def cancel(self) -> None:
        super().cancel()
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def reap() -> None:
            try:
                self._proc.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    log.debug("%s: process group already gone", self.name)

        threading.Thread(target=reap, daemon=True).start()
