"""What the kernel, the browser and the Jupyter server extension agree on (no tornado, no widgets).

- the deep-zoom geometry served (``TILE_SIZE``, ``OVERLAP``, ``QUALITY``): the server and the widget's
  comm path use the same numbers, so their tiles are byte-identical;
- slide ids: the first 16 hex digits of the SHA-256 of the slide's root-relative POSIX path
  (:func:`slide_key`), stable across restarts and machines, never revealing absolute paths; the kernel
  does not know the server's root, so it lists the ids its slide could have (:func:`relative_candidates`);
- overlay layer payloads: ``{"layer": Layer.to_json()}`` or ``{"snapshot": {...}}``, their content key
  (:func:`layer_payload_key`), their limits (:data:`MAX_LAYER_BYTES`, :data:`MAX_JSON_DEPTH`,
  :func:`loads_json`) and how the server rebuilds them (:func:`layer_from_payload`; bad input raises
  :class:`InvalidParameterError`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from wsi_lab.errors import InvalidParameterError

__all__ = ["TILE_SIZE", "OVERLAP", "QUALITY", "MAX_LAYER_BYTES", "MAX_JSON_DEPTH", "MAX_DISPLAY_TOKEN",
           "slide_key", "is_slide_key", "relative_candidates", "layer_payload_key", "layer_from_payload",
           "check_json_depth", "loads_json", "display_token", "display_from_token"]

#: deep-zoom geometry served (the widget's comm path uses the same, so pixels match)
TILE_SIZE, OVERLAP, QUALITY = 254, 1, 80
#: largest layer POST body the server accepts (bytes)
MAX_LAYER_BYTES = 64 * 2**20
#: deepest nesting of lists/objects a layer payload may have (a real one is < 10 deep)
MAX_JSON_DEPTH = 32
#: longest display token accepted in a tile URL (characters)
MAX_DISPLAY_TOKEN = 4096
#: the keys of a display spec a tile URL carries (see :func:`display_token`)
_DISPLAY_KEYS = ("channels", "colors", "limits", "percentiles", "gamma")

_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


def slide_key(relpath: str) -> str:
    """Id of the slide at root-relative ``relpath`` (POSIX separators)."""
    return hashlib.sha256(PurePosixPath(relpath).as_posix().encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_slide_key(text: str) -> bool:
    """Whether ``text`` has the shape of a slide id (16 lower-case hex digits)."""
    return bool(_KEY_RE.match(text))


def relative_candidates(path: str | os.PathLike, depth: int = 8) -> list[str]:
    """Root-relative paths ``path`` could have on a server whose root is one of its parents, the
    shortest first (``a.svs``, ``cases/a.svs``, ...): the kernel does not know the server's root."""
    parts = Path(os.path.abspath(path)).parts[1:]
    return [PurePosixPath(*parts[-n:]).as_posix() for n in range(1, min(depth, len(parts)) + 1)]


def layer_payload_key(payload: dict) -> str:
    """Content key of a layer payload (same JSON -> same key, in the kernel and in the server)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def display_token(spec: dict | Any) -> str:
    """The ``display`` query value of a tile URL: URL-safe base64 (no padding) of the compact JSON of a
    display spec (``DisplaySettings.to_dict()`` form; ``limits`` left out when ``percentiles`` asks for
    automatic ones), or ``"raw"``. The front end builds the same (``widgets/src/display.ts``)."""
    if spec is None or spec == "raw":
        return "raw"
    d: dict = dict(spec) if isinstance(spec, dict) else spec.to_dict()
    out = {k: d.get(k) for k in _DISPLAY_KEYS}
    if out["percentiles"]:
        out.pop("limits")
    else:
        out.pop("percentiles")
    raw = json.dumps(_js_numbers(out), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _js_numbers(value: Any) -> Any:
    """Integral floats as ints, as JavaScript's ``JSON.stringify`` writes them (the same settings give
    the same token in the kernel and in the browser)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_js_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _js_numbers(v) for k, v in value.items()}
    return value


