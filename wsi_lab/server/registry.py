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

Open slides (issue 14): each slide has at most one opener at a time (concurrent first requests wait for
it), every request holds a reference while it reads (:meth:`SlideRegistry.use`), and the LRU of open
pyramids only evicts slides nobody is reading; an evicted or replaced slide is closed when its last
reader lets go. A file replaced on disk (new inode, size or mtime) is reopened for new requests while
the requests on the old copy finish on it. Every open is bounded in time
(:func:`wsi_lab.slide.bounded.default_open_timeout`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_lab.errors import SlideNotFoundError, SlideOpenError
from wsi_lab.io import LRUCache
from wsi_lab.server.layers import LayerStore
from wsi_lab.server.paths import resolve_slide_path
from wsi_lab.slide import SlideInfo
from wsi_lab.viewing import OVERLAP, QUALITY, TILE_SIZE, DeepZoom, slide_key

log = logging.getLogger(__name__)

__all__ = ["SlideRegistry", "listing_record"]


def _tile_cache_bytes() -> int:
    """Encoded-tile LRU size per open slide: ``WSI_LAB_TILE_CACHE_MB`` (default 64; 0 turns it off)."""
    try:
        return max(0, int(float(os.environ.get("WSI_LAB_TILE_CACHE_MB", "64")) * 2**20))
    except ValueError:
        log.warning("WSI_LAB_TILE_CACHE_MB=%r is not a number; using 64", os.environ.get("WSI_LAB_TILE_CACHE_MB"))
        return 64 * 2**20


def listing_record(info: SlideInfo, rel: str) -> dict[str, Any]:
    """The ``GET slides`` JSON record of one slide: :class:`~wsi_lab.slide.SlideInfo` with the
    root-relative ``path`` and the slide ``id`` (no absolute path anywhere; ``error`` is the reason)."""
    return {"id": slide_key(rel), "name": Path(rel).name, "path": rel, "width": info.width, "height": info.height,
            "mpp": list(info.mpp) if info.mpp else None, "levels": info.level_count, "vendor": info.vendor,
            "size_bytes": info.size_bytes, "error": info.error, "error_type": info.error_type}


def _version(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(eq=False)
class _Open:
    """One open pyramid, the file version it was opened from, and how many requests are reading it."""

    key: str
    version: tuple[int, int, int]
    dz: DeepZoom
    refs: int = 0
    retired: bool = False
    closed: bool = False


@dataclass(eq=False)
class _Opening:
    """A first open in progress: later requests for the same slide wait on it."""

    version: tuple[int, int, int]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class SlideRegistry:
    """Slides under ``root`` (ids, listing with metadata), open pyramids (reference-counted LRU of at most
    ``max_open`` idle ones) and pushed layers (:class:`~wsi_lab.server.layers.LayerStore`, bounded by
    ``max_layers`` and ``max_layer_bytes``). ``open_timeout`` bounds each open (seconds)."""

    def __init__(self, root: str | os.PathLike, max_open: int = 16, max_layers: int = 64,
                 listing_ttl: float = 10.0, max_layer_bytes: int | None = None,
                 open_timeout: float | None = None) -> None:
        from wsi_lab.slide.bounded import default_open_timeout

        self.root = Path(root).resolve()
        self.max_open, self.listing_ttl = max_open, listing_ttl
        self.open_timeout = default_open_timeout() if open_timeout is None else float(open_timeout)
        self.layers = LayerStore(max_layers, max_layer_bytes)
        self._lock = threading.RLock()
        self._listing_lock = threading.Lock()
        self._ids: dict[str, str] = {}
        self._scanned_at = 0.0
        self._listing: tuple[float, list[dict]] | None = None
        self._open: LRUCache[str, _Open] = LRUCache(max_items=max_open, can_evict=lambda _k, e: e.refs == 0,
                                                    on_evict=lambda _k, e: self._retire(e))
        self._opening: dict[str, _Opening] = {}
        self.opens = 0  # how many times a slide was opened (a test and benchmark figure)

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
        """JSON-able records (:func:`listing_record`) of every servable slide. One listing runs at a
        time (others wait for it and share its result); each open is bounded by ``open_timeout``."""
        from wsi_lab.slide import describe_slide

        with self._listing_lock:
            with self._lock:
                if self._listing and time.monotonic() - self._listing[0] < self.listing_ttl:
                    return self._listing[1]
            paths = self._scan()
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="wsi-lab-listing") as pool:
                infos = list(pool.map(lambda p: describe_slide(p, timeout=self.open_timeout), paths))
            out = [listing_record(info, p.relative_to(self.root).as_posix())
                   for p, info in zip(paths, infos, strict=True)]
            with self._lock:
                self._listing = (time.monotonic(), out)
            return out

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[DeepZoom]:
        """The pyramid of slide id ``key``, held open for the duration of the ``with`` block (opened on
        first use, once however many requests ask at the same time; reopened when the file changed)."""
        entry = self._acquire(key)
        try:
            yield entry.dz
        finally:
            self._release(entry)

    def _acquire(self, key: str) -> _Open:
        rel = self.relpath(key)
        path = resolve_slide_path(self.root, rel)
        try:
            version = _version(path)
        except OSError as exc:
            raise SlideNotFoundError(f"slide {rel!r} went away: {exc.strerror}") from exc
        deadline = time.monotonic() + self.open_timeout + 5
        while True:
            with self._lock:
                entry = self._open.get(key)
                if entry is not None and entry.version == version and not entry.retired:
                    entry.refs += 1
                    return entry
                current = self._opening.get(key)
                owner = current is None or current.version != version
                opening = self._opening[key] = _Opening(version) if owner or current is None else current
            if owner:
                return self._open_new(key, rel, path, version, opening)
            if not opening.done.wait(max(0.0, deadline - time.monotonic())):
                raise SlideOpenError.at(path, f"opening timed out after {self.open_timeout:g} s")
            if opening.error is not None:
                raise opening.error

    def _open_new(self, key: str, rel: str, path: Path, version: tuple[int, int, int], opening: _Opening) -> _Open:
        from wsi_lab.slide import open_slide

        try:
            slide = open_slide(path, timeout=self.open_timeout)
            try:  # name=rel: messages never carry absolute paths
                dz = DeepZoom(slide, TILE_SIZE, OVERLAP, QUALITY, cache_bytes=_tile_cache_bytes(), name=rel,
                              display="auto")
            except BaseException:
                slide.close()
                raise
        except BaseException as exc:
            opening.error = exc
            with self._lock:
                if self._opening.get(key) is opening:
                    del self._opening[key]
            opening.done.set()
            raise
        entry = _Open(key, version, dz, refs=1)
        with self._lock:
            self.opens += 1
            old = self._open.get(key)
            if old is not None:  # an older version of the file: new requests get the new one
                self._open.pop(key)  # on_evict retires it; it closes when its last reader lets go
            self._open.put(key, entry)
            if self._opening.get(key) is opening:
                del self._opening[key]
        opening.done.set()
        return entry

    def _release(self, entry: _Open) -> None:
        with self._lock:
            entry.refs -= 1
            close = entry.retired and entry.refs == 0 and not entry.closed
            if close:
                entry.closed = True
        if close:
            entry.dz.slide.close()
        elif not entry.retired and entry.refs == 0 and len(self._open) > self.max_open:
            self._open.evict()  # evictions vetoed while this slide was being read can happen now

    def _retire(self, entry: _Open) -> None:
        """Called when the LRU drops ``entry``: close it now if idle, else when its last reader lets go."""
        with self._lock:
            entry.retired = True
            close = entry.refs == 0 and not entry.closed
            if close:
                entry.closed = True
        if close:
            entry.dz.slide.close()

    def open_count(self) -> int:
        """Slides held open now (idle ones in the LRU plus those still being read)."""
        with self._lock:
            return sum(1 for e in self._open.values() if not e.closed)

    # -- what the handlers call (each holds the slide for exactly the work it does) -----------------
    def tile_bytes(self, key: str, level: int, col: int, row: int, display: str | None = None) -> bytes:
        """JPEG bytes of a deep-zoom tile of slide ``key``, shown with the settings of the ``display`` token
        (:func:`wsi_lab.viewing.display_token`; None: the slide's automatic display)."""
        with self.use(key) as dz:
            return dz.get_tile_bytes(level, col, row, dz.display_for_token(display))

    def overlay_bytes(self, key: str, layer_key: str, level: int, col: int, row: int) -> bytes:
        """PNG bytes of an overlay tile of layer ``layer_key`` over slide ``key`` (opacity left to the viewer)."""
        layer = self.layers.get(layer_key)
        with self.use(key) as dz:
            return dz.get_overlay_bytes(layer, level, col, row, layer_key, False)

    def dzi_xml(self, key: str) -> str:
        with self.use(key) as dz:
            return dz.dzi_xml()

    def describe(self, key: str) -> dict:
        """Deep-zoom info of one slide plus its id, name, root-relative path and file size."""
        rel = self.relpath(key)
        with self.use(key) as dz:
            info = dz.info()
        path = self.root / rel
        return {"id": key, "name": path.name, "path": rel, "size_bytes": path.stat().st_size, **info}

    def key_for_path(self, relpath: str) -> str:
        """Validate root-relative ``relpath`` and return its id (registering it)."""
        path = resolve_slide_path(self.root, relpath)
        rel = path.relative_to(self.root).as_posix()
        key = slide_key(rel)
        with self._lock:
            self._ids[key] = rel
        return key

    # -- layers -------------------------------------------------------------------------------
    def add_layer(self, payload: Any) -> str:
        """Keep the layer of a parsed payload (see :class:`LayerStore`); return its key."""
        return self.layers.add(payload)

    def add_layer_json(self, body: bytes) -> str:
        """Parse, check and keep the layer of a POST body; return its key."""
        return self.layers.add_json(body)

    def layer(self, key: str) -> Any:
        return self.layers.get(key)

    def close(self) -> None:
        """Close every open slide (those still being read close when their readers finish)."""
        self._open.clear(notify=True)
