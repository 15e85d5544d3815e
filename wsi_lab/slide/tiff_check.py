"""Structural check of a TIFF file before any reader backend sees it (plain :mod:`struct`, no codecs).

Some malformed files make a backend hang or crash instead of failing: an IFD chain that points back to
itself sends cuCIM into an endless loop, and a declared image size larger than the tile table makes
reads index past the table. :func:`check_tiff_structure` walks the IFD chain (and SubIFDs) reading only
the directory entries, and raises :class:`~wsi_lab.errors.SlideOpenError` (with ``.file`` and
``.reason``) for:

- an IFD offset that points past the end of the file, into the header, or to an IFD already visited (a loop);
- more IFDs than :data:`MAX_IFDS`, or a directory with more than :data:`MAX_ENTRIES` entries;
- a tiled image whose tile offset/byte-count tables are shorter than its declared size needs
  (``ceil(width / tile_width) * ceil(height / tile_length)``, times samples for planar images), or a
  strip image whose strip table is shorter than ``ceil(height / rows_per_strip)`` (times samples);
- a tile or strip table whose count disagrees between offsets and byte counts.

Files that do not start with a TIFF/BigTIFF header are left alone (other formats go to their backends).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

from wsi_lab.errors import SlideOpenError

__all__ = ["check_tiff_structure", "is_tiff_header", "MAX_IFDS", "MAX_ENTRIES"]

MAX_IFDS = 100_000
MAX_ENTRIES = 4096

_TAG_WIDTH, _TAG_LENGTH, _TAG_SPP, _TAG_PLANAR = 256, 257, 277, 284
_TAG_STRIP_OFFSETS, _TAG_ROWS_PER_STRIP, _TAG_STRIP_COUNTS = 273, 278, 279
_TAG_TILE_WIDTH, _TAG_TILE_LENGTH, _TAG_TILE_OFFSETS, _TAG_TILE_COUNTS = 322, 323, 324, 325
_TAG_SUBIFDS, _TAG_IMAGE_DEPTH = 330, 32997
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_INT_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}


def is_tiff_header(head: bytes) -> bool:
    """Whether ``head`` (the first 4+ bytes of a file) is a classic TIFF or BigTIFF header."""
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _fail(path: Path, reason: str) -> SlideOpenError:
    err = SlideOpenError(f"{path}: {reason}; the file is corrupt or not a valid TIFF (re-export or re-copy it)")
    err.file, err.reason = path, reason
    return err


class _Reader:
    def __init__(self, fd: int, size: int, path: Path) -> None:
        self.fd, self.size, self.path = fd, size, path

    def read(self, offset: int, n: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) < n:
            raise _fail(self.path, f"a directory at offset {offset} runs past the end of the file ({self.size} bytes)")
        return data


def check_tiff_structure(path: str | os.PathLike) -> None:
    """Raise :class:`SlideOpenError` when the TIFF at ``path`` has a looping or out-of-file IFD chain or a
    tile/strip table that does not cover its declared size (see the module docstring); return quietly
    for sound TIFFs and for files that are not TIFF at all. Reads only directory entries (a few KB)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except IsADirectoryError:
        return
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 16, 0)
        if not is_tiff_header(head):
            return
        _walk(_Reader(fd, size, p), head)
    finally:
        os.close(fd)


def _walk(r: _Reader, head: bytes) -> None:
    bo = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if big:
        if len(head) < 16:
            raise _fail(r.path, "the BigTIFF header is truncated")
        first = struct.unpack_from(bo + "Q", head, 8)[0]
        header_size, count_fmt, entry_size, off_fmt = 16, "Q", 20, "Q"
    else:
        first = struct.unpack_from(bo + "I", head, 4)[0]
        header_size, count_fmt, entry_size, off_fmt = 8, "H", 12, "I"
    count_size, off_size = struct.calcsize(count_fmt), struct.calcsize(off_fmt)
    visited: set[int] = set()
    chains = [first]
    while chains:
        offset = chains.pop()
        index = 0
        chain: set[int] = set()
        while offset:
            if offset in chain:
                raise _fail(r.path, f"IFD at offset {offset} is referenced twice: the IFD chain loops")
            if offset in visited:  # SubIFDs may also be chained to each other: checked already
                break
            chain.add(offset)
            if offset < header_size or offset + count_size > r.size:
                raise _fail(r.path, f"IFD offset {offset} lies outside the file ({r.size} bytes)")
            visited.add(offset)
            if len(visited) > MAX_IFDS:
                raise _fail(r.path, f"more than {MAX_IFDS} IFDs")
            n = struct.unpack(bo + count_fmt, r.read(offset, count_size))[0]
            if n == 0 or n > MAX_ENTRIES:
                raise _fail(r.path, f"IFD {index} at offset {offset} declares {n} entries")
            block = r.read(offset + count_size, n * entry_size + off_size)
            tags = _entries(r, bo, block, n, entry_size, big)
            _check_tables(r.path, index, offset, tags)
            chains.extend(o for o in tags.get(_TAG_SUBIFDS, ()) if o)
            offset = struct.unpack_from(bo + off_fmt, block, n * entry_size)[0]
            index += 1


