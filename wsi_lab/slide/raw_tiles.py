"""Raw JPEG tiles of a tiled pyramid level, and JPEG passthrough: a slide's own tile bytes written as a
stand-alone JPEG (lossless: no decode, no re-encode).

A TIFF JPEG tile is often an *abbreviated* stream: its quantisation and Huffman tables live once per
level in the ``JPEGTables`` tag. :meth:`RawTileLevel.standalone` merges them back
(``SOI + tables + tile``) and, where the TIFF says the samples are RGB without a JFIF marker (Aperio),
adds an Adobe APP14 marker (transform 0) so that any standard decoder (PIL, libjpeg, TensorFlow) gives
the same colours the slide reader does.

:func:`passthrough_jpeg` is the one rule for when a TileTable row may pass through: the slide is read by
the tifffile backend, the level is plain 8-bit JPEG with RGB or YCbCr samples, the row reads exactly one
whole source tile (same size and grid, no resize, not partial at the image edge, not sparse), and a
stand-alone decode of a tile of that structure was checked once (per process) to give exactly the
pixels ``read_region`` returns. Anything else returns ``None``: the caller decodes and re-encodes.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_lab.errors import SlideReadError

log = logging.getLogger(__name__)

__all__ = ["RawTileLevel", "raw_level", "aligned_tile", "passthrough_jpeg", "estimate_jpeg_quality", "jpeg_segments"]

_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive Huffman
#: Adobe APP14, version 100, no flags, transform 0 (no colour transform: the samples are RGB)
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"

# the IJG (libjpeg) luminance quantisation table at quality 50, in zig-zag order as a DQT stores it
_STD_LUMA = np.array([
    16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51,
    61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87, 95, 98, 103, 104, 103, 62, 77,
    113, 121, 112, 100, 120, 92, 101, 103, 99], np.int64)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """The marker segments of a JPEG stream up to its first SOS: ``(marker, start, end)`` with ``start``
    at the ``FF`` byte and ``end`` past the segment. Raises ``ValueError`` on a malformed stream."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI)")
    out, pos, n = [], 2, len(data)
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI (a tables-only stream ends here)
            out.append((marker, pos, pos + 2))
            return out
        if pos + 4 > n:
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            raise ValueError(f"segment {marker:#x} at byte {pos} overruns the stream")
        out.append((marker, pos, end))
        if marker == 0xDA:
            return out
        pos = end
    raise ValueError("stream ends before SOS/EOI")


def _luma_table(data: bytes, segments: list[tuple[int, int, int]]) -> np.ndarray | None:
    """Quantisation table 0 (luminance) of a stream, in zig-zag order, or None."""
    for marker, start, end in segments:
        if marker != 0xDB:
            continue
        pos = start + 4
        while pos < end:
            pq, tq = data[pos] >> 4, data[pos] & 15
            size = 128 if pq else 64
            if tq == 0:
                raw = data[pos + 1:pos + 1 + size]
                return np.frombuffer(raw, ">u2" if pq else np.uint8).astype(np.int64)
            pos += 1 + size
    return None


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_STD_LUMA * scale + 50) // 100, 1, 255)


def estimate_jpeg_quality(*streams: bytes | None) -> int | None:
    """The IJG quality (1..100) whose luminance table matches the first DQT found in ``streams`` (the
    JPEGTables first, then a tile): exact for libjpeg-family encoders, the nearest one otherwise; None
    when no stream has a luminance table."""
    for s in streams:
        if not s:
            continue
        try:
            table = _luma_table(s, jpeg_segments(s))
        except ValueError:
            continue
        if table is None or len(table) != 64:
            continue
        errors = [int(np.abs(_ijg_table(q) - table).sum()) for q in range(1, 101)]
        return int(np.argmin(errors)) + 1
    return None


