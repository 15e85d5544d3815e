"""The one table of tissue methods: names, threshold keywords, defaults and ranges, and parameter checks.

The CLI's choices, ``TilingParams``/``TwoStage`` validation, the two-stage coarse pass and the tuner's
sliders all read :data:`TISSUE_METHODS`; nothing else spells out a method name or a default threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError

__all__ = ["TissueMethod", "TISSUE_METHODS", "METHODS", "BACKGROUND_THRESHOLD", "DEFAULTS", "COMMON",
           "threshold_params", "default_background_threshold", "check_params"]


@dataclass(frozen=True)
class TissueMethod:
    """One tissue method: the keyword of its main threshold, that threshold's default (None: automatic),
    its valid and its usual range (the UI slider), and the method's other parameters with their defaults."""

    threshold_param: str
    default_threshold: float | None
    valid_max: float
    slider_max: float
    slider_step: float
    help: str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """Every method-specific parameter with its default."""
        return {self.threshold_param: self.default_threshold, **dict(self.extra)}

    def slider(self) -> dict[str, Any]:
        """The threshold slider a UI shows: ``param``, ``min``, ``max``, ``step``, ``default``, ``help``."""
        return {"param": self.threshold_param, "min": 0.0, "max": self.slider_max, "step": self.slider_step,
                "default": self.default_threshold, "help": self.help}


#: THE table of tissue methods (names, threshold keywords, defaults); the CLI, tiling and the tuner read it
TISSUE_METHODS: dict[str, TissueMethod] = {
    "otsu": TissueMethod("threshold", None, 255.0, 255.0, 1.0,
                         "saturation (brightfield) or brightness (fluorescence) cut"),
    "variance": TissueMethod("threshold", 120.0, 255.0 * 255.0, 2000.0, 5.0, "per-cell intensity variance cut"),
    "background": TissueMethod("background_threshold", None, 255.0, 255.0, 1.0,
                               "near-white (brightfield) / near-black (fluorescence) intensity cut",
                               extra=(("max_background", 0.5),)),
}
METHODS = tuple(TISSUE_METHODS)
#: automatic near-white (brightfield) / near-black (fluorescence) intensity of ``background``
BACKGROUND_THRESHOLD = {"brightfield": 220, "fluorescence": 25}
DEFAULTS: dict[str, dict[str, Any]] = {name: m.defaults for name, m in TISSUE_METHODS.items()}
COMMON = {"modality": "auto", "closing": 0, "opening": 0, "min_object_um2": None, "min_hole_um2": None,
          "min_object_px": None, "min_hole_px": None}


def threshold_params(method: str | None, threshold: float | None) -> dict[str, float]:
    """``{keyword: threshold}`` for :func:`detect_tissue`: a single threshold value under the keyword the
    method takes (``threshold`` or ``background_threshold``); empty when either is None."""
    if method is None or threshold is None:
        return {}
    if method not in TISSUE_METHODS:
        raise InvalidParameterError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")
    return {TISSUE_METHODS[method].threshold_param: threshold}


def default_background_threshold(modality: str) -> float:
    """The automatic near-white (brightfield) / near-black (fluorescence) intensity cut."""
    return float(BACKGROUND_THRESHOLD["fluorescence" if modality == "fluorescence" else "brightfield"])


def check_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the defaults of ``method`` and validated (typed error naming the bad key)."""
    if method not in METHODS:
        raise InvalidParameterError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")
    allowed = {**COMMON, **DEFAULTS[method]}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidParameterError(f"tissue method {method!r} does not take {unknown}; it accepts {sorted(allowed)}")
    p = {**allowed, **{k: v for k, v in params.items() if v is not None or k in DEFAULTS[method]}}
    if p["modality"] not in ("auto", "brightfield", "fluorescence"):
        raise InvalidParameterError(f"modality must be 'auto', 'brightfield' or 'fluorescence', got {p['modality']!r}")

    def num(name, lo, hi):
        v = p.get(name)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (lo <= float(v) <= hi):
            raise InvalidParameterError(f"tissue {method}: {name}={v!r} is out of range; expected a number in [{lo}, {hi}]")

    spec = TISSUE_METHODS[method]
    num(spec.threshold_param, 0, spec.valid_max)
    num("max_background", 0, 1)
    for n in ("closing", "opening"):
        num(n, 0, 64)
    for n in ("min_object_um2", "min_hole_um2", "min_object_px", "min_hole_px"):
        num(n, 0, 1e15)
    return p
