"""What a Pipe-mode job streams, decided at launch (no torch, no AWS call): which tasks can train from a
stream, how many processes each host starts, which TFRecord shards each process's channel holds, and how
many tiles each process is promised per epoch. The container (:mod:`wsi_lab.cloud.pipe`) reads the same
numbers back from the hyper-parameters, so every rank runs the same number of steps per epoch.

Channels, as SageMaker names them: process ``i`` of every host reads channel ``train_<i>`` (``i`` = its local
rank), whose FIFOs are ``/opt/ml/input/data/train_<i>_<epoch>``; ``ShardedByS3Key`` gives each of the
``H`` hosts about ``1/H`` of that channel's shards, re-dealt every epoch by the channel's ``ShuffleConfig``.
The validation split, when the export has one, is one channel ``validation`` (``FullyReplicated``, FIFOs
``validation_<epoch>``) that rank 0 evaluates.

The promise: a host gets at least ``floor(K/H)`` of a channel's ``K`` shards, so a process is sure of the
tiles of the ``floor(K/H)`` smallest ones; the least sure channel gives ``records_per_process``, and
``steps_per_epoch = records_per_process // (batch_size / world)``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["PIPE_TASKS", "REFUSED_TASKS", "VALIDATION_CHANNELS", "PipePlan", "check_pipe_task", "pipe_processes",
           "sure_records", "plan_pipe"]

#: the tasks that train from tile records, and what each reads from a record
PIPE_TASKS = {"classify": "labelled tiles (records with label -1 are skipped)", "vae": "every tile (labels unused)"}
#: why the other tasks cannot train from a stream of tile records
REFUSED_TASKS = {
    "mil": "trains on the per-slide feature files of a features job, not on tile records",
    "segment": "needs each tile's annotation mask, and the TFRecord export carries no masks",
    "features": "writes one feature file per slide and resumes per slide; a stream of shuffled tiles has neither "
                "(run it in File/FastFile mode or as a Processing job)",
}
#: the channel names the container takes for the validation stream (launch creates the first)
VALIDATION_CHANNELS = ("validation", "val")


def check_pipe_task(task: str) -> None:
    """:class:`InvalidParameterError` unless ``task`` can train in Pipe mode (see :data:`PIPE_TASKS`)."""
    if task not in PIPE_TASKS:
        why = REFUSED_TASKS.get(task, "is not a training task")
        raise InvalidParameterError(f"job spec key 'task': Pipe mode streams tile records and trains "
                                    f"{' or '.join(sorted(PIPE_TASKS))}; {task!r} {why}; use input_mode File or FastFile")


def pipe_processes(distribution: str | None, processes_per_host: int, gpus: int | None) -> int:
    """The processes SageMaker starts on each host, hence the ``train_<i>`` channels a Pipe job needs:
    ``processes_per_host`` for ``mpi``, one per GPU for ``torch_distributed`` (the toolkit's torchrun), 1 without."""
    if distribution == "mpi":
        return int(processes_per_host)
    if distribution == "torch_distributed":
        return int(gpus) if gpus else int(processes_per_host)
    return 1


def sure_records(counts: Sequence[int], hosts: int) -> int:
    """The tiles one host is sure to receive from a channel of shards with ``counts`` tiles, sharded by S3
    key over ``hosts`` hosts in any order: the sum of the ``len(counts) // hosts`` smallest."""
    return int(sum(sorted(counts)[: len(counts) // max(hosts, 1)]))


@dataclass(frozen=True)
class PipePlan:
    """``channels[i]``: the shard paths (relative to the export) of process ``i``'s channel;
    ``val_shards``: the validation channel's; ``records_per_process`` / ``val_records``: the promises;
    ``steps_per_epoch``: the steps every rank runs (``None`` for a single process, which trains every tile)."""

    channels: list[list[str]]
    val_shards: list[str]
    records_per_process: int
    val_records: int
    steps_per_epoch: int | None
    tile_size: int
    classes: list[str]

    def hyperparameters(self) -> dict[str, Any]:
        """What the container needs (:func:`wsi_lab.cloud.pipe.run_pipe` reads these keys)."""
        hps: dict[str, Any] = {"wsi_lab_classes": self.classes, "wsi_lab_tile_size": self.tile_size,
                               "wsi_lab_pipe_records": self.records_per_process}
        if self.val_shards:
            hps["wsi_lab_pipe_val_records"] = self.val_records
        return hps


def _tile_count(path: Path, labelled: bool, entry: Mapping[str, Any]) -> int:
    """The tiles a shard streams: every record, or for classify the labelled ones (the manifest's count;
    an export written before it recorded one is read)."""
    if not labelled:
        return int(entry.get("records", 0))
    if "labelled" in entry:
        return int(entry["labelled"])
    from wsi_lab.data.tfrecord import iter_tfrecord, parse_example

    return sum(1 for rec in iter_tfrecord(path, verify=False) if int((parse_example(rec).get("label") or [-1])[0]) >= 0)


def plan_pipe(root: str | Path, manifest: Mapping[str, Any], task: str, train_split: str, val_split: str,
              processes: int, hosts: int, batch_size: int) -> PipePlan:
    """The :class:`PipePlan` of the TFRecord export ``root`` (its ``manifest``) for ``processes`` per host on
    ``hosts`` hosts and a global ``batch_size``: shard ``k`` of the training split goes to channel
    ``k % processes``; the counts are labelled tiles for classify (from the manifest), every tile for vae."""
    from wsi_lab.data.tfrecord import iter_tfrecord
    from wsi_lab.data.tfrecord_stream import decode_tile_record

    check_pipe_task(task)
    root = Path(root)
    files = {str(f["path"]): f for f in manifest.get("files", [])}
    shards = sorted(p for p, f in files.items() if f.get("split") == train_split)
    if len(shards) < processes * hosts:
        raise InvalidParameterError(f"job spec key 'table': the export has {len(shards)} {train_split!r} shard(s); Pipe "
                                    f"mode needs at least one per process ({processes} x {hosts} host(s)): re-export "
                                    f"with --shards {processes * hosts}")
    labelled = task == "classify"
    counts = {p: _tile_count(root / p, labelled, files[p]) for p in shards}
    channels = [shards[i::processes] for i in range(processes)]
    sure = [sure_records([counts[p] for p in ch], hosts) for ch in channels]
    world = processes * hosts
    per_rank = batch_size // world
    steps = min(sure) // per_rank if world > 1 else None
    if steps is not None and steps < 1:
        raise InvalidParameterError(f"job spec key 'batch_size': each of the {world} processes is sure of {min(sure)} "
                                    f"tile(s) per epoch, less than one batch of {per_rank}; use a smaller batch or "
                                    "re-export with fewer, larger shards")
    if steps is not None and max(sure) > 0 and steps * per_rank < 0.75 * max(sure):
        log.warning("Pipe mode: every process trains %d tiles per epoch and skips the rest of its stream; the largest "
                    "channel holds %d (shards of unequal size; re-export with --shards a multiple of %d)",
                    steps * per_rank, max(sure), world)
    val_shards = sorted(p for p, f in files.items() if f.get("split") == val_split)
    val_records = sum(_tile_count(root / p, labelled, files[p]) for p in val_shards)
    first = decode_tile_record(next(iter(iter_tfrecord(root / shards[0]))))  # the export writes no empty shard
    index = manifest.get("label_index") or {}
    classes = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
    if labelled and len(classes) < 2:
        raise InvalidParameterError(f"job spec key 'table': {root} has {len(classes)} class(es) in its label_index; "
                                    "classify needs two (export a labelled table)")
    return PipePlan(channels, val_shards, min(sure), val_records, steps, int(first.image.shape[0]), classes)
