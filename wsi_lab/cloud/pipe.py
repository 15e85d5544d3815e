"""Pipe-mode training inside the container: SageMaker streams each channel's S3 objects (here the TFRecord
shards of ``wsi-lab export``) through a FIFO ``/opt/ml/input/data/<channel>_<epoch>``, a new FIFO per epoch
(``train_0_0``, ``train_0_1``, ... for channel ``train_0``). Process ``i`` of a host (its local rank) reads
channel ``train_<i>`` (see :mod:`wsi_lab.cloud.pipe_plan`, which made them) with :class:`PipeTileDataset`, a
streaming ``IterableDataset``, and the one training loop (:func:`wsi_lab.train.loop.fit`) trains the
``classify`` or ``vae`` model on it. No TensorFlow is needed.

Several processes cannot hang at an epoch's end: each rank trains exactly ``steps_per_epoch`` batches of
``batch_size / world`` tiles (the same number on every rank, computed from the promise the launch wrote,
``wsi_lab_pipe_records``), then reads the rest of its FIFO to the end and discards it, so SageMaker's writer
never blocks and the next epoch's FIFO appears. The discarded tail is the end of whichever shards came last
in this epoch; ``ShuffleConfig`` re-orders (and re-deals over the hosts) the shards every epoch, so a
different tail is skipped each time. A stream that ends before its promise raises :class:`ShortStreamError`.
One process alone trains every tile of its stream (its last batch may be short).

Validation: a ``validation`` (or ``val``) channel in Pipe mode is evaluated by rank 0 each epoch (the
``Validation Loss:`` / ``Validation Accuracy:`` lines); local rank 0 of the other hosts drains its copy; the
other ranks take part in the loop's collectives with an empty share. Evaluation runs the bare module
(the training loop's rule), so ranks that evaluate nothing stay in step with rank 0's collectives."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from wsi_lab.cloud.errors import ShortStreamError
from wsi_lab.cloud.pipe_plan import VALIDATION_CHANNELS, check_pipe_task
from wsi_lab.data.tfrecord_stream import decode_tile_record, iter_stream_records
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["PipeTileDataset", "pipe_channels", "validation_channel", "epoch_limit", "run_pipe", "FIFO_WAIT_S"]

FIFO_WAIT_S = 600.0  # how long to wait for the agent to create an epoch's FIFO


def _input_config(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("SM_INPUT_DATA_CONFIG")
    if not raw:
        path = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "inputdataconfig.json"
        raw = path.read_text() if path.is_file() else "{}"
    return json.loads(raw)


def pipe_channels(env: Mapping[str, str]) -> list[str]:
    """The ``train*`` channels of this job that are in Pipe mode (``SM_INPUT_DATA_CONFIG``, else
    ``/opt/ml/input/config/inputdataconfig.json``), sorted by their number."""
    config = _input_config(env)
    names = [n for n, c in config.items() if n.startswith("train") and c.get("TrainingInputMode") == "Pipe"]
    return sorted(names, key=lambda n: (len(n), n))


def validation_channel(env: Mapping[str, str]) -> str | None:
    """The job's validation channel in Pipe mode (``validation`` or ``val``), if any."""
    config = _input_config(env)
    return next((n for n in VALIDATION_CHANNELS if config.get(n, {}).get("TrainingInputMode") == "Pipe"), None)


