"""Pipe-mode training inside the container: SageMaker streams each channel's S3 objects (here the TFRecord
shards of ``wsi-lab export``) through a FIFO ``/opt/ml/input/data/<channel>_<epoch>``, a new FIFO per epoch
(``train_0_0``, ``train_0_1``, ... for channel ``train_0``). Each process reads its own channel
(``train_<local rank>``, ``ShardedByS3Key`` giving each host its share of the shards) with
:class:`PipeTileDataset`, a streaming ``IterableDataset``, and the one training loop
(:func:`wsi_lab.train.loop.fit`) trains the PyTorch classifier on it. No TensorFlow is needed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from wsi_lab.data.tfrecord_stream import decode_tile_record, iter_stream_records
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["PipeTileDataset", "pipe_channels", "run_pipe_classify", "FIFO_WAIT_S"]

FIFO_WAIT_S = 600.0  # how long to wait for the agent to create an epoch's FIFO


def pipe_channels(env: Mapping[str, str]) -> list[str]:
    """The ``train*`` channels of this job that are in Pipe mode (``SM_INPUT_DATA_CONFIG``, else
    ``/opt/ml/input/config/inputdataconfig.json``), sorted by their number."""
    raw = env.get("SM_INPUT_DATA_CONFIG")
    if not raw:
        path = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "inputdataconfig.json"
        raw = path.read_text() if path.is_file() else "{}"
    config = json.loads(raw)
    names = [n for n, c in config.items() if n.startswith("train") and c.get("TrainingInputMode") == "Pipe"]
    return sorted(names, key=lambda n: (len(n), n))


class PipeTileDataset(torch.utils.data.IterableDataset):
    """``(image (3, H, W) float in [0, 1], label)`` for every record of one Pipe channel. Each iteration
    reads the next epoch's FIFO ``<data_dir>/<channel>_<k>`` (k = 0, 1, ...: the epochs this container has
    read, so a resumed job reads the FIFOs in the order SageMaker creates them); unlabelled records
    (label -1) are skipped; tiles of another size than ``tile_size`` are a :class:`DataError`."""

    def __init__(self, data_dir: str | os.PathLike, channel: str, tile_size: int | None = None,
                 wait_s: float = FIFO_WAIT_S) -> None:
        super().__init__()
        self.data_dir, self.channel, self.tile_size, self.wait_s = Path(data_dir), channel, tile_size, wait_s
        self.epoch = 0
        self.records = 0

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
        path = self.fifo(self.epoch)
        self.epoch += 1
        with self._open(path) as fh:
            for i, rec in enumerate(iter_stream_records(fh, str(path))):
                try:
                    tile = decode_tile_record(rec)
                except DataError as exc:
                    raise DataError(f"{path}: record {i}: {exc}") from exc
                if self.tile_size is not None and tile.image.shape[:2] != (self.tile_size, self.tile_size):
                    raise DataError(f"{path}: record {i} is a {tile.image.shape[1]}×{tile.image.shape[0]} tile; the "
                                    f"job trains on {self.tile_size}² tiles")
                if tile.label < 0:
                    continue
                self.records += 1
                yield torch.from_numpy(tile.image).permute(2, 0, 1).float().div_(255.0), tile.label


def _local_rank(env: Mapping[str, str]) -> int:
    for key in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "HOROVOD_LOCAL_RANK"):
        if env.get(key):
            return int(env[key])
    return 0


def run_pipe_classify(spec: Any, hps: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Train ``spec``'s classifier on this process's Pipe channel; ``hps`` carry ``wsi_lab_classes`` (class
    names in label-index order) and ``wsi_lab_tile_size`` (set by :func:`wsi_lab.cloud.training.launch`)."""
    from wsi_lab.models.checkpoint import build_model
    from wsi_lab.train.dist import setup_context
    from wsi_lab.train.loop import Parts, classification_metrics, fit
    from wsi_lab.train.recipes import _classify_step
    from wsi_lab.train.run import prepare_out

    if spec.task != "classify":
        raise InvalidParameterError(f"job spec key 'task': Pipe mode trains the tile classifier (classify), not "
                                    f"{spec.task!r}; use File or FastFile")
    classes, size = hps.get("wsi_lab_classes"), hps.get("wsi_lab_tile_size")
    if not isinstance(classes, list) or len(classes) < 2 or not isinstance(size, int) or size < 1:
        raise InvalidParameterError("Pipe mode needs the hyper-parameters wsi_lab_classes (>= 2 class names) and "
                                    "wsi_lab_tile_size (launch sets them from the export's manifest)")
    channels = pipe_channels(env)
    local = _local_rank(env)
    if local >= len(channels):
        raise DataError(f"process {local} of this host has no Pipe channel (channels {channels}); the job needs one "
                        "train_<i> channel per process (processes_per_host)")
    data_dir = env.get("SM_INPUT_DIR", "/opt/ml/input") + "/data"
    train_set = PipeTileDataset(data_dir, channels[local], size)
    ctx = setup_context(spec.backend, spec.device)
    try:
        if ctx.is_main:
            prepare_out(spec)
        ctx.barrier()
        torch.manual_seed(spec.seed)
        model = build_model({**{k: v for k, v in spec.model.items() if k not in ("weights", "sha256")},
                             "input_size": size, "classes": list(classes)})
        print(f"wsi-lab: Pipe mode, reading {data_dir}/{channels[local]}_<epoch>", flush=True)
        result = fit(spec, ctx, Parts(model, train_set, None, _classify_step, metrics=classification_metrics,
                                      classes=list(classes)))
        ctx.barrier()
        return {**result, "records": train_set.records}
    finally:
        ctx.close()
