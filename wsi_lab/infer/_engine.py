"""The model side of inference: loading a model with its identity (checkpoint hash, kind, classes),
checking it against a table, choosing device/precision, and running one slide's rows in batches.

Imports torch (the public ``wsi_lab.infer`` package loads this module only when a model is run)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError

__all__ = ["LoadedModel", "load_model", "check_table", "resolve_device", "autocast", "run_rows"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class LoadedModel:
    """A model in eval mode with what inference needs to know about it."""

    model: nn.Module
    kind: str                 # "classifier", "vae" or "mil"
    classes: list[str]
    input_size: int | None    # tile side the model takes (None for MIL)
    checkpoint_hash: str      # SHA-256 of the checkpoint file, or of the weights for an in-memory model
    source: str               # the checkpoint path, or "<model>"
    path: str | None = None   # the checkpoint file (workers reload from it)


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    cfg = getattr(model, "config", {})
    h.update(repr(sorted(cfg.items()) if isinstance(cfg, dict) else cfg).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(model_or_checkpoint: nn.Module | str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A :class:`LoadedModel` from a checkpoint path (``wsi_lab.models.load``) or a model object."""
    from wsi_lab.io import file_sha256
    from wsi_lab.models.checkpoint import load

    if isinstance(model_or_checkpoint, nn.Module):
        model, source, path = getattr(model_or_checkpoint, "module", model_or_checkpoint), "<model>", None
        digest = _state_hash(model)
        model = model.to(device).eval()
    elif isinstance(model_or_checkpoint, (str, os.PathLike)):
        path = str(model_or_checkpoint)
        model, source = load(path, device=device), path
        digest = file_sha256(path)
    else:
        raise InvalidParameterError(f"predict needs a model or a checkpoint path, got {type(model_or_checkpoint).__name__}")
    kind = str(getattr(model, "kind", ""))
    if kind not in ("classifier", "vae", "mil"):
        raise CheckpointError(f"{source}: a {type(model).__name__} (kind {kind!r}) cannot predict tiles; "
                              "expected a classifier, a VAE or an attention-MIL model")
    classes = [str(c) for c in getattr(model, "classes", [])] if kind != "vae" else []
    size = getattr(model, "input_size", None)
    return LoadedModel(model, kind, classes, int(size) if size is not None else None, digest, source, path)


def check_table(lm: LoadedModel, table: pd.DataFrame, source: str = "table", label_column: str = "label") -> None:
    """Refuse a table the model cannot read: empty, tile size differing from the model's input size,
    or labels that are not among the model's classes (naming the checkpoint and the values)."""
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"{source}: expected a TileTable (pandas DataFrame), got {type(table).__name__}")
    if len(table) == 0:
        raise DataError(f"{source}: the TileTable is empty: nothing to predict (tile the slides first)")
    from wsi_lab.data.tile_reader import TILE_COLUMNS, require_columns

    require_columns(table, TILE_COLUMNS, f"predict ({source})")
    if lm.input_size is not None:
        sizes = sorted(int(s) for s in pd.unique(table["tile_size"]))
        if sizes != [lm.input_size]:
            raise CheckpointError(f"{lm.source}: the model takes {lm.input_size}² tiles but {source} has tile_size "
                                  f"{sizes}; re-tile with tile_size={lm.input_size} or use a matching checkpoint")
    if lm.classes and label_column in table.columns:
        from wsi_lab.data.tile_reader import label_key

        labels = {label_key(v) for v in pd.unique(table[label_column].dropna())}
        unknown = sorted(labels - set(lm.classes))
        if unknown:
            raise CheckpointError(f"{lm.source}: the model's classes are {lm.classes} but {source} has "
                                  f"{label_column} value(s) {unknown[:10]}; use the checkpoint trained on these "
                                  "classes (or drop the label column)")


