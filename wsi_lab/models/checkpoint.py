"""Model checkpoints that rebuild themselves: each holds the model's config and class names next to
its weights, so :func:`load` needs no other input. Written atomically; read with
``torch.load(weights_only=True)`` only (plain dicts, lists, numbers, strings and tensors)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_lab.errors import CheckpointError, InvalidParameterError
from wsi_lab.io import atomic_path

__all__ = ["FORMAT", "build_model", "save_checkpoint", "read_checkpoint", "load", "check_compatible"]

FORMAT = "wsi_lab.checkpoint/1"
# config keys that make two models incompatible (a checkpoint for one cannot resume or load into the other)
_IDENTITY_KEYS = ("name", "input_size", "latent_dim", "h_dim", "in_channels", "num_classes", "in_dim", "hidden_dim",
                  "attention_dim")


def build_model(config: Mapping[str, Any] | str) -> nn.Module:
    """A fresh (random-init) model from a preset name or a config ``{"name": ..., options}``: ``vae``,
    ``small_cnn``, ``resnet18``, ``resnet50``, ``timm:<name>``, ``abmil``, ``deeplabv3``, ``unet``."""
    cfg = {"name": config} if isinstance(config, str) else dict(config)
    name = str(cfg.pop("name", ""))
    try:
        if name == "vae":
            from wsi_lab.models.vae import VAE

            return VAE(**cfg)
        if name == "abmil":
            from wsi_lab.models.mil import AttentionMIL

            return AttentionMIL(**cfg)
        if name in ("small_cnn", "resnet18", "resnet50") or name.startswith("timm:"):
            from wsi_lab.models.classifier import TileClassifier

            return TileClassifier(name, **cfg)
        if name in ("deeplabv3", "unet"):
            from wsi_lab.models.segmentation import SegmentationModel

            return SegmentationModel(name, **cfg)
    except TypeError as exc:  # an unknown option
        raise InvalidParameterError(f"model {name!r}: {exc}") from exc
    raise InvalidParameterError(f"unknown model {name!r}; choose vae, small_cnn, resnet18, resnet50, timm:<name>, "
                                "abmil, deeplabv3 or unet")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write ``model`` (its ``config``, ``classes`` and state dict) plus ``extra`` entries (epoch,
    optimizer state, metrics, the job spec as a dict) to ``path`` atomically: a reader never sees a
    partial file, and a failed write leaves the old one."""
    model = getattr(model, "module", model)  # DDP wraps the model
    payload = {"format": FORMAT, "kind": getattr(model, "kind", type(model).__name__), "config": model.config,
               "classes": list(getattr(model, "classes", []) or []),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (safe load). Raises :class:`CheckpointError` naming the file
    when it is missing, unreadable or not a WSI Lab checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of arbitrary objects refused by weights_only
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise CheckpointError(f"{p}: not a WSI Lab checkpoint (no {FORMAT!r} format marker); for plain weights "
                              "use the weights option of the model")
    return ckpt


def check_compatible(config: Mapping[str, Any], expected: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` when ``config`` and ``expected`` differ in a key that defines the
    model (name, input/tile size, latent size, classes ...), naming the key and both values."""
    for key in _IDENTITY_KEYS:
        if key in expected and key in config and config[key] != expected[key]:
            raise CheckpointError(f"{source}: {key} is {config[key]!r} but {expected[key]!r} is expected; "
                                  "the checkpoint belongs to a different model or tile size")
        if key in expected and key not in config:
            raise CheckpointError(f"{source}: has no {key!r}; the checkpoint belongs to a different model")


def load(checkpoint: str | os.PathLike | Mapping[str, Any], expect: Mapping[str, Any] | None = None,
         device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in ``checkpoint`` (a path or a dict from :func:`read_checkpoint`) from
    its own config and class names, load its weights, and return it in eval mode on ``device``.
    ``expect``: config values the model must have (e.g. ``{"name": "vae", "input_size": 64}``)."""
    ckpt = read_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint"
    if expect:
        check_compatible(ckpt["config"], expect, source)
    model = build_model(ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not match the stored config ({exc})") from exc
    return model.to(device).eval()
