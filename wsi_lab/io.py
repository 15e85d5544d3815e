"""Small helpers shared by the whole package: atomic writes, image encoding and saving, file hashing,
and the one LRU cache (:class:`LRUCache`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on
    POSIX), on error it is removed, so readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """PNG or JPEG bytes of an (H, W), (H, W, 3) or (H, W, 4) uint8 array. PNG uses fast compression
    (overlays and masks are mostly flat); JPEG drops an alpha channel."""
    import io

    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    if fmt.lower() in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    elif fmt.lower() == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise InvalidParameterError(f"image format {fmt!r}: use 'png' or 'jpeg'")
    return buf.getvalue()


def save_image(array: np.ndarray, path: str | os.PathLike, quality: int = 90, compress_level: int = 6) -> None:
    """Save an (H, W, 3|4) uint8 array as PNG/JPEG/TIFF (chosen by extension), atomically. JPEG uses
    ``quality``; PNG ``compress_level`` (zlib 0–9: 1 writes a noisy overlay ~2× faster, about as small)."""
    from PIL import Image

    target = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(target.suffix.lower())
    if fmt is None:
        raise InvalidParameterError(f"{target}: unsupported image extension; use .png, .jpg or .tif")
    img = Image.fromarray(np.asarray(array))
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    with atomic_path(target) as tmp:
        opts = {"JPEG": {"quality": quality}, "PNG": {"compress_level": compress_level}}.get(fmt, {})
        img.save(tmp, format=fmt, **opts)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


K = TypeVar("K")
V = TypeVar("V")
_NOTHING = object()


class LRUCache(Generic[K, V]):
    """A small thread-safe least-recently-used cache, bounded by item count and/or total size.

    ``max_items`` / ``max_bytes`` (``None``: no bound of that kind); ``sizeof(value)`` gives a value's
    size in bytes (default ``len``, or ``nbytes`` for arrays); ``on_evict(key, value)`` runs, outside the
    lock, for every value the cache drops (evicted, replaced or popped; not on :meth:`clear` unless asked);
    ``can_evict(key, value)`` may veto evicting an entry still in use (the cache then stays over its
    bound until the entry becomes evictable and the next put evicts it). A value larger than
    ``max_bytes`` is not stored. :meth:`get_or_load` computes a missing value once even when several
    threads ask for it at the same time."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 sizeof: Callable[[V], int] | None = None, on_evict: Callable[[K, V], None] | None = None,
                 can_evict: Callable[[K, V], bool] | None = None) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._sizeof = sizeof or _default_sizeof
        self._on_evict, self._can_evict = on_evict, can_evict
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._pending: dict[K, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    @property
    def total_bytes(self) -> int:
        """Sum of ``sizeof`` over the values held."""
        return self._bytes

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key`` and evict least-recently-used entries beyond the bounds."""
        size = int(self._sizeof(value))
        dropped: list[tuple[K, V]] = []
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
                if old[0] is not value:
                    dropped.append((key, old[0]))
            if self.max_bytes is not None and size > self.max_bytes:
                dropped.append((key, value))
            else:
                self._data[key] = (value, size)
                self._bytes += size
                dropped.extend(self._evict_locked(keep=key))
        self._notify(dropped)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key`` and return its value (``on_evict`` runs for it), or ``default``."""
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return default
            self._bytes -= item[1]
        self._notify([(key, item[0])])
        return item[0]

    def values(self) -> list[V]:
        """A snapshot of the values held, least recently used first."""
        with self._lock:
            return [v for v, _ in self._data.values()]

    def clear(self, notify: bool = False) -> None:
        """Drop everything (running ``on_evict`` for each value when ``notify``)."""
        with self._lock:
            items = [(k, v) for k, (v, _) in self._data.items()]
            self._data.clear()
            self._bytes = 0
        if notify:
            self._notify(items)

    def evict(self) -> None:
        """Evict what the bounds (and ``can_evict``) allow now."""
        with self._lock:
            dropped = self._evict_locked()
        self._notify(dropped)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The value of ``key``; when missing, ``load()`` it once (other threads asking for the same key
        wait for that load instead of repeating it) and store it."""
        with self._lock:
            item = self._data.get(key)
            if item is not None:
                self._data.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
            pending = self._pending.get(key)
            owner = pending is None
            event = self._pending[key] = threading.Event() if pending is None else pending
        if not owner:
            event.wait()
            with self._lock:
                item = self._data.get(key)
            return item[0] if item is not None else load()  # the first load failed (or it was evicted)
        try:
            value = load()
            self.put(key, value)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            event.set()

    def _over(self) -> bool:
        return ((self.max_items is not None and len(self._data) > self.max_items)
                or (self.max_bytes is not None and self._bytes > self.max_bytes))

    def _evict_locked(self, keep: object = _NOTHING) -> list[tuple[K, V]]:
        """Drop least-recently-used entries until within bounds, skipping vetoed ones and ``keep`` (the
        entry just stored: a put never evicts its own value)."""
        dropped: list[tuple[K, V]] = []
        if not self._over():
            return dropped
        for key in list(self._data):
            value, size = self._data[key]
            if key == keep or (self._can_evict is not None and not self._can_evict(key, value)):
                continue
            del self._data[key]
            self._bytes -= size
            dropped.append((key, value))
            if not self._over():
                break
        return dropped

    def _notify(self, dropped: list[tuple[K, V]]) -> None:
        if self._on_evict is None:
            return
        for key, value in dropped:
            try:
                self._on_evict(key, value)
            except Exception:  # an eviction hook must not break the cache's caller
                log.exception("LRUCache on_evict hook failed for %r", key)


def _default_sizeof(value: object) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return 1
