"""Training and feature jobs: :class:`JobSpec`, one recipe per task (:data:`RECIPES`), the one entry
point ``python -m wsi_lab.train --spec spec.json`` and :func:`launch` (local, torchrun, horovod).

Importing this package, the spec and the launcher needs no torch; the recipes load it.
"""

from __future__ import annotations

import importlib
from typing import Any

from wsi_lab.train.spec import BACKENDS, PRECISIONS, TASKS, JobSpec

_LAZY = {"launch": "wsi_lab.train.launcher", "TrainJob": "wsi_lab.train.launcher", "run_spec": "wsi_lab.train.run",
         "RECIPES": "wsi_lab.train.recipes", "get_recipe": "wsi_lab.train.recipes",
         "read_features": "wsi_lab.train.features"}

__all__ = ["JobSpec", "TASKS", "BACKENDS", "PRECISIONS", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_lab.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