def resolve_device(device: str | torch.device | None = None, precision: str = "auto") -> tuple[torch.device, str]:
    """``(device, precision)``: CUDA when present (``device=None``), else the CPU; ``auto`` precision is
    bf16 on a GPU that supports it (fp16 otherwise) and fp32 on the CPU. fp16 needs CUDA."""
    if precision not in PRECISIONS:
        raise InvalidParameterError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {str(dev)!r} asked for but CUDA is not available here; use device='cpu'")
    if precision == "auto":
        precision = "fp32" if dev.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16" and dev.type != "cuda":
        raise InvalidParameterError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return dev, precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batches(rows: pd.DataFrame, slide_path: str, batch_size: int, num_workers: int, pin: bool,
             backend: str) -> Iterator[torch.Tensor]:
    from wsi_lab.data.dataset import TileDataset

    sid = str(rows["slide_id"].iloc[0])
    ds = TileDataset(rows, slide_paths={sid: slide_path}, label_column="__none__", backend=backend)
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
    try:
        for images, _ in loader:
            yield images
    finally:
        ds.close()


def _mil_bag(rows: pd.DataFrame, features: str | os.PathLike) -> torch.Tensor:
    """The slide's feature bag ordered like ``rows`` (matched on level-0 x, y)."""
    from wsi_lab.train.features import read_features

    sid = str(rows["slide_id"].iloc[0])
    feats, coords, _ = read_features(features, sid)
    index = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(coords["x"], coords["y"]))}
    try:
        order = [index[(int(x), int(y))] for x, y in zip(rows["x"], rows["y"])]
    except KeyError as exc:
        raise DataError(f"{Path(features) / (sid + '.npz')}: no features for tile {exc.args[0]} of slide {sid!r}; "
                        "re-run the features job over this table") from exc
    return torch.from_numpy(np.ascontiguousarray(feats[order], dtype=np.float32))


@torch.no_grad()
def run_rows(lm: LoadedModel, rows: pd.DataFrame, slide_path: str, *, batch_size: int = 64, num_workers: int = 0,
             device: torch.device, precision: str, backend: str = "auto", features: str | os.PathLike | None = None,
             on_batch: Callable[[int], None] | None = None, recon_error: bool = True) -> pd.DataFrame:
    """The new columns for one slide's ``rows`` (same index): ``prob_<class>`` + ``pred`` (classifier),
    ``z_..`` + ``recon_error`` (VAE), ``attention`` + the slide's ``prob_<class>``/``pred`` (MIL)."""
    model: Any = lm.model
    if lm.kind == "mil":
        if features is None:
            raise InvalidParameterError("an attention-MIL model predicts from tile features: pass features=<folder "
                                        "of the features job's .npz files>")
        bag = _mil_bag(rows, features).to(device)
        with autocast(device, precision):
            logits, attention = model(bag)
        probs = torch.softmax(logits.float(), 1)[0].cpu().numpy()
        out = pd.DataFrame({"attention": attention.float()[0].cpu().numpy().astype(np.float32)}, index=rows.index)
        for c, p in zip(lm.classes, probs):
            out[f"slide_prob_{c}"] = np.float32(p)
        out["slide_pred"] = lm.classes[int(np.argmax(probs))]
        if on_batch:
            on_batch(len(rows))
        return out
    pin = device.type == "cuda"
    chunks: list[dict[str, np.ndarray]] = []
    for images in _batches(rows, slide_path, batch_size, num_workers, pin, backend):
        # channels-last: oneDNN / cuDNN convolutions run faster on NHWC (same numbers within float rounding)
        x = images.to(device, non_blocking=pin).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            if lm.kind == "classifier":
                p = torch.softmax(model(x).float(), 1)
                chunks.append({"probs": p.cpu().numpy()})
            else:
                mu, _ = model.encode_distribution(x)
                chunk = {"z": mu.float().cpu().numpy()}
                if recon_error:
                    recon = model.decode(mu).float()
                    chunk["err"] = ((recon - x.float()) ** 2).flatten(1).mean(1).cpu().numpy()
                chunks.append(chunk)
        if on_batch:
            on_batch(len(x))
    out = pd.DataFrame(index=rows.index)
    if lm.kind == "classifier":
        probs = np.concatenate([c["probs"] for c in chunks]).astype(np.float32)
        for i, c in enumerate(lm.classes):
            out[f"prob_{c}"] = probs[:, i]
        out["pred"] = np.asarray(lm.classes, dtype=object)[probs.argmax(1)]
    else:
        from wsi_lab.models.latents import latent_columns

        z = np.concatenate([c["z"] for c in chunks]).astype(np.float32)
        for i, c in enumerate(latent_columns(z.shape[1])):
            out[c] = z[:, i]
        if recon_error:
            out["recon_error"] = np.concatenate([c["err"] for c in chunks]).astype(np.float32)
    return out