def display_from_token(token: str) -> dict | str:
    """The display spec of a tile URL's ``display`` value (``"raw"`` stays ``"raw"``); anything malformed
    (not base64 of a JSON object, too long, nested) raises :class:`InvalidParameterError`."""
    if token == "raw":
        return "raw"
    if not isinstance(token, str) or len(token) > MAX_DISPLAY_TOKEN or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise InvalidParameterError(f"display token must be URL-safe base64 of at most {MAX_DISPLAY_TOKEN} "
                                    f"characters, got {str(token)[:40]!r}")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameterError(f"display token is not base64: {exc}") from exc
    spec = loads_json(raw, max_depth=4)
    if not isinstance(spec, dict) or not set(spec) <= set(_DISPLAY_KEYS):
        raise InvalidParameterError(f"display token must hold an object with keys among {_DISPLAY_KEYS}")
    return {**spec, "modality": "fluorescence"}


def check_json_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a parsed JSON value (dicts/lists) nested deeper than ``max_depth`` with
    :class:`InvalidParameterError`: code that walks it recursively would raise ``RecursionError``.
    Iterative, stops at the first branch that is too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise InvalidParameterError(f"layer JSON is nested more than {max_depth} levels deep; "
                                        "send a flat Layer.to_json() payload")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)`` for untrusted input: malformed or too deeply nested JSON raises
    :class:`InvalidParameterError` (never ``RecursionError``). Text with few brackets skips the walk."""
    try:
        value = json.loads(text or b"null")
    except RecursionError as exc:
        raise InvalidParameterError(f"layer JSON is nested more than {max_depth} levels deep") from exc
    except ValueError as exc:
        raise InvalidParameterError(f"layer payload is not JSON: {exc}") from exc
    raw = text.encode() if isinstance(text, str) else bytes(text or b"")
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        check_json_depth(value, max_depth)
    return value


def _opacity(value: Any) -> float:
    try:
        opacity = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"layer opacity must be a number in [0, 1], got {value!r}") from exc
    if not (math.isfinite(opacity) and 0.0 <= opacity <= 1.0):
        raise InvalidParameterError(f"layer opacity must be in [0, 1], got {value!r}")
    return opacity


def layer_from_payload(payload: Any) -> Any:
    """Rebuild a layer from a POSTed payload: ``{"layer": <Layer.to_json() dict or text>}`` or
    ``{"snapshot": {"png_b64", "downsample", "name", "opacity", "legend"}}``. Anything malformed (bad
    keys, opacity outside [0, 1], nesting deeper than :data:`MAX_JSON_DEPTH`) raises
    :class:`InvalidParameterError`."""
    if not isinstance(payload, dict):
        raise InvalidParameterError("layer payload must be a JSON object")
    if "layer" in payload:
        from wsi_lab.overlays import Layer

        spec = payload["layer"]
        if isinstance(spec, (str, bytes)):
            spec = loads_json(spec)
        check_json_depth(spec)
        if isinstance(spec, dict) and "opacity" in spec:
            _opacity(spec["opacity"])
        try:
            return Layer.from_json(spec)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, MemoryError,
                RecursionError) as exc:
            raise InvalidParameterError(f"layer JSON could not be rebuilt: {type(exc).__name__}: {exc}") from exc
    snap = payload.get("snapshot")
    if isinstance(snap, dict):
        from wsi_lab.viewing.deepzoom import LayerSnapshot

        try:
            png = base64.b64decode(snap["png_b64"], validate=True)
            downsample = float(snap["downsample"])
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InvalidParameterError(f"layer snapshot needs png_b64 and a numeric downsample: {exc}") from exc
        opacity = _opacity(snap.get("opacity", 1.0))
        legend = snap.get("legend") or {}
        if not isinstance(legend, dict):
            raise InvalidParameterError(f"layer snapshot legend must be an object, got {type(legend).__name__}")
        return LayerSnapshot.from_png(png, downsample, name=str(snap.get("name", "layer")), opacity=opacity,
                                      legend=legend)
    raise InvalidParameterError("layer payload needs a 'layer' (Layer.to_json()) or a 'snapshot' entry")