class PipeTileDataset(torch.utils.data.IterableDataset):
    """``(image (3, H, W) float in [0, 1], label)`` for the records of one Pipe channel. Each iteration
    reads the next epoch's FIFO ``<data_dir>/<channel>_<k>`` (k = 0, 1, ...: the epochs this container has
    read, so a resumed job reads the FIFOs in the order SageMaker creates them).

    ``labelled``: skip records with label -1 (classify). ``limit``: yield that many tiles, then drain the
    rest of the FIFO unparsed but counted (``drained``); a stream with fewer raises :class:`ShortStreamError`.
    ``promised``: the tiles the stream must hold at least (validation), also :class:`ShortStreamError`.
    ``role``: ``read``; ``drain`` (read to the end, yield nothing: another host's copy of validation);
    ``skip`` (touch no FIFO). Tiles of another size than ``tile_size`` are a :class:`DataError`."""

    def __init__(self, data_dir: str | os.PathLike, channel: str, tile_size: int | None = None,
                 wait_s: float = FIFO_WAIT_S, labelled: bool = True, limit: int | None = None,
                 promised: int | None = None, role: str = "read") -> None:
        super().__init__()
        if role not in ("read", "drain", "skip"):
            raise InvalidParameterError(f"role {role!r} is not read, drain or skip")
        self.data_dir, self.channel, self.tile_size, self.wait_s = Path(data_dir), channel, tile_size, wait_s
        self.labelled, self.limit, self.promised, self.role = labelled, limit, promised, role
        self.epoch = 0
        self.records = 0                 # tiles yielded, all epochs
        self.yielded: list[int] = []     # tiles yielded, per epoch
        self.drained: list[int] = []     # records read past the limit (or by a drain role) and discarded, per epoch

    def __len__(self) -> int:
        """The tiles the stream is promised to yield per epoch (the loop asks whether validation is empty)."""
        for n in (self.limit, self.promised):
            if n is not None:
                return int(n)
        raise TypeError(f"the {self.channel} stream has no known length")

    def fifo(self, epoch: int) -> Path:
        return self.data_dir / f"{self.channel}_{epoch}"

    def _open(self, path: Path):
        deadline = time.monotonic() + self.wait_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise DataError(f"{path}: SageMaker's Pipe-mode FIFO did not appear in {self.wait_s:.0f} s; is "
                                f"channel {self.channel!r} in Pipe mode?")
            time.sleep(0.05)
        return open(path, "rb", buffering=1 << 20)  # blocks until the agent opens its end

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        if self.role == "skip":
            self.yielded.append(0)
            self.drained.append(0)
            return
        path = self.fifo(self.epoch)
        self.epoch += 1
        with self._open(path) as fh:
            records = iter_stream_records(fh, str(path))
            n = 0
            if self.role == "read":
                for i, rec in enumerate(records):
                    tile = self._decode(rec, path, i)
                    if self.labelled and tile.label < 0:
                        continue
                    n += 1
                    self.records += 1
                    yield torch.from_numpy(tile.image).permute(2, 0, 1).float().div_(255.0), tile.label
                    if self.limit is not None and n >= self.limit:
                        break
            self.yielded.append(n)
            need = self.limit if self.limit is not None else self.promised
            if self.role == "read" and need is not None and n < need:
                raise ShortStreamError(f"{path}: the stream ended after {n} tile(s); the job was launched with a "
                                       f"promise of {need} per epoch for this channel (the shards in S3 changed, or "
                                       "another job's manifest?); re-launch from the export")
            self.drained.append(sum(1 for _ in iter_stream_records(fh, str(path), verify=False)))

    def _decode(self, rec: bytes, path: Path, i: int):
        try:
            tile = decode_tile_record(rec)
        except DataError as exc:
            raise DataError(f"{path}: record {i}: {exc}") from exc
        if self.tile_size is not None and tile.image.shape[:2] != (self.tile_size, self.tile_size):
            raise DataError(f"{path}: record {i} is a {tile.image.shape[1]}×{tile.image.shape[0]} tile; the "
                            f"job trains on {self.tile_size}² tiles")
        return tile


def _local_rank(env: Mapping[str, str]) -> int:
    for key in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "HOROVOD_LOCAL_RANK"):
        if env.get(key):
            return int(env[key])
    return 0


def epoch_limit(hps: Mapping[str, Any], world: int, batch_size: int) -> int | None:
    """The tiles every rank trains per epoch: ``steps_per_epoch * batch_size / world`` from the promise
    ``wsi_lab_pipe_records`` (``None`` on one process: every tile of the stream)."""
    if world <= 1:
        return None
    promised = hps.get("wsi_lab_pipe_records")
    if not isinstance(promised, int) or promised < 0:
        raise InvalidParameterError("Pipe mode on several processes needs the hyper-parameter wsi_lab_pipe_records "
                                    "(the tiles each process is sure of per epoch; launch sets it): re-launch the job")
    per_rank = batch_size // world
    steps = promised // per_rank
    if steps < 1:
        raise InvalidParameterError(f"Pipe mode: each process is promised {promised} tile(s) per epoch, less than one "
                                    f"batch of {per_rank}; use a smaller batch_size")
    return steps * per_rank


