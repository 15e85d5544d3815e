"""Loading weights from a local file the user names: SHA-256 checked, ``torch.load(weights_only=True)``
(never unpickling arbitrary objects), nothing downloaded, ever."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_lab.errors import CheckpointError
from wsi_lab.io import file_sha256

log = logging.getLogger(__name__)

__all__ = ["read_state_file", "load_weights", "HEAD_PREFIXES"]

# parameters of a classification head: dropped (with a log line) when their shape differs, so an
# ImageNet-pretrained backbone can be fine-tuned to N classes
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head.fc.", "last_linear.")


def read_state_file(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """Read a ``.pt``/``.pth``/``.bin``/``.safetensors`` file of tensors safely; ``sha256`` (hex) is
    checked first when given. Raises :class:`CheckpointError` naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found (weights are only read from a local file)")
    if sha256:
        got = file_sha256(p)
        if got.lower() != sha256.lower():
            raise CheckpointError(f"{p}: SHA-256 {got} does not match the expected {sha256}; "
                                  "the file is corrupt or not the one named")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(f"{p}: reading .safetensors needs the safetensors package") from exc
        return dict(load_file(str(p)))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, non-tensor objects refused by weights_only
        raise CheckpointError(f"{p}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _state_dict_of(obj: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state


def load_weights(module: nn.Module, path: str | os.PathLike, sha256: str | None = None,
                 allow_new_head: bool = True) -> list[str]:
    """Load a local weights file into ``module``. Head parameters whose shape differs are skipped
    (fine-tuning to other classes) when ``allow_new_head``; any other missing, unexpected or
    mis-shaped key raises :class:`CheckpointError`. Returns the names of skipped keys."""
    p = Path(path)
    state = _state_dict_of(read_state_file(p, sha256), p)
    own = module.state_dict()
    skipped = []
    for k in list(state):
        if k in own and own[k].shape != state[k].shape:
            if allow_new_head and k.startswith(HEAD_PREFIXES):
                skipped.append(k)
                del state[k]
            else:
                raise CheckpointError(f"{p}: parameter {k!r} has shape {tuple(state[k].shape)} but the model "
                                      f"expects {tuple(own[k].shape)}: the weights are for another model or size")
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    if unexpected or (missing and not all(k.startswith(HEAD_PREFIXES) for k in missing)):
        raise CheckpointError(f"{p}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    module.load_state_dict(state, strict=False)
    if skipped or missing:
        log.info("%s: kept the new head for %s", p, sorted(set(skipped) | set(missing)))
    return skipped
