"""Overlay layers pushed to the server by viewers: a store bounded by count AND by bytes.

Why layers travel through the browser, and why a layer key only names content its client sent: see
:mod:`wsi_lab.server.registry`. A layer's size is what it holds in memory once rebuilt (a snapshot's
RGBA raster, a mask, a table's columns), not its POST body: an 81 KiB PNG of a flat 64 MP snapshot
decodes to 256 MiB. The store evicts least-recently-used layers beyond ``max_layers`` or ``max_bytes``
(``WSI_LAB_LAYER_CACHE_MB``, default 512); a single layer larger than the whole budget is refused
(:class:`~wsi_lab.errors.RegionTooLargeError`, HTTP 413). Payloads are parsed, depth-checked and
decoded by :meth:`LayerStore.add_json` on the server's worker threads, never on its event loop.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from wsi_lab.errors import InvalidParameterError, RegionTooLargeError, SlideNotFoundError
from wsi_lab.io import LRUCache
from wsi_lab.viewing import check_json_depth, layer_from_payload, layer_payload_key, loads_json

log = logging.getLogger(__name__)

__all__ = ["LayerStore", "layer_nbytes", "default_layer_budget"]


def default_layer_budget() -> int:
    """Bytes of rebuilt layers the server keeps: ``WSI_LAB_LAYER_CACHE_MB`` (default 512)."""
    raw = os.environ.get("WSI_LAB_LAYER_CACHE_MB", "512")
    try:
        return max(1, int(float(raw) * 2**20))
    except ValueError:
        log.warning("WSI_LAB_LAYER_CACHE_MB=%r is not a number; using 512", raw)
        return 512 * 2**20


def layer_nbytes(layer: Any, _depth: int = 0) -> int:
    """Approximate bytes ``layer`` holds: its numpy arrays and pandas frames/series (one level of
    attributes deep, plus containers of them), at least ``sys.getsizeof`` of the object."""
    total = 0
    for value in (vars(layer).values() if hasattr(layer, "__dict__") else ()):
        total += _value_nbytes(value, _depth)
    return max(total, sys.getsizeof(layer))


def _value_nbytes(value: Any, depth: int) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage):  # pandas DataFrame / Series
        try:
            used = usage(index=True)
            return int(used.sum()) if hasattr(used, "sum") else int(used)
        except (TypeError, ValueError):
            return 0
    if depth < 2 and isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        return sum(_value_nbytes(v, depth + 1) for v in items)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 0


class LayerStore:
    """Rebuilt overlay layers keyed by the hash of their payload (LRU by count and bytes)."""

    def __init__(self, max_layers: int = 64, max_bytes: int | None = None) -> None:
        self.max_layers = max_layers
        self.max_bytes = default_layer_budget() if max_bytes is None else int(max_bytes)
        self._layers: LRUCache[str, Any] = LRUCache(max_items=max_layers, max_bytes=self.max_bytes,
                                                    sizeof=layer_nbytes)

    @property
    def total_bytes(self) -> int:
        return self._layers.total_bytes

    def __len__(self) -> int:
        return len(self._layers)

    def add_json(self, body: bytes) -> str:
        """Parse a POST body (``{"layer": ...}`` or ``{"snapshot": ...}``), rebuild and keep the layer;
        return its key. Bad JSON, nesting deeper than the wire limit, or a bad layer raise
        :class:`InvalidParameterError`; a layer larger than the store :class:`RegionTooLargeError`."""
        return self.add(loads_json(body))

    def add(self, payload: Any) -> str:
        """Rebuild and keep the layer of an already-parsed payload; return its key."""
        if not isinstance(payload, dict):
            raise InvalidParameterError("layer payload must be a JSON object")
        check_json_depth(payload)
        key = layer_payload_key(payload)
        if self._layers.get(key) is not None:
            return key
        layer = layer_from_payload(payload)
        size = layer_nbytes(layer)
        if size > self.max_bytes:
            raise RegionTooLargeError(
                f"layer {getattr(layer, 'name', 'layer')!r} needs {size / 2**20:.0f} MiB once decoded, more than "
                f"the {self.max_bytes / 2**20:.0f} MiB this server keeps for layers (WSI_LAB_LAYER_CACHE_MB); "
                "send a smaller snapshot (snapshot_layer(..., max_side=...)) or a Layer.to_json() layer")
        self._layers.put(key, layer)
        return key

    def get(self, key: str) -> Any:
        """The layer stored under ``key``, or :class:`SlideNotFoundError` (HTTP 404: POST it again)."""
        layer = self._layers.get(key)
        if layer is None:
            raise SlideNotFoundError(f"no overlay layer {key!r} on this server (restarted?); "
                                     "POST it to wsi-lab/api/layers")
        return layer
