"""``SageMakerJob``: the run layer's :class:`~wsi_lab.runs.job.Job` over a SageMaker training,
processing or transform job. ``status()`` asks SageMaker (``Describe*``), ``wait()`` polls until the
job ends, ``logs()`` reads the job's CloudWatch streams, ``metrics()`` parses them with the job's metric
definitions (the same regexes sent in the request), ``cancel()`` calls ``Stop*`` (a local endpoint
that lacks it raises :class:`UnsupportedOperationError`). A job that ends ``Failed`` fails the handle
with :class:`RemoteJobFailedError` carrying SageMaker's ``FailureReason``."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wsi_lab.cloud.errors import CloudError, RemoteJobFailedError
from wsi_lab.cloud.session import CloudSession, aws_call
from wsi_lab.runs.job import Failure, Job, JobStatus
from wsi_lab.runs.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

__all__ = ["SageMakerJob", "JobKind", "KINDS", "STATUS"]


@dataclass(frozen=True)
class JobKind:
    """The API names of one kind of SageMaker job."""

    noun: str           # TrainingJob, ProcessingJob, TransformJob
    log_group: str

    @property
    def describe(self) -> str:
        return f"describe_{_snake(self.noun)}"

    @property
    def stop(self) -> str:
        return f"stop_{_snake(self.noun)}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


KINDS = {"training": JobKind("TrainingJob", "/aws/sagemaker/TrainingJobs"),
         "processing": JobKind("ProcessingJob", "/aws/sagemaker/ProcessingJobs"),
         "transform": JobKind("TransformJob", "/aws/sagemaker/TransformJobs")}
#: SageMaker's job status -> the run layer's
STATUS = {"InProgress": JobStatus.RUNNING, "Stopping": JobStatus.RUNNING, "Completed": JobStatus.DONE,
          "Failed": JobStatus.FAILED, "Stopped": JobStatus.CANCELLED}


class SageMakerJob(Job[dict]):
    """A handle on one SageMaker job (``kind``: training, processing, transform) named ``job_name``.
    ``result()`` is the last ``Describe*`` answer once the job completed."""

    def __init__(self, session: CloudSession, kind: str, job_name: str,
                 metric_definitions: Sequence[dict[str, str]] = (), progress: ProgressCallback | None = None,
                 poll_s: float = 15.0) -> None:
        super().__init__(name=f"sagemaker-{kind}-{job_name}", progress=progress)
        self.session, self.kind, self.job_name, self.poll_s = session, KINDS[kind], job_name, poll_s
        self.metric_definitions = list(metric_definitions)
        self.description: dict[str, Any] = {}
        self._set_running()

    def __getstate__(self) -> dict:  # a handle does not travel (it holds clients and locks)
        raise TypeError("a SageMakerJob cannot be pickled; pass its job_name and kind instead")

    # -- SageMaker ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The ``Describe*`` answer (and the handle's status follows it)."""
        sm = self.session.client("sagemaker")
        desc = aws_call(f"Describe{self.kind.noun}", getattr(sm, self.kind.describe),
                        what=self.job_name, **{f"{self.kind.noun}Name": self.job_name})
        self.description = desc
        remote = desc.get(f"{self.kind.noun}Status", "InProgress")
        status = STATUS.get(remote, JobStatus.RUNNING)
        self.emit(ProgressEvent(done=1 if status.finished else 0, total=1, unit="job", fraction=float(status.finished),
                                finished=status.finished, current=f"{self.job_name}: {remote}"))
        if status.finished and not self.done():
            self.log(f"{self.kind.noun} {self.job_name}: {remote}")
            if status == JobStatus.FAILED:
                reason = desc.get("FailureReason") or "no FailureReason given"
                err = RemoteJobFailedError(f"{self.kind.noun} {self.job_name} failed: {reason}",
                                           code=f"{self.kind.noun}Failed", operation=f"Describe{self.kind.noun}",
                                           action="read job.logs() (CloudWatch) for the traceback; local files "
                                                  "are untouched, fix and re-run (uploads are skipped)")
                self.add_failure(Failure.from_exception(self.job_name, err))
                self._finish(error=err)
            else:
                self._finish(result=desc, status=status)
        return desc

    def status(self) -> JobStatus:
        """Asks SageMaker unless the job already finished."""
        if not self.done():
            self.describe()
        return super().status()

    def wait(self, timeout: float | None = None, poll_s: float | None = None) -> JobStatus:
        """Poll every ``poll_s`` s (default the handle's) until the job ends or ``timeout`` s pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            self.describe()
            if self.done() or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(min(poll_s or self.poll_s, max(0.0, deadline - time.monotonic()) if deadline else 1e9))
        return self._status

    def result(self, timeout: float | None = None) -> dict:
        self.wait(timeout)
        return super().result(0)

    def cancel(self) -> None:
        """``Stop*`` the job. Raises :class:`UnsupportedOperationError` where the endpoint lacks the call
        (moto's ``StopTrainingJob``/``StopTransformJob``), :class:`CloudError` when SageMaker refuses."""
        sm = self.session.client("sagemaker")
        aws_call(f"Stop{self.kind.noun}", getattr(sm, self.kind.stop), what=self.job_name,
                 **{f"{self.kind.noun}Name": self.job_name})
        super().cancel()
        self.log(f"Stop{self.kind.noun} {self.job_name} requested")

    # -- logs and metrics -------------------------------------------------------------------------
    def remote_logs(self) -> list[tuple[int, str]]:
        """``(timestamp ms, line)`` from every CloudWatch stream of this job (none yet: empty)."""
        logs = self.session.client("logs")
        try:
            streams = aws_call("DescribeLogStreams", logs.describe_log_streams, what=self.kind.log_group,
                               logGroupName=self.kind.log_group, logStreamNamePrefix=self.job_name + "/")
        except CloudError as exc:
            if exc.code == "ResourceNotFoundException":
                return []
            raise
        events: list[tuple[int, str]] = []
        for stream in streams.get("logStreams", []):
            token = None
            while True:
                kw: dict[str, Any] = {"logGroupName": self.kind.log_group, "logStreamName": stream["logStreamName"],
                                      "startFromHead": True}
                if token:
                    kw["nextToken"] = token
                page = aws_call("GetLogEvents", logs.get_log_events, what=stream["logStreamName"], **kw)
                events += [(e["timestamp"], e["message"]) for e in page.get("events", [])]
                if not page.get("events") or page.get("nextForwardToken") in (None, token):
                    break
                token = page["nextForwardToken"]
        return sorted(events)

    def logs(self, tail: int | None = None) -> list[str]:
        """What this handle did (uploads, requests, status) followed by the job's CloudWatch lines."""
        lines = super().logs() + [line for _, line in self.remote_logs()]
        return lines[-tail:] if tail else lines

    def metrics(self):
        """One row per metric value: ``name``, ``value``, ``time`` (s), from the CloudWatch lines parsed
        with the job's metric definitions, plus SageMaker's ``FinalMetricDataList`` (``final`` True)."""
        import pandas as pd

        rows = []
        patterns = [(d["Name"], re.compile(d["Regex"])) for d in self.metric_definitions]
        for ts, line in self.remote_logs():
            for name, rx in patterns:
                m = rx.search(line)
                if m:
                    rows.append({"name": name, "value": float(m.group(1)), "time": ts / 1000.0, "final": False})
        for rec in self.description.get("FinalMetricDataList", []):
            stamp = rec.get("Timestamp")
            rows.append({"name": rec["MetricName"], "value": float(rec["Value"]),
                         "time": stamp.timestamp() if hasattr(stamp, "timestamp") else None, "final": True})
        return pd.DataFrame(rows, columns=["name", "value", "time", "final"])
