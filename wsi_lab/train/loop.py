"""The one training loop every supervised recipe (vae, classify, mil) runs: epochs over a
DistributedSampler, DDP / Horovod when launched on several processes, mixed precision on GPU,
``metrics.jsonl`` + the SageMaker-parsable lines, atomic ``checkpoints/last.pt`` / ``best.pt`` written
by rank 0 alone, resumption from ``last.pt`` with no epoch repeated, and a NaN guard.

Data parallelism: ``batch_size`` is the global batch; each of the N processes takes ``batch_size / N``
of a DistributedSampler's shard, so N processes see the batches one process sees and, with losses
that are means (or sums scaled by N), take the same optimiser steps. A training split whose size does
not divide by N is padded by the sampler with repeated tiles (PyTorch's usual behaviour); ``tiles`` in
the metrics counts the tiles processed, padding included.

Determinism: the model is built after ``torch.manual_seed(seed)``; each epoch re-seeds the sampler
(``seed``, epoch) and the global RNG (``seed``, epoch, rank), so a resumed run gives the numbers an
uninterrupted one gives, and the same seed gives the same numbers on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_lab.errors import CheckpointError, TrainingError
from wsi_lab.train.dist import DistContext, autocast

log = logging.getLogger(__name__)

__all__ = ["Parts", "fit", "METRIC_PREFIX", "PROGRESS_PREFIX", "emit_metric", "emit_progress"]

METRIC_PREFIX = "WSI_LAB_METRIC "
PROGRESS_PREFIX = "WSI_LAB_PROGRESS "


@dataclass
class Parts:
    """What a recipe hands the loop. ``step(model, batch, device)`` returns ``(loss, n_items, outputs)``:
    ``loss`` summed over the batch when ``loss_is_sum`` (the VAE) or its mean; ``outputs`` are what
    ``metrics(list_of_outputs)`` turns into named numbers for the validation record."""

    model: nn.Module
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset | None
    step: Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, int, Any]]
    loss_is_sum: bool = False
    collate: Callable | None = None
    metrics: Callable[[list[Any]], dict[str, float | None]] | None = None
    classes: list[str] = field(default_factory=list)
    on_epoch: Callable[[int], None] | None = None   # called before each training epoch (bag resampling)


def emit_metric(record: dict) -> None:
    """Print one metrics record on stdout in the run layer's ``WSI_LAB_METRIC {json}`` form."""
    print(METRIC_PREFIX + json.dumps(record), flush=True)


def emit_progress(done: int, total: int, unit: str, message: str = "", metrics: dict | None = None,
                  finished: bool = False) -> None:
    """Print one progress event (``ProgressEvent`` fields) for the launcher's Job to parse."""
    ev = {"done": done, "total": total, "unit": unit, "message": message, "metrics": metrics or {},
          "fraction": done / total if total else 1.0, "finished": finished}
    print(PROGRESS_PREFIX + json.dumps(ev), flush=True)


def _loader(ds, batch: int, shuffle: bool, ctx: DistContext, spec, collate,
            persistent: bool = False) -> torch.utils.data.DataLoader:
    """``persistent``: keep the workers (and their open slides, decoded tiles) between epochs; only where the
    dataset is not changed each epoch in this process (``Parts.on_epoch``), which fresh workers must see."""
    sampler: Any
    if isinstance(ds, torch.utils.data.IterableDataset):  # a stream (SageMaker Pipe mode): each rank reads its own
        return torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0, collate_fn=collate)
    if shuffle and spec.data.get("sampler") == "locality":  # source-tile locality (wsi_lab.data.fast_loader)
        from wsi_lab.data.dataset import collate_tiles, locality_sampler

        sampler = locality_sampler(ds, seed=spec.seed, num_replicas=ctx.world_size, rank=ctx.rank)
        collate = collate or collate_tiles
    elif shuffle:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=spec.seed, drop_last=False)
    else:  # evaluation: this rank's share, no padding, no repeats
        sampler = list(range(ctx.rank, len(ds), ctx.world_size))
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=spec.num_workers,
                                       collate_fn=collate, pin_memory=ctx.device.type == "cuda",
                                       persistent_workers=spec.num_workers > 0 and persistent)