def run_pipe(spec: Any, hps: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Train ``spec``'s ``classify`` or ``vae`` model on this process's Pipe channel (and evaluate the
    validation channel); ``hps`` carry ``wsi_lab_tile_size``, ``wsi_lab_classes`` (classify), and the promises
    ``wsi_lab_pipe_records`` / ``wsi_lab_pipe_val_records`` (set by :func:`wsi_lab.cloud.training.launch`)."""
    from wsi_lab.models.checkpoint import build_model
    from wsi_lab.train.dist import setup_context
    from wsi_lab.train.loop import Parts, classification_metrics, fit
    from wsi_lab.train.recipes import _classify_step, _vae_step
    from wsi_lab.train.run import prepare_out

    check_pipe_task(spec.task)
    classify = spec.task == "classify"
    raw_classes, size = hps.get("wsi_lab_classes"), hps.get("wsi_lab_tile_size")
    classes = [str(c) for c in raw_classes] if isinstance(raw_classes, list) else []
    if not isinstance(size, int) or size < 1 or (classify and len(classes) < 2):
        raise InvalidParameterError("Pipe mode needs the hyper-parameters wsi_lab_tile_size and, for classify, "
                                    "wsi_lab_classes (>= 2 class names); launch sets them from the export's manifest")
    channels = pipe_channels(env)
    local = _local_rank(env)
    if local >= len(channels):
        raise DataError(f"process {local} of this host has no Pipe channel (channels {channels}); the job needs one "
                        "train_<i> channel per process (processes_per_host)")
    data_dir = env.get("SM_INPUT_DIR", "/opt/ml/input") + "/data"
    ctx = setup_context(spec.backend, spec.device)
    try:
        limit = epoch_limit(hps, ctx.world_size, spec.batch_size)
        train_set = PipeTileDataset(data_dir, channels[local], size, labelled=classify, limit=limit)
        val_set = None
        val_name = validation_channel(env)
        if val_name is not None:
            promised = hps.get("wsi_lab_pipe_val_records")
            if not isinstance(promised, int) or promised < 1:
                raise InvalidParameterError(f"the Pipe channel {val_name!r} needs the hyper-parameter "
                                            "wsi_lab_pipe_val_records (its tile count; launch sets it)")
            role = "read" if ctx.is_main else "drain" if ctx.local_rank == 0 else "skip"
            val_set = PipeTileDataset(data_dir, val_name, size, labelled=classify, promised=promised, role=role)
        if ctx.is_main:
            prepare_out(spec)
        ctx.barrier()
        torch.manual_seed(spec.seed)
        cfg = {k: v for k, v in spec.model.items() if k not in ("weights", "sha256")}
        cfg.update({"input_size": size, "classes": classes} if classify else {"input_size": size})
        model = build_model(cfg)
        print(f"wsi-lab: Pipe mode, rank {ctx.rank} reads {data_dir}/{channels[local]}_<epoch>"
              + (f", {limit} tiles per epoch" if limit is not None else ""), flush=True)
        parts = Parts(model, train_set, val_set, _classify_step if classify else _vae_step,
                      loss_is_sum=not classify, metrics=classification_metrics if classify else None,
                      classes=classes)
        result = fit(spec, ctx, parts)
        ctx.barrier()
        return {**result, "rank": ctx.rank, "channel": channels[local], "records": train_set.records,
                "steps_per_epoch": None if limit is None else limit // (spec.batch_size // ctx.world_size),
                "trained": train_set.yielded, "drained": train_set.drained,
                "validated": val_set.yielded if val_set is not None else []}
    finally:
        ctx.close()

