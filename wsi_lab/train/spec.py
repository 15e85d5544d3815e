"""``JobSpec``: everything a training or feature job needs, as one frozen, validated, hashable record
that round-trips through JSON and YAML (a :class:`wsi_lab.runs.Spec`). No torch import here."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.spec import Spec

__all__ = ["JobSpec", "TASKS", "BACKENDS", "PRECISIONS", "MODEL_PRESETS", "TASK_MODELS"]

TASKS = ("vae", "classify", "features", "mil", "segment")
BACKENDS = ("local", "torchrun", "horovod", "sagemaker")
PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_PRESETS = ("small_cnn", "resnet18", "resnet50", "timm:<name>", "vae", "abmil", "deeplabv3", "unet")
# which model names each task accepts (features: an encoder of wsi_lab.models.encoders)
TASK_MODELS = {"vae": ("vae",), "classify": ("small_cnn", "resnet18", "resnet50", "timm:"), "mil": ("abmil",),
               "segment": ("deeplabv3", "unet"), "features": ()}
_DEFAULT_MODEL = {"vae": "vae", "classify": "small_cnn", "mil": "abmil", "segment": "unet"}
SAMPLER_KEYS = ("positive_fraction", "threshold", "column", "hard_negatives")
# spec keys that may change between a run and its resumption (the rest must match the checkpoint's job)
RESUMABLE_CHANGES = ("epochs", "backend", "nproc", "num_workers", "precision", "device")


def _model_accepts(task: str, name: str) -> bool:
    if task == "features":
        return True  # checked against the encoder registry when the job starts (needs no torch here)
    return any((name.startswith(m) and len(name) > len(m)) if m.endswith(":") else name == m
               for m in TASK_MODELS[task])


@dataclass(frozen=True)
class JobSpec(Spec):
    """A training / feature-extraction job (see the field comments; sizes in pixels, lr per step).

    ``model`` is a preset name or ``{"name": ..., options}``: ``small_cnn``, ``resnet18``, ``resnet50``,
    ``timm:<name>`` (classify), ``vae``, ``abmil`` (mil), ``unet``, ``deeplabv3`` (segment), an encoder name such as ``h-optimus-0``
    (features); options ``weights`` / ``sha256`` name a local weights file. ``batch_size`` is the global
    batch: each of ``nproc`` processes takes ``batch_size / nproc``."""

    _spec_name: ClassVar[str] = "job spec key"

    task: str
    table: str
    out: str
    model: Any = None                  # str or {"name": ..., options}; stored as a dict (default: per task)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    backend: str = "local"
    nproc: int = 1
    num_workers: int = 0
    precision: str = "fp32"
    device: str = "auto"               # auto (CUDA when present), cpu or cuda
    max_tiles: int | None = None       # MIL: tiles sampled per bag (reproducibly)
    features: str | None = None        # MIL: folder of per-slide feature files (from a features job)
    label_column: str = "label"
    split_column: str = "split"
    train_split: str = "train"
    val_split: str = "val"
    annotations: str | None = None     # segment: folder of <slide_id>.xml/.geojson (ASAP, QuPath) or one file
    label_map: Any = None              # segment: {label: class name or index} or "_0:1 _1:1 _2:0" (default: per labels)
    sampler: Mapping[str, Any] | None = None  # {"positive_fraction", "threshold", "column"}: balanced tiles per epoch
    horovod: Mapping[str, Any] = field(default_factory=dict)   # {"fp16_compression": bool}
    data: Mapping[str, Any] = field(default_factory=dict)      # how `table` is read: see wsi_lab.train.data.DATA_OPTIONS
    sagemaker: Mapping[str, Any] | None = None                 # SageMaker settings (train/sagemaker_block.py)

    def __post_init__(self) -> None:
        model = self.model
        if model is None:
            model = _DEFAULT_MODEL.get(self.task)
        if isinstance(model, str):
            model = {"name": model}
        elif isinstance(model, Mapping):
            model = dict(model)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "horovod", dict(self.horovod or {}))
        object.__setattr__(self, "data", dict(self.data or {}))

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> JobSpec:
        def bad(key: str, why: str) -> InvalidParameterError:
            return InvalidParameterError(f"job spec key {key!r}: {why}")

        def intval(key: str, lo: int) -> None:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(key, f"must be an integer >= {lo}, got {v!r}")

        if self.task not in TASKS:
            raise bad("task", f"{self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "segment" and not (isinstance(self.annotations, str) and self.annotations.strip()):
            raise bad("annotations", "task 'segment' needs the annotation folder (<slide_id>.xml / .geojson) or file")
        if self.label_map is not None and not isinstance(self.label_map, (str, Mapping)):
            raise bad("label_map", f"must be a mapping {{label: class}} or a string like '_0:1 _2:0', got {self.label_map!r}")
        if self.sampler is not None:
            if self.task not in ("classify", "segment"):
                raise bad("sampler", f"balanced tile sampling is for tasks classify and segment, not {self.task!r}")
            if not isinstance(self.sampler, Mapping):
                raise bad("sampler", f"must be a mapping with keys {list(SAMPLER_KEYS)}, got {self.sampler!r}")
            unknown_s = sorted(set(self.sampler) - set(SAMPLER_KEYS))
            if unknown_s:
                raise bad("sampler", f"unknown option(s) {unknown_s}; known: {list(SAMPLER_KEYS)}")
            pf, th = self.sampler.get("positive_fraction", 0.5), self.sampler.get("threshold", 0.0)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (pf, th)) or \
                    not (0 <= pf <= 1 and 0 <= th < 1):
                raise bad("sampler", f"positive_fraction must be in [0, 1] and threshold in [0, 1), got {pf!r}, {th!r}")
            if self.sampler.get("hard_negatives") is not None:
                from wsi_lab.train.mining import check_hard_negatives  # no torch

                check_hard_negatives(self.sampler["hard_negatives"], self.task)
        for key in ("table", "out"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise bad(key, f"must be a non-empty path, got {getattr(self, key)!r}")
        if not isinstance(self.model, dict) or not isinstance(self.model.get("name"), str) or not self.model["name"]:
            raise bad("model", f"must be a preset name or {{'name': ..., options}}, got {self.model!r}")
        name = self.model["name"]
        if not _model_accepts(self.task, name):
            raise bad("model", f"{name!r} cannot be trained by task {self.task!r}; use one of "
                               f"{', '.join(m + ('<name>' if m.endswith(':') else '') for m in TASK_MODELS[self.task])}")
        for key, lo in (("epochs", 1), ("batch_size", 1), ("nproc", 1), ("num_workers", 0)):
            intval(key, lo)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", f"must be an integer, got {self.seed!r}")
        for key in ("lr", "weight_decay"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (key == "lr" and v == 0):
                raise bad(key, f"must be a finite number {'> 0' if key == 'lr' else '>= 0'}, got {v!r}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "sagemaker" and self.sagemaker is None:
            raise bad("sagemaker", "backend 'sagemaker' needs the block {'bucket', 'role', 'instance_type', ...}")
        if self.sagemaker is not None:
            from wsi_lab.train.sagemaker_block import check_sagemaker_block

            check_sagemaker_block(self.sagemaker, self.batch_size)
        if self.backend == "local" and self.nproc != 1:
            raise bad("nproc", f"backend 'local' runs one process, got nproc={self.nproc}; use backend 'torchrun'")
        if self.batch_size % self.nproc:
            raise bad("batch_size", f"the global batch {self.batch_size} must divide evenly over nproc={self.nproc}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", f"{self.device!r} is not one of auto, cpu, cuda")
        if self.max_tiles is not None:
            intval("max_tiles", 1)
        if self.task == "mil" and not self.features:
            raise bad("features", "task 'mil' needs the folder of per-slide feature files (from a features job)")
        from wsi_lab.train.data import check_data_options  # the one table of data options (no torch)

        check_data_options(self)
        unknown_hvd = sorted(set(self.horovod) - {"fp16_compression"})
        if unknown_hvd:
            raise bad("horovod", f"unknown option(s) {unknown_hvd}; known: ['fp16_compression']")
        return self

    # -- files --------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` (needs PyYAML)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> JobSpec:
        """Parse YAML text (a mapping) and :meth:`from_dict` it."""
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidParameterError(f"JobSpec: not valid YAML ({exc})") from exc
        if not isinstance(d, dict):
            raise InvalidParameterError(f"JobSpec: the YAML must be a mapping, got {type(d).__name__}")
        return cls.from_dict(d)

    @classmethod
    def read(cls, path: str | os.PathLike) -> JobSpec:
        """Read a spec file: YAML for ``.yaml``/``.yml``, JSON otherwise."""
        p = Path(path)
        if not p.is_file():
            raise InvalidParameterError(f"{p}: job spec file not found")
        text = p.read_text(encoding="utf-8")
        try:
            return cls.from_yaml(text) if p.suffix.lower() in (".yaml", ".yml") else cls.from_json(text)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{p}: {exc}") from exc

    def write(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON (or YAML for ``.yaml``/``.yml``) atomically."""
        from wsi_lab.io import atomic_write_bytes

        p = Path(path)
        text = self.to_yaml() if p.suffix.lower() in (".yaml", ".yml") else self.to_json(indent=2) + "\n"
        atomic_write_bytes(p, text.encode())
        return p

    def identity(self) -> dict[str, Any]:
        """The keys that make two specs the same job (those a resumed run may not change)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES}

    def with_changes(self, **changes: Any) -> JobSpec:
        """A validated copy with ``changes`` (``None`` values are ignored: CLI flags left unset)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()