def _wrap(model: nn.Module, opt: torch.optim.Optimizer, ctx: DistContext, spec):
    if ctx.framework == "torch" and ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), opt
    if ctx.framework == "horovod":
        hvd = ctx.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        compression = hvd.Compression.fp16 if spec.horovod.get("fp16_compression") else hvd.Compression.none
        return model, hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), compression=compression)
    return model, opt


def _eval_model(net: nn.Module, model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model validation runs: the bare module with rank 0's buffers (BatchNorm statistics), as DDP's
    own forward would broadcast them, but once, here, so no forward is a collective: ranks may then have
    different numbers of validation batches (this rank's share is not padded), even none."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, 0)
    return model


def _read_resume(out: Path, model: nn.Module, spec) -> dict | None:
    last = out / "checkpoints" / "last.pt"
    if not last.exists():
        return None
    from wsi_lab.models.checkpoint import check_compatible, read_checkpoint

    ckpt = read_checkpoint(last)
    check_compatible(ckpt["config"], getattr(model, "config"), str(last))  # noqa: B009 (nn.Module typing)
    if ckpt.get("task") != spec.task:
        raise CheckpointError(f"{last}: written by task {ckpt.get('task')!r}, not {spec.task!r}; use another out folder")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{last}: does not fit the model ({exc})") from exc
    return ckpt


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Drop records of epochs after the checkpoint's (written before a crash that lost their checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("epoch", 0) <= last_epoch]
    from wsi_lab.io import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _run_epoch(parts: Parts, model, opt, loader, ctx: DistContext, spec, train: bool, epoch: int,
               scaler) -> tuple[float, int, list[Any], float]:
    model.train(train)
    loss_sum, n_sum, outputs = 0.0, 0, []
    t0 = time.perf_counter()
    with torch.set_grad_enabled(train):
        for i, batch in enumerate(loader):
            with autocast(ctx, spec.precision):
                loss, n, out = parts.step(model, batch, ctx.device)
            if not torch.isfinite(loss.detach()).all():
                raise TrainingError(f"the {'training' if train else 'validation'} loss is {float(loss.detach()):g} at epoch "
                                    f"{epoch}, batch {i} (rank {ctx.rank}); lower lr (now {spec.lr:g}) or check "
                                    "the inputs; no checkpoint was written for this epoch")
            if train:
                opt.zero_grad()  # set_to_none by default; Horovod's optimizer takes no argument
                scaled = loss * ctx.world_size if (parts.loss_is_sum and ctx.distributed) else loss
                if scaler is not None:
                    scaler.scale(scaled).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    scaled.backward()
                    opt.step()
            loss_sum += float(loss.detach()) * (1 if parts.loss_is_sum else n)
            n_sum += n
            if out is not None:
                outputs.append(out)
    loss_sum, n_total = ctx.all_sum([loss_sum, float(n_sum)])
    return loss_sum, int(n_total), outputs, time.perf_counter() - t0


def fit(spec, ctx: DistContext, parts: Parts) -> dict[str, Any]:
    """Train ``parts.model`` for ``spec.epochs`` epochs (resuming after ``last.pt``'s epoch); returns
    ``{"epochs_run", "last_epoch", "best", "checkpoint"}``."""
    from wsi_lab.models.checkpoint import save_checkpoint

    out = Path(spec.out)
    ckpt_dir, metrics_path = out / "checkpoints", out / "metrics.jsonl"
    model = parts.model.to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    if ctx.is_main and ckpt_dir.is_dir():
        for stale in ckpt_dir.glob(".*.part"):  # a write killed by SIGKILL
            stale.unlink()
    resumed = _read_resume(out, model, spec)
    start, best = 1, math.inf
    if resumed is not None:
        opt.load_state_dict(resumed["optimizer"])
        start, best = int(resumed["epoch"]) + 1, float(resumed.get("best", math.inf))
        if ctx.is_main:
            _trim_metrics(metrics_path, start - 1)
            print(f"resuming from {ckpt_dir / 'last.pt'} after epoch {start - 1}", flush=True)
    if start > spec.epochs:
        if ctx.is_main:
            print(f"nothing to do: {ckpt_dir / 'last.pt'} already holds epoch {start - 1} of {spec.epochs}", flush=True)
        return {"epochs_run": 0, "last_epoch": start - 1, "best": best, "checkpoint": str(ckpt_dir / "last.pt")}
    scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" and ctx.device.type == "cuda" else None
    net, opt = _wrap(model, opt, ctx, spec)
    per_rank = spec.batch_size // ctx.world_size
    keep = parts.on_epoch is None
    train_loader = _loader(parts.train_set, per_rank, True, ctx, spec, parts.collate, keep)
    val_loader = _loader(parts.val_set, per_rank, False, ctx, spec, parts.collate, keep) \
        if parts.val_set is not None and len(parts.val_set) else None  # type: ignore[arg-type]
    for epoch in range(start, spec.epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):  # not on a stream's loader
            train_loader.sampler.set_epoch(epoch)
        torch.manual_seed(spec.seed * 100_003 + epoch * 1009 + ctx.rank)
        if parts.on_epoch is not None:
            parts.on_epoch(epoch)
        loss_sum, n, _, dt = _run_epoch(parts, net, opt, train_loader, ctx, spec, True, epoch, scaler)
        records: list[dict[str, Any]] = [{"epoch": epoch, "split": "train", "loss": loss_sum / max(n, 1), "tiles": n,
                    "tiles_per_s": n / dt if dt > 0 else 0.0}]
        if val_loader is not None:
            vloss, vn, outs, vdt = _run_epoch(parts, _eval_model(net, model, ctx), opt, val_loader, ctx, spec, False,
                                              epoch, None)
            rec = {"epoch": epoch, "split": "val", "loss": vloss / max(vn, 1), "tiles": vn,
                   "tiles_per_s": vn / vdt if vdt > 0 else 0.0}
            if parts.metrics is not None:
                gathered = [o for rank_outs in ctx.gather(outs) for o in rank_outs]
                rec.update(parts.metrics(gathered))
            records.append(rec)
        score = float(records[-1]["loss"])
        if ctx.is_main:
            _report(records, metrics_path)
            state = {"epoch": epoch, "optimizer": opt.state_dict(), "task": spec.task, "spec": spec.to_dict(),
                     "metrics": records, "best": min(best, score)}
            save_checkpoint(ckpt_dir / "last.pt", model, **state)
            if score < best:
                save_checkpoint(ckpt_dir / "best.pt", model, **state)
            emit_progress(epoch, spec.epochs, "epochs", f"epoch {epoch}/{spec.epochs} done",
                          {k: v for k, v in records[-1].items() if isinstance(v, (int, float))})
        best = min(best, score)
        ctx.barrier()
    return {"epochs_run": spec.epochs - start + 1, "last_epoch": spec.epochs, "best": best,
            "checkpoint": str(ckpt_dir / "last.pt")}


def _report(records: list[dict], metrics_path: Path) -> None:
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with open(metrics_path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    for rec in records:
        emit_metric(rec)
        if rec["split"] == "train":
            print(f"Training Loss: {rec['loss']:.6f}", flush=True)
        else:
            print(f"Validation Loss: {rec['loss']:.6f}", flush=True)
            if "accuracy" in rec:
                print(f"Validation Accuracy: {rec['accuracy']:.6f}", flush=True)
    sys.stdout.flush()


def classification_metrics(outputs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | None]:
    """accuracy, balanced_accuracy and (macro one-vs-rest) auc from ``(probabilities, labels)`` batches."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    probs = np.concatenate([p for p, _ in outputs])
    y = np.concatenate([t for _, t in outputs])
    pred = probs.argmax(1)
    res: dict[str, float | None] = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}
    present = np.unique(y)
    if len(present) >= 2:
        if probs.shape[1] == 2:
            res["auc"] = float(roc_auc_score(y, probs[:, 1]))
        else:
            p = probs[:, present] / probs[:, present].sum(1, keepdims=True)
            res["auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=present))
    else:
        res["auc"] = None  # undefined with one class in the validation split
    return res
