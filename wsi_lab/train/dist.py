"""The process context of a training job: rank / world size from the launcher's environment
(torchrun: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; horovodrun: ``hvd.init()``), the device (CUDA when
present, else CPU), the process group (gloo on CPU, nccl on GPU) and the few collectives the loop uses."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from wsi_lab.errors import InvalidParameterError, MissingDependencyError
from wsi_lab.train.launcher import HOROVOD_INSTALL

log = logging.getLogger(__name__)

__all__ = ["DistContext", "setup_context", "autocast"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, and the framework
    (``none``, ``torch`` for torch.distributed, ``horovod``). Rank 0 alone writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    framework: str = "none"
    hvd: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over every process."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.framework == "torch" else "cpu")
        if self.framework == "horovod":
            t = self.hvd.allreduce(t, op=self.hvd.Sum)
        else:
            torch.distributed.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        if self.framework == "horovod":
            return list(self.hvd.allgather_object(obj))
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.framework == "torch" and self.distributed:
            torch.distributed.barrier()
        elif self.framework == "horovod" and self.distributed:
            self.hvd.barrier()

    def close(self) -> None:
        if self.framework == "torch" and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("job spec key 'device': 'cuda' asked for but no CUDA GPU is available")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_context(backend: str, device: str = "auto", framework: str = "torch") -> DistContext:
    """The :class:`DistContext` of this process for ``backend`` (``local``, ``torchrun``, ``horovod``);
    initialises the process group when the launcher started more than one process. ``framework``
    ``tensorflow``: Horovod's TensorFlow library instead of its torch one (the Keras path)."""
    if backend == "horovod" and framework == "tensorflow":
        from wsi_lab.train.keras_hvd import horovod_context

        return horovod_context()
    if backend == "horovod":
        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise MissingDependencyError("horovod", "horovod", f"backend 'horovod' (install: {HOROVOD_INSTALL})") from exc
        hvd.init()
        dev = _pick_device(device, hvd.local_rank())
        return DistContext(hvd.rank(), hvd.size(), hvd.local_rank(), dev, "horovod", hvd)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev, "torch")


@contextlib.contextmanager
def autocast(ctx: DistContext, precision: str) -> Iterator[None]:
    """Mixed precision for the forward pass: bf16/fp16 autocast on CUDA, bf16 on CPU, nothing for fp32."""
    if precision == "fp32":
        yield
        return
    if precision == "fp16" and ctx.device.type != "cuda":
        raise InvalidParameterError("job spec key 'precision': fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(ctx.device.type, dtype=dtype):
        yield
