"""Tiling parameters as frozen :class:`~wsi_lab.runs.Spec` dataclasses (JSON round-trip, validation
naming the key, stable hash); the UI saves per-slide overrides with them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.spec import Spec
from wsi_lab.tissue import DEFAULT_METHOD as DEFAULT_TISSUE_METHOD
from wsi_lab.tissue import METHODS as TISSUE_METHODS

__all__ = ["TilingParams", "TwoStage", "MAX_TILE_SIZE", "save_override", "load_overrides"]

MAX_TILE_SIZE = 16384
FINE_METHODS = ("variance", "background", "saturation", "brightness")


@dataclass(frozen=True)
class TwoStage(Spec):
    """The classic two-pass filter at full resolution.

    Coarse pass: candidate tiles of ``coarse`` output pixels (the tile size) are kept when their coarse
    score passes: ``coarse_source="mask"`` uses a low-resolution :func:`~wsi_lab.detect_tissue` mask
    (``coarse_method``/``coarse_params``, keep when tissue fraction > ``coarse_min``); ``"pixels"`` reads
    every grid tile and keeps it when its ``coarse_method`` statistic passes ``coarse_threshold``.
    Fine pass: each candidate is cut into ``fine`` × ``fine`` sub-tiles at the output resolution; a
    sub-tile passes when its ``fine_method`` statistic passes ``fine_threshold``; the tile is kept when
    the passing fraction ≥ ``min_fine_fraction`` (default: the run's ``min_tissue``).
    Statistics: ``variance`` (all channels, > t), ``background`` (near-white/black fraction ≤ 0.5 with
    intensity cut t), ``saturation`` (mean > t), ``brightness`` (mean brightest channel > t, fluorescence).
    """

    coarse: int = 256
    fine: int = 64
    coarse_source: str = "mask"
    coarse_method: str = "variance"
    coarse_threshold: float | None = None
    coarse_params: dict = field(default_factory=dict)
    coarse_min: float = 0.0
    fine_method: str = "variance"
    fine_threshold: float | None = None
    min_fine_fraction: float | None = None
    modality: str = "auto"

    _spec_name = "two-stage parameter"

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> TwoStage:
        """``"256:64"`` -> ``TwoStage(coarse=256, fine=64)``."""
        try:
            c, f = (int(v) for v in str(spec).split(":"))
        except ValueError as exc:
            raise InvalidParameterError(f"two-stage spec {spec!r} must look like COARSE:FINE, e.g. 256:64") from exc
        return cls(coarse=c, fine=f, **kw).validate()

    def validate(self) -> TwoStage:
        for name in ("coarse", "fine"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TILE_SIZE:
                raise InvalidParameterError(f"two-stage {name} size must be an integer in 1..{MAX_TILE_SIZE}, got {v!r}")
        if self.coarse % self.fine:
            raise InvalidParameterError(f"two-stage fine size {self.fine} must divide the coarse size {self.coarse}")
        if self.coarse_source not in ("mask", "pixels"):
            raise InvalidParameterError(f"coarse_source must be 'mask' or 'pixels', got {self.coarse_source!r}")
        for name in ("coarse_method", "fine_method"):
            v = getattr(self, name)
            ok = TISSUE_METHODS if (name == "coarse_method" and self.coarse_source == "mask") else FINE_METHODS
            if v not in ok:
                raise InvalidParameterError(f"two-stage {name}={v!r}; choose one of {', '.join(ok)}")
        for name in ("coarse_min", "min_fine_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise InvalidParameterError(f"two-stage {name} must be in [0, 1], got {v!r}")
        for name in ("coarse_threshold", "fine_threshold"):
            v = getattr(self, name)
            if v is not None and not (0 <= float(v) <= 255 * 255):
                raise InvalidParameterError(f"two-stage {name} must be ≥ 0, got {v!r}")
        return self



@dataclass(frozen=True)
class TilingParams(Spec):
    """Everything that decides which tiles a slide gives. Sizes in output pixels; ``mpp`` in µm/px
    (None: work by ``level``, or the slide's native resolution); ``method`` is the tissue method
    (None: keep every tile); ``slide_mpp`` is the µm/px to assume for slides whose metadata lacks it."""

    tile_size: int = 256
    mpp: float | None = None
    level: int | None = None
    overlap: int = 0
    method: str | None = DEFAULT_TISSUE_METHOD
    method_params: dict = field(default_factory=dict)
    mask_downsample: float | None = None
    min_tissue: float = 0.5
    two_stage: TwoStage | None = None
    jpeg_quality: int = 90
    slide_mpp: float | None = None
    backend: str = "auto"

    _spec_name = "tiling parameter"

    def validate(self) -> TilingParams:
        ts = self.tile_size
        if isinstance(ts, bool) or not isinstance(ts, int) or not 1 <= ts <= MAX_TILE_SIZE:
            raise InvalidParameterError(f"tile_size must be an integer in 1..{MAX_TILE_SIZE}, got {ts!r}")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap < ts:
            raise InvalidParameterError(f"overlap must be an integer in 0..tile_size-1 ({ts - 1}), got {self.overlap!r}")
        for name in ("mpp", "slide_mpp"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < 1000 and math.isfinite(v)):
                raise InvalidParameterError(f"{name} must be a positive µm/px, got {v!r}")
        if self.level is not None and (isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0):
            raise InvalidParameterError(f"level must be a non-negative integer, got {self.level!r}")
        if not (isinstance(self.min_tissue, (int, float)) and 0 <= self.min_tissue <= 1):
            raise InvalidParameterError(f"min_tissue must be in [0, 1], got {self.min_tissue!r}")
        if not (isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100):
            raise InvalidParameterError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        if self.method is not None and self.method not in TISSUE_METHODS:
            raise InvalidParameterError(f"tissue method {self.method!r}; choose {', '.join(TISSUE_METHODS)} or None")
        if self.two_stage is not None:
            self.two_stage.validate()
            if self.two_stage.coarse != ts:
                raise InvalidParameterError(f"two-stage coarse size {self.two_stage.coarse} must equal tile_size {ts}")
        return self

    @classmethod
    def from_dict(cls, d: Any) -> TilingParams:
        """Build and validate from a dict (a ``two_stage`` dict becomes :class:`TwoStage`); unknown keys
        are refused, naming them."""
        return super().from_dict(d)


def _read_overrides_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidParameterError(f"{path}: not a JSON overrides file ({exc}); remove it or pick another path") from exc
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{path}: an overrides file is a JSON object {{slide_id: parameters}}")
    return data


def load_overrides(path: str | os.PathLike) -> dict[str, TilingParams]:
    """Per-slide parameters from a JSON overrides file (``{slide_id: TilingParams dict}``), ready for
    ``run_tiling(overrides=...)``; every entry is validated."""
    target = Path(path)
    if not target.is_file():
        raise InvalidParameterError(f"{target}: no such overrides file")
    out: dict[str, TilingParams] = {}
    for sid, d in _read_overrides_json(target).items():
        if not isinstance(d, dict):
            raise InvalidParameterError(f"{target}: the entry of slide {sid!r} must be an object of tiling parameters")
        try:
            out[str(sid)] = TilingParams.from_dict(d)
        except TypeError as exc:
            raise InvalidParameterError(f"{target}: slide {sid!r}: {exc}") from exc
    return out


def save_override(path: str | os.PathLike, slide_id: str, params: TilingParams) -> Path:
    """Store ``params`` as ``slide_id``'s override in the JSON file ``path``, keeping the other slides'
    entries; written atomically. Returns the path."""
    from wsi_lab.io import atomic_write_bytes

    target = Path(path)
    data = _read_overrides_json(target) if target.exists() else {}
    data[str(slide_id)] = params.validate().to_dict()
    atomic_write_bytes(target, json.dumps(data, indent=2, sort_keys=True).encode())
    return target
