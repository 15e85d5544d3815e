"""Reader backend built on tifffile (and tiffslide for vendor metadata).

Pixels of tiled pyramid levels are read by decoding exactly the tiles a region touches, straight from
the file with ``os.pread`` (thread-safe, no shared file position) and tifffile's own segment decoder
(which handles JPEG tables, YCbCr, NDPI restart-marker strips, JPEG 2000 via imagecodecs, ...).
Layouts the fast path does not cover (strips, planar or multi-channel series) go through tiffslide's
zarr view. Reads SVS, NDPI, OME-TIFF, SubIFD pyramids and generic tiled TIFF.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import numpy as np

from wsi_lab.errors import SlideOpenError, SlideReadError
from wsi_lab.slide.backend import ReaderMetadata
from wsi_lab.slide.metadata import first_present, plausible_mpp, stringify, to_float

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: Path) -> bool:
    """True when the file starts with a classic or BigTIFF header."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


class _TileCache:
    """A small thread-safe LRU of decoded tiles keyed by (level, tile index)."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: tuple[int, int], arr: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class TifffileReader:
    """An open TIFF-family slide (see module docstring)."""

    backend_name = "tifffile"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self.path = path
        try:
            self._ts = tiffslide.TiffSlide(str(path))
            props = dict(self._ts.properties)
            dims = tuple((int(w), int(h)) for w, h in self._ts.level_dimensions)
            downs = tuple(float(d) for d in self._ts.level_downsamples)
            assoc = tuple(self._ts.associated_images.keys())
        except Exception as exc:
            raise SlideOpenError(f"{path}: tifffile could not open it ({type(exc).__name__}: {exc})") from exc
        self._tf = self._ts.ts_tifffile
        series_index = int(props.get("tiffslide.series-index") or 0)
        self._series = self._tf.series[series_index]
        self._pages = [self._fast_page(i) for i in range(len(dims))]
        self._fd = os.open(str(path), os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._cache = _TileCache()
        vendor = props.get("tiffslide.vendor") or ("ome" if self._tf.is_ome else "generic-tiff")
        mag = to_float(first_present(props, "tiffslide.objective-power"))
        self.metadata = ReaderMetadata(
            level_dimensions=dims,
            level_downsamples=downs,
            mpp=plausible_mpp(props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y"), str(path)),
            magnification=mag,
            vendor=str(vendor),
            properties=stringify(props),
            associated_names=assoc,
        )

    def _fast_page(self, level: int):
        """The TiffPage of ``level`` when the direct tile path applies to it, else ``None``."""
        try:
            lvl = self._series.levels[level]
            if len(lvl.pages) != 1:
                return None
            page = lvl.pages[0]
            ok = (
                page.is_tiled
                and page.dtype == np.uint8
                and page.planarconfig == 1
                and len(page.shape) in (2, 3)
                and (len(page.shape) == 2 or page.shape[2] in (1, 3, 4))
                and page.tilelength * page.tilewidth <= 4096 * 4096
            )
            return page if ok else None
        except Exception as exc:
            log.debug("%s level %d: direct tile path unavailable (%s)", self.path, level, exc)
            return None

    # -- pixels -------------------------------------------------------------------------------
    @staticmethod
    def _decode_args(page) -> dict:
        args: dict = {"_fullsize": True}
        if page.compression in {6, 7, 34892, 33007}:  # JPEG flavours need the shared tables/header
            args["jpegtables"] = page.jpegtables
            args["jpegheader"] = page.jpegheader
        return args

    def _tile(self, level: int, page, index: int) -> np.ndarray:
        cached = self._cache.get((level, index))
        if cached is not None:
            return cached
        offset = page.dataoffsets[index]
        count = page.databytecounts[index]
        if count == 0 or offset == 0:
            th, tw = page.tilelength, page.tilewidth
            tile = np.full((th, tw, 3), 255, np.uint8)  # sparse tile: background
        else:
            if offset + count > self._size:
                raise SlideReadError(
                    f"{self.path}: tile {index} of level {level} lies past the end of the file "
                    f"(truncated or corrupt file); re-copy or re-export the slide"
                )
            data = os.pread(self._fd, count, offset)
            try:
                segment, _, _ = page.decode(data, index, **self._decode_args(page))
            except Exception as exc:
                raise SlideReadError(
                    f"{self.path}: could not decode tile {index} of level {level} "
                    f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt"
                ) from exc
            if segment is None:
                raise SlideReadError(f"{self.path}: tile {index} of level {level} is empty or corrupt")
            tile = _to_rgb(np.asarray(segment).reshape(segment.shape[-3:]))
        self._cache.put((level, index), tile)
        return tile

    def read_level(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        page = self._pages[level]
        if page is None:
            return self._read_via_tiffslide(x, y, width, height, level)
        th, tw = page.tilelength, page.tilewidth
        across = -(-page.imagewidth // tw)
        out = np.empty((height, width, 3), np.uint8)
        for ty in range(y // th, (y + height - 1) // th + 1):
            for tx in range(x // tw, (x + width - 1) // tw + 1):
                tile = self._tile(level, page, ty * across + tx)
                # intersection of the tile box with the request box, in level pixels
                x0, y0 = max(x, tx * tw), max(y, ty * th)
                x1 = min(x + width, tx * tw + tw, page.imagewidth)
                y1 = min(y + height, ty * th + th, page.imagelength)
                out[y0 - y:y1 - y, x0 - x:x1 - x] = tile[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
        return out

    def _read_via_tiffslide(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        ds = self.metadata.level_downsamples[level]
        try:
            arr = self._ts.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height),
                                       as_array=True, padding=False)
        except Exception as exc:
            raise SlideReadError(f"{self.path}: reading level {level} failed ({type(exc).__name__}: {exc})") from exc
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # CYX -> YXC
        return _to_rgb(arr)

    def read_associated(self, name: str) -> np.ndarray:
        try:
            img = self._ts.associated_images[name]
        except KeyError:
            raise
        except Exception as exc:
            raise SlideReadError(f"{self.path}: associated image {name!r} is unreadable ({exc})") from exc
        return _to_rgb(np.asarray(img))

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._ts.close()


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """Any (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image -> (H, W, 3) uint8 RGB."""
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        hi = float(np.percentile(a, 99.9)) if a.size else 1.0
        arr = np.clip(a * (255.0 / (hi or 1.0)), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        rgb = arr[:, :, :3].astype(np.uint16)
        alpha = arr[:, :, 3:4].astype(np.uint16)
        return ((rgb * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
    if arr.shape[2] > 4:
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr)


class TifffileBackend:
    name: ClassVar[str] = "tifffile"
    extensions: ClassVar[dict[str, int]] = {
        ".svs": 100, ".tif": 100, ".tiff": 100, ".ome.tif": 100, ".ome.tiff": 100, ".btf": 100,
        ".qptiff": 100, ".ndpi": 60, ".scn": 40, ".bif": 40, ".svslide": 40,
    }
    default_priority: ClassVar[int] = 10

    @classmethod
    def available(cls) -> bool:
        import tifffile  # noqa: F401
        import tiffslide  # noqa: F401

        return True

    @classmethod
    def can_read(cls, path: Path) -> bool:
        return is_tiff(path)

    @classmethod
    def open(cls, path: Path) -> TifffileReader:
        return TifffileReader(path)
