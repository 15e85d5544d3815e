"""What the server extension serves: the slides under its root, their deep-zoom pyramids, and overlay
layers pushed by viewers (no tornado imports; the handlers are thin wrappers around this).

Overlay layers and process boundaries: the kernel that owns a ``SlideViewer`` and the Jupyter server are
different processes (possibly different machines, with kernels behind a gateway), and only the *browser*
holds the user's server credentials. So the widget puts each layer's JSON (``Layer.to_json()`` from
``wsi_lab.overlays``: the tile coordinates and colours, or the mask, no pixels of the slide) in its model
state; the front end POSTs it to ``wsi-lab/api/layers`` with the user's credentials; the server rebuilds
the layer with ``Layer.from_json`` and keeps it in a bounded in-memory store keyed by the hash of its
JSON. Overlay tiles are then rendered server-side by the same ``DeepZoom.get_overlay_bytes`` the
kernel uses in comm mode, so both paths give identical pixels. Nothing is written to disk, a layer key
only names content the client itself sent, and a restarted server answers 404 for an unknown key, upon
which the front end simply POSTs the layer again. Layers that are not ``wsi_lab.overlays`` layers travel
as a :class:`~wsi_lab.viewing.LayerSnapshot` PNG instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from wsi_lab.errors import SlideNotFoundError
from wsi_lab.server.paths import resolve_slide_path
from wsi_lab.viewing import OVERLAP, QUALITY, TILE_SIZE, DeepZoom, layer_from_payload, layer_payload_key, slide_key

log = logging.getLogger(__name__)


def _tile_cache_bytes() -> int:
    """Encoded-tile LRU size per open slide: ``WSI_LAB_TILE_CACHE_MB`` (default 64; 0 turns it off)."""
    try:
        return max(0, int(float(os.environ.get("WSI_LAB_TILE_CACHE_MB", "64")) * 2**20))
    except ValueError:
        log.warning("WSI_LAB_TILE_CACHE_MB=%r is not a number; using 64", os.environ.get("WSI_LAB_TILE_CACHE_MB"))
        return 64 * 2**20


class SlideRegistry:
    """Slides under ``root`` (ids, listing with metadata), open pyramids (LRU) and pushed layers (LRU)."""

    def __init__(self, root: str | os.PathLike, max_open: int = 16, max_layers: int = 64,
                 listing_ttl: float = 10.0) -> None:
        self.root = Path(root).resolve()
        self.max_open, self.max_layers, self.listing_ttl = max_open, max_layers, listing_ttl
        self._lock = threading.RLock()
        self._ids: dict[str, str] = {}
        self._scanned_at = 0.0
        self._listing: tuple[float, list[dict]] | None = None
        self._open: OrderedDict[str, tuple[float, DeepZoom]] = OrderedDict()
        self._layers: OrderedDict[str, Any] = OrderedDict()

    # -- slides -------------------------------------------------------------------------------
    def _scan(self) -> list[Path]:
        from wsi_lab.slide import find_slides

        paths = []
        for info in find_slides(self.root, metadata=False):
            p = Path(info.path)
            rel = p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else None
            try:  # listing follows the same rules as serving (no symlink escapes, no hidden files)
                if rel is not None and resolve_slide_path(self.root, rel):
                    paths.append(p)
            except (SlideNotFoundError, PermissionError):
                continue
        with self._lock:
            self._ids = {slide_key(p.relative_to(self.root).as_posix()): p.relative_to(self.root).as_posix()
                         for p in paths}
            self._scanned_at = time.monotonic()
        return paths

    def relpath(self, key: str) -> str:
        """Root-relative path of slide id ``key`` (rescans the root at most every 2 s on a miss)."""
        with self._lock:
            rel = self._ids.get(key)
            stale = time.monotonic() - self._scanned_at > 2.0
        if rel is None and stale:
            self._scan()
            rel = self._ids.get(key)
        if rel is None:
            raise SlideNotFoundError(f"no slide with id {key!r} under the server root; list them at wsi-lab/api/slides")
        return rel

    def list_slides(self) -> list[dict]:
        """JSON-able records (id, name, path, width, height, mpp, ...) of every servable slide."""
        with self._lock:
            if self._listing and time.monotonic() - self._listing[0] < self.listing_ttl:
                return self._listing[1]
        from wsi_lab.slide import find_slides

        allowed = set(self._scan())
        out = []
        for info in find_slides(self.root, metadata=True, workers=4):
            p = Path(info.path)
            if p not in allowed:
                continue
            rel = p.relative_to(self.root).as_posix()
            out.append({"id": slide_key(rel), "name": p.name, "path": rel, "width": info.width, "height": info.height,
                        "mpp": [info.mpp_x, info.mpp_y] if info.mpp_x else None, "levels": info.level_count,
                        "vendor": info.vendor, "size_bytes": info.size_bytes, "error": info.error})
        with self._lock:
            self._listing = (time.monotonic(), out)
        return out

    def deepzoom(self, key: str) -> DeepZoom:
        """The (cached) pyramid of slide id ``key``; reopened when the file changed on disk."""
        rel = self.relpath(key)
        path = resolve_slide_path(self.root, rel)
        mtime = path.stat().st_mtime
        with self._lock:
            hit = self._open.get(key)
            if hit and hit[0] == mtime:
                self._open.move_to_end(key)
                return hit[1]
        from wsi_lab.slide import open_slide

        dz = DeepZoom(open_slide(path), TILE_SIZE, OVERLAP, QUALITY, cache_bytes=_tile_cache_bytes(), name=rel)  # no absolute paths in messages
        with self._lock:
            old = self._open.pop(key, None)
            self._open[key] = (mtime, dz)
            while len(self._open) > self.max_open:
                _, (_, dropped) = self._open.popitem(last=False)
                dropped.slide.close()
        if old:
            old[1].slide.close()
        return dz

    def describe(self, key: str) -> dict:
        """Deep-zoom info of one slide plus its id, name, root-relative path and file size."""
        dz = self.deepzoom(key)
        rel = self.relpath(key)
        path = self.root / rel
        return {"id": key, "name": path.name, "path": rel, "size_bytes": path.stat().st_size, **dz.info()}

    def key_for_path(self, relpath: str) -> str:
        """Validate root-relative ``relpath`` and return its id (registering it)."""
        path = resolve_slide_path(self.root, relpath)
        rel = path.relative_to(self.root).as_posix()
        key = slide_key(rel)
        with self._lock:
            self._ids[key] = rel
        return key

    # -- layers -------------------------------------------------------------------------------
    def add_layer(self, payload: dict) -> str:
        key = layer_payload_key(payload)
        with self._lock:
            if key in self._layers:
                self._layers.move_to_end(key)
                return key
        layer = layer_from_payload(payload)
        with self._lock:
            self._layers[key] = layer
            while len(self._layers) > self.max_layers:
                self._layers.popitem(last=False)
        return key

    def layer(self, key: str) -> Any:
        with self._lock:
            layer = self._layers.get(key)
        if layer is None:
            raise SlideNotFoundError(f"no overlay layer {key!r} on this server (restarted?); POST it to wsi-lab/api/layers")
        return layer

    def close(self) -> None:
        with self._lock:
            for _, dz in self._open.values():
                dz.slide.close()
            self._open.clear()