@dataclass
class RawTileLevel:
    """Raw access to the JPEG tiles of one tiled level (level pixels; tile ``index = row * across + col``).

    Built by the tifffile backend (``TifffileReader.raw_tiles(level)``); reads with ``os.pread`` on the
    reader's descriptor, so it is thread-safe and valid while the slide is open."""

    level: int
    tile_width: int
    tile_height: int
    width: int
    height: int
    across: int
    down: int
    offsets: list[int]
    counts: list[int]
    tables: bytes | None
    colorspace: Any  # tifffile's JPEG colour space argument (None: the decoder's default guess; 2: RGB)
    fd: int
    file_size: int
    path: str
    decode: Callable[..., np.ndarray] | None = field(default=None, repr=False)  # decode(index, out=None)
    _verified: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_reader_level(cls, level: int, lv: Any, fd: int, file_size: int, path: str,
                          decode: Callable[..., np.ndarray] | None = None) -> RawTileLevel | None:
        """From the tifffile backend's per-level record (``_Level``); None unless the level is plain 8-bit
        JPEG of 3 samples (RGB or YCbCr) decoded to RGB, the case a stand-alone JPEG can reproduce.
        ``decode(index)`` is the reader's own decode of one whole tile (exactly what ``read_region``
        returns for that tile's box), uncached; ``decode(index, out=buffer)`` may decode into a recycled
        (th, tw, 3) uint8 buffer."""
        page = getattr(lv, "page", None)
        if lv is None or lv.jpeg is None or page is None:
            return None
        if page.samplesperpixel != 3 or page.photometric not in (2, 6) or page.extrasamples:
            return None
        if lv.jpeg.get("outcolorspace") != 2 or lv.jpeg.get("colorspace") not in (None, 2) or lv.jpeg.get("header"):
            return None
        return cls(level, lv.tw, lv.th, lv.width, lv.height, lv.across, -(-lv.height // lv.th), lv.offsets, lv.counts,
                   lv.jpeg.get("tables"), lv.jpeg.get("colorspace"), fd, file_size, path, decode)

    def index_at(self, lx: int, ly: int, width: int, height: int) -> int | None:
        """Index of the tile that is exactly the box ``(lx, ly, width, height)`` (level pixels), or None
        when the box is not one whole tile inside the image (off-grid, another size, partial at the edge)."""
        tw, th = self.tile_width, self.tile_height
        if width != tw or height != th or lx % tw or ly % th or lx < 0 or ly < 0:
            return None
        if lx + tw > self.width or ly + th > self.height:
            return None
        return (ly // th) * self.across + lx // tw

    def raw(self, index: int) -> bytes | None:
        """The tile's bytes as stored (often an abbreviated stream), or None for a sparse (empty) tile."""
        offset, count = self.offsets[index], self.counts[index]
        if count == 0 or offset == 0:
            return None
        if offset + count > self.file_size:
            raise SlideReadError(f"{self.path}: tile {index} of level {self.level} lies past the end of the file "
                                 "(truncated or corrupt file); re-copy or re-export the slide")
        return os.pread(self.fd, count, offset)

    def standalone(self, index: int) -> tuple[bytes, tuple] | None:
        """The tile as a stand-alone JPEG and its structure key (SOF + markers), or None when the tile is
        sparse or its stream is not a single-frame 3-component JPEG of exactly the tile's size."""
        data = self.raw(index)
        if data is None:
            return None
        try:
            segs = jpeg_segments(data)
        except ValueError:
            return None  # let the decoder report it (a corrupt tile is a read error there)
        markers = {m for m, _, _ in segs}
        sof = next(((m, s, e) for m, s, e in segs if m in _SOF), None)
        if sof is None or markers & {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}:
            return None
        _m, s, e = sof
        _precision, h, w, nc = struct.unpack(">BHHB", data[s + 4:s + 10])
        if (h, w, nc) != (self.tile_height, self.tile_width, 3):
            return None
        has_colour_marker = bool(markers & {0xE0, 0xEE})  # JFIF or Adobe: the stream says its colour space
        head = b"\xff\xd8"
        if self.colorspace == 2 and not has_colour_marker:
            head += _ADOBE_RGB
        if self.tables:
            head += self.tables[2:-2] if self.tables[-2:] == b"\xff\xd9" else self.tables[2:]
        key = (bytes(data[s:e]), tuple(sorted(markers)), self.colorspace == 2 and not has_colour_marker)
        return head + data[2:], key

    def source_quality(self) -> int | None:
        """The estimated JPEG quality of this level's tiles (from the JPEGTables, else the first tile)."""
        q = getattr(self, "_quality", False)
        if q is False:
            first = next((i for i, c in enumerate(self.counts) if c), None)
            q = estimate_jpeg_quality(self.tables, self.raw(first) if first is not None else None)
            self._quality = q
        return q

    def verified(self, key: tuple, index: int, jpeg: bytes, reference: Any) -> bool:
        """Whether stand-alone JPEGs of structure ``key`` decode (PIL and imagecodecs, default settings)
        to exactly what the reader gives; checked once per key on tile ``index`` (``reference()`` returns
        the reader's pixels of that tile)."""
        with self._lock:
            ok = self._verified.get(key)
        if ok is not None:
            return ok
        ok = _decodes_alike(jpeg, reference())
        if not ok:
            log.info("%s level %d: stand-alone JPEG tiles decode differently from the reader; tiles are "
                     "re-encoded instead", self.path, self.level)
        with self._lock:
            self._verified[key] = ok
        return ok


def _decodes_alike(jpeg: bytes, expected: np.ndarray) -> bool:
    import io

    import imagecodecs
    from PIL import Image

    try:
        a = np.asarray(imagecodecs.jpeg_decode(jpeg))
        with Image.open(io.BytesIO(jpeg)) as im:
            b = np.asarray(im.convert("RGB")) if im.mode != "RGB" else np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - a decoder refuses the merged stream: never pass it through
        log.debug("stand-alone JPEG check failed: %s", exc)
        return False
    return a.shape == expected.shape and np.array_equal(a, expected) and np.array_equal(b, expected)


def raw_level(slide: Any, level: int) -> RawTileLevel | None:
    """The :class:`RawTileLevel` of ``slide``'s ``level``, or None when the backend has no raw tile
    access (not tifffile) or the level is not plain RGB/YCbCr JPEG tiles."""
    reader = getattr(slide, "_reader", None)
    get = getattr(reader, "raw_tiles", None)
    if reader is None or get is None:
        return None
    cache = getattr(reader, "_wsi_raw_levels", None)
    if cache is None:
        cache = {}
        try:
            reader._wsi_raw_levels = cache
        except AttributeError:
            pass
    if level not in cache:
        cache[level] = get(level)
    return cache[level]


def aligned_tile(slide: Any, x: int, y: int, level: int, read_size: int,
                 tile_size: int) -> tuple[RawTileLevel, int] | None:
    """``(raw level, tile index)`` when a TileTable row (level-0 ``x, y``; ``read_size``² pixels of
    ``level`` resized to ``tile_size``²) is exactly one whole source tile with raw access, else None."""
    if int(read_size) != int(tile_size):
        return None
    rl = raw_level(slide, int(level))
    if rl is None:
        return None
    ds = slide.level_downsamples[int(level)]
    lx, ly = int(math.floor(int(x) / ds)), int(math.floor(int(y) / ds))
    index = rl.index_at(lx, ly, int(read_size), int(read_size))
    return None if index is None else (rl, index)


def passthrough_jpeg(slide: Any, x: int, y: int, level: int, read_size: int, tile_size: int,
                     quality: int | None = None, aligned: tuple[RawTileLevel, int] | None = None) -> bytes | None:
    """The stand-alone JPEG bytes of a TileTable row when it may pass through (module docstring), else
    None. ``quality``: the JPEG quality the caller would encode at; a level whose tiles were encoded at a
    higher quality is re-encoded (the caller asked for smaller files), one at the same or a lower quality
    passes through (re-encoding could only add loss). ``x, y`` are level-0 pixels; ``aligned`` is
    :func:`aligned_tile`'s answer when the caller has it already."""
    found = aligned if aligned is not None else aligned_tile(slide, x, y, level, read_size, tile_size)
    if found is None:
        return None
    rl, index = found
    if quality is not None:
        src_q = rl.source_quality()
        if src_q is None or src_q > int(quality):
            return None
    made = rl.standalone(index)
    if made is None:
        return None
    jpeg, key = made
    def reference() -> np.ndarray:
        return slide.read_region((int(x), int(y)), int(level), (int(read_size), int(read_size)))

    return jpeg if rl.verified(key, index, jpeg, reference) else None