def _entries(r: _Reader, bo: str, block: bytes, n: int, entry_size: int, big: bool) -> dict[int, tuple]:
    """Tag -> values for the few tags the check needs; offset/count tables map to ``(count,)`` (only their
    length is needed, so their values are never read)."""
    out: dict[int, tuple] = {}
    inline = 8 if big else 4
    for i in range(n):
        base = i * entry_size
        if big:
            tag, typ, count = struct.unpack_from(bo + "HHQ", block, base)
            value_at = base + 12
        else:
            tag, typ, count = struct.unpack_from(bo + "HHI", block, base)
            value_at = base + 8
        if tag in (_TAG_TILE_OFFSETS, _TAG_TILE_COUNTS, _TAG_STRIP_OFFSETS, _TAG_STRIP_COUNTS):
            out[tag] = (count,)
            continue
        if tag not in (_TAG_WIDTH, _TAG_LENGTH, _TAG_SPP, _TAG_PLANAR, _TAG_ROWS_PER_STRIP, _TAG_TILE_WIDTH,
                       _TAG_TILE_LENGTH, _TAG_SUBIFDS, _TAG_IMAGE_DEPTH):
            continue
        fmt = _INT_FORMATS.get(typ)
        if fmt is None or count == 0:
            continue
        nbytes = _TYPE_SIZES[typ] * count
        if tag == _TAG_SUBIFDS and count > MAX_IFDS:
            raise _fail(r.path, f"a SubIFDs tag lists {count} directories")
        if nbytes <= inline:
            raw = block[value_at:value_at + nbytes]
        else:
            ptr = struct.unpack_from(bo + ("Q" if big else "I"), block, value_at)[0]
            if ptr + nbytes > r.size:
                raise _fail(r.path, f"tag {tag} points past the end of the file")
            raw = r.read(ptr, nbytes)
        out[tag] = struct.unpack(bo + fmt * count, raw)
    return out


def _check_tables(path: Path, index: int, offset: int, tags: dict[int, tuple]) -> None:
    width = tags.get(_TAG_WIDTH, (0,))[0]
    length = tags.get(_TAG_LENGTH, (0,))[0]
    if not width or not length:
        return
    spp = tags.get(_TAG_SPP, (1,))[0] or 1
    planes = spp if tags.get(_TAG_PLANAR, (1,))[0] == 2 else 1
    depth = tags.get(_TAG_IMAGE_DEPTH, (1,))[0] or 1
    where = f"IFD {index} (offset {offset}, {width}x{length} px)"
    if _TAG_TILE_OFFSETS in tags or _TAG_TILE_WIDTH in tags:
        tw = tags.get(_TAG_TILE_WIDTH, (0,))[0]
        tl = tags.get(_TAG_TILE_LENGTH, (0,))[0]
        if not tw or not tl:
            raise _fail(path, f"{where} is tiled but declares a tile size of {tw}x{tl}")
        need = math.ceil(width / tw) * math.ceil(length / tl) * planes * depth
        kind, have, counts = "tile", tags.get(_TAG_TILE_OFFSETS, (0,))[0], tags.get(_TAG_TILE_COUNTS, (0,))[0]
    elif _TAG_STRIP_OFFSETS in tags:
        rps = tags.get(_TAG_ROWS_PER_STRIP, (length,))[0] or length
        need = math.ceil(length / min(rps, length)) * planes
        kind, have, counts = "strip", tags[_TAG_STRIP_OFFSETS][0], tags.get(_TAG_STRIP_COUNTS, (0,))[0]
    else:
        return
    if have != counts:
        raise _fail(path, f"{where} has {have} {kind} offsets but {counts} {kind} byte counts")
    if have < need:
        raise _fail(path, f"{where} declares a size that needs {need} {kind}s but its {kind} table holds {have}")
