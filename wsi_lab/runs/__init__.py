"""The run layer shared by every long job (tiling now; training, inference, cloud jobs next).

- :mod:`~wsi_lab.runs.spec`: :class:`Spec`, the base of frozen, validated, JSON round-tripping,
  hashable parameter dataclasses (``TilingParams``, the training ``JobSpec``).
- :mod:`~wsi_lab.runs.progress`: :class:`ProgressEvent`, :class:`ItemStatus`, :class:`ProgressTracker`,
  :class:`TextProgressBar` (the one progress protocol).
- :mod:`~wsi_lab.runs.manifest`: step manifests (written last; complete = hashes match and the listed
  files keep their sizes/hashes; unlisted files cleaned).
- :mod:`~wsi_lab.runs.job`: the :class:`Job` handle (:class:`JobStatus`, :class:`Failure`), with
  :class:`ThreadJob` and :class:`SubprocessJob` launchers.
- :mod:`~wsi_lab.runs.executors`: the Dask client (LocalCluster, Client or a checked scheduler address).

Nothing heavy is imported here (Dask loads inside ``executors.dask_client``, pandas inside
``Job.metrics``).
"""

from __future__ import annotations

from wsi_lab.runs import manifest
from wsi_lab.runs.executors import (
    SchedulerUnreachableError,
    check_scheduler_reachable,
    dask_client,
    normalize_scheduler_address,
)
from wsi_lab.runs.job import (
    Failure,
    Job,
    JobCancelledError,
    JobStatus,
    SubprocessJob,
    ThreadJob,
)
from wsi_lab.runs.progress import (
    ItemStatus,
    ProgressCallback,
    ProgressEvent,
    ProgressTracker,
    TextProgressBar,
    null_progress,
)
from wsi_lab.runs.spec import Spec, canonical_json, stable_hash

__all__ = ["Spec", "canonical_json", "stable_hash", "ItemStatus", "ProgressEvent", "ProgressCallback",
           "ProgressTracker", "TextProgressBar", "null_progress", "Job", "JobStatus", "JobCancelledError",
           "Failure", "ThreadJob", "SubprocessJob", "manifest", "dask_client", "normalize_scheduler_address",
           "check_scheduler_reachable", "SchedulerUnreachableError"]
