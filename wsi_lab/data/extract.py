"""The tile extraction hot path shared by tiling's JPEG folders and the JPEG/TFRecord exports: a
TileTable row's pixels or JPEG bytes, and a cheap atomic file write.

- :meth:`TileCoder.jpeg`: the slide's own JPEG tile passed through when the row is exactly one source
  tile (:func:`wsi_lab.slide.raw_tiles.passthrough_jpeg`: lossless, no codec work), else the pixels
  read (:meth:`TileCoder.pixels`) and encoded with libjpeg-turbo (imagecodecs; baseline JFIF, 4:2:0).
- :meth:`TileCoder.pixels`: a whole aligned source tile is decoded straight from its bytes (the
  reader's own decode, without its tile cache and copy); anything else goes through
  :func:`~wsi_lab.data.tile_reader.read_tile` (read_region + resize). Both give the same pixels.
- :func:`write_atomic`: temp file + rename like :func:`wsi_lab.io.atomic_write_bytes`, with a fixed
  per-thread temp name (``.<name>.<pid>-<thread>.part``) instead of ``mkstemp``, one open and no
  second copy: on this machine's disk it halves the cost of a small file. A killed writer leaves only a
  ``.part`` file, which the steps' manifest cleaning removes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import InvalidParameterError

__all__ = ["TileCoder", "encode_jpeg", "passthrough_default", "write_atomic"]


_jpeg8_encode: Any
try:
    from imagecodecs import jpeg8_encode as _jpeg8_encode  # the codec of the tifffile backend
except ImportError:  # PIL does the same, slower
    _jpeg8_encode = None


def encode_jpeg(tile: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes (baseline JFIF, YCbCr 4:2:0, like PIL's defaults) of an (H, W, 3) uint8 array."""
    if _jpeg8_encode is None:
        from wsi_lab.io import encode_image

        return encode_image(tile, "jpeg", int(quality))
    return bytes(_jpeg8_encode(np.ascontiguousarray(tile), level=int(quality)))


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file next to it, then ``os.replace``); the parent
    folder must exist. On any error the temp file is removed and the target is left as it was."""
    target = os.fspath(path)
    head, name = os.path.split(target)
    tmp = os.path.join(head, f".{name}.{os.getpid()}-{threading.get_ident()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def passthrough_default() -> bool:
    """Whether tiling passes source JPEG tiles through: yes unless ``WSI_LAB_JPEG_PASSTHROUGH=0``
    (read on Dask workers too, which inherit the environment of the process that starts the cluster)."""
    return os.environ.get("WSI_LAB_JPEG_PASSTHROUGH", "1").strip().lower() not in ("0", "false", "no", "off")


class TileCoder:
    """Pixels and JPEG bytes of TileTable rows (module docstring). ``quality``: JPEG quality of
    re-encoded tiles; ``passthrough``: pass the slide's own JPEG tiles through where the rule allows
    (False: always decode and re-encode; None: the environment's :func:`passthrough_default`).
    Thread-safe; holds no slides."""

    def __init__(self, quality: int = 90, passthrough: bool | None = True) -> None:
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= int(quality) <= 100:
            raise InvalidParameterError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
        self.quality = int(quality)
        self.passthrough = passthrough_default() if passthrough is None else bool(passthrough)

    def pixels(self, slide: Any, x: int, y: int, level: int, read_size: int, tile_size: int,
               aligned: Any = False) -> np.ndarray:
        """``(tile_size, tile_size, 3)`` uint8: ``read_size``² pixels of ``level`` from level-0 ``(x, y)``,
        resized; the same pixels :func:`read_tile` gives."""
        from wsi_lab.slide.raw_tiles import aligned_tile

        found = aligned_tile(slide, x, y, level, read_size, tile_size) if aligned is False else aligned
        if found is not None:
            rl, index = found
            if rl.decode is not None:
                return rl.decode(index)
        return read_tile(slide, x, y, level, read_size, tile_size)

    def jpeg(self, slide: Any, x: int, y: int, level: int, read_size: int, tile_size: int,
             pixels: np.ndarray | None = None) -> tuple[bytes, bool]:
        """``(JPEG bytes, passed_through)`` of one row. ``pixels``: the row's pixels when the caller has
        read them already (e.g. for a fine pass), so a re-encoded tile is not read twice."""
        from wsi_lab.slide.raw_tiles import aligned_tile, passthrough_jpeg

        found = aligned_tile(slide, x, y, level, read_size, tile_size)
        if self.passthrough and found is not None:
            data = passthrough_jpeg(slide, x, y, level, read_size, tile_size, self.quality, aligned=found)
            if data is not None:
                return data, True
        if pixels is None:
            pixels = self.pixels(slide, x, y, level, read_size, tile_size, aligned=found)
        return encode_jpeg(pixels, self.quality), False

    def write_jpeg(self, path: str | os.PathLike | Path, slide: Any, x: int, y: int, level: int, read_size: int,
                   tile_size: int, pixels: np.ndarray | None = None, digest: bool = False) -> tuple[int, bool, str | None]:
        """Write one row's JPEG to ``path`` atomically; returns ``(bytes written, passed_through, SHA-256 hex
        or None)`` (the hash of the bytes written when ``digest``: a manifest then need not read them back)."""
        data, passed = self.jpeg(slide, x, y, level, read_size, tile_size, pixels)
        write_atomic(path, data)
        return len(data), passed, hashlib.sha256(data).hexdigest() if digest else None
