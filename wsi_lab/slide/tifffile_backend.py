"""Reader backend built on tifffile (and tiffslide for vendor metadata).

Pixels of tiled pyramid levels are read by decoding exactly the tiles a region touches, straight from
the file with ``os.pread`` (thread-safe, no shared file position). Plain JPEG tiles (SVS, NDPI, most
TIFFs) go straight to ``imagecodecs.jpeg_decode`` with the tables/colour-space arguments tifffile would
use, computed once per level; other codecs go through tifffile's own segment decoder (JPEG 2000, LZW,
...). Decoded tiles live in a small LRU that decodes each tile once even when threads race for it, and a
region that needs many tiles decodes them on a shared thread pool (``WSI_LAB_DECODE_THREADS``, 1 = off)
because imagecodecs releases the GIL.
Layouts the fast path does not cover (strips, planar or multi-channel series) go through tiffslide's
zarr view. Reads SVS, NDPI, OME-TIFF, SubIFD pyramids and generic tiled TIFF.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from wsi_lab.errors import SlideOpenError, SlideReadError, UnsupportedFormatError
from wsi_lab.io import LRUCache
from wsi_lab.slide.backend import ReaderMetadata
from wsi_lab.slide.metadata import first_present, plausible_mpp, stringify, to_float
from wsi_lab.slide.pixels import is_tiff, to_rgb, ycbcr_to_rgb
from wsi_lab.slide.tiff_meta import associated_series, ome_mpp, undecodable

if TYPE_CHECKING:
    from tifffile import TiffPage

log = logging.getLogger(__name__)

#: tiles of one region are decoded in parallel (a shared pool) when at least this many are missing
PARALLEL_MIN_TILES = 4
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def decode_threads() -> int:
    """Threads used to decode the tiles of one large region (env ``WSI_LAB_DECODE_THREADS``; 1 = off)."""
    env = os.environ.get("WSI_LAB_DECODE_THREADS")
    if env is not None and env.strip().isdigit():
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def _decode_pool() -> ThreadPoolExecutor | None:
    """The process-wide decode pool (recreated after a fork), or None when parallel decode is off."""
    global _POOL
    n = decode_threads()
    if n <= 1:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():  # a forked child must not use its parent's threads
            _POOL = (os.getpid(), ThreadPoolExecutor(n, thread_name_prefix="wsi_lab-decode"))
        return _POOL[1]


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False  # shared between callers: read_level copies out of it
    return arr


class _Level:
    """Everything the hot path needs about one tiled level, looked up once."""

    __slots__ = ("page", "tw", "th", "width", "height", "across", "offsets", "counts", "jpeg", "decode_args", "ycbcr")

    def __init__(self, page) -> None:
        from tifffile.tifffile import jpeg_decode_colorspace

        self.page = page
        self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.across = -(-self.width // self.tw)
        self.offsets = [int(o) for o in page.dataoffsets]
        self.counts = [int(c) for c in page.databytecounts]
        self.decode_args: dict = {"_fullsize": True}
        self.jpeg: dict | None = None
        # Aperio JPEG 2000 "YCbCr" (33003): the codestream holds YCbCr without a colour transform
        self.ycbcr = page.compression == 33003 and page.samplesperpixel == 3
        if page.compression in {6, 7, 34892, 33007}:  # JPEG flavours need the shared tables/header
            self.decode_args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        if page.compression == 7 and page.bitspersample == 8 and page.fillorder == 1:
            # plain JPEG: call the codec directly, with the arguments tifffile's own decoder would use
            cs, ocs = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
            self.jpeg = dict(bitspersample=8, tables=page.jpegtables, header=page.jpegheader, colorspace=cs,
                             outcolorspace=ocs, shape=(self.th, self.tw))


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
        except NotImplementedError as exc:  # e.g. planar RGB (axes SYX) or 4-D series
            raise UnsupportedFormatError(f"{path}: tifffile backend cannot read this layout ({exc})") from exc
        except Exception as exc:
            raise SlideOpenError(f"{path}: tifffile could not open it ({type(exc).__name__}: {exc})") from exc
        self._tf = self._ts.ts_tifffile
        series_index = int(props.get("tiffslide.series-index") or 0)
        self._series = self._tf.series[series_index]
        self._assoc = associated_series(self._tf, series_index)
        assoc = tuple(self._assoc)
        for level in range(len(dims)):
            problem = undecodable(self._series.levels[level].keyframe)
            if problem:
                self._ts.close()
                raise UnsupportedFormatError(f"{path}: level {level} cannot be decoded on this machine ({problem}); "
                                             "install the codec (pip install -U imagecodecs) or try another backend")
        self._display_max: np.ndarray | None = None  # scale of non-uint8 pixels, fixed per slide
        self._pages = [self._fast_page(i) for i in range(len(dims))]
        self._levels = [_Level(p) if p is not None else None for p in self._pages]
        self._fd = os.open(str(path), os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._cache: LRUCache[tuple[int, int], np.ndarray] = LRUCache(max_bytes=64 * 2**20)  # decoded tiles
        vendor = props.get("tiffslide.vendor") or ("ome" if self._tf.is_ome else "generic-tiff")
        mag = to_float(first_present(props, "tiffslide.objective-power"))
        ome: tuple[float | None, float | None] | None = (
            ome_mpp(self._tf.ome_metadata, series_index) if self._tf.is_ome else None)
        self.metadata = ReaderMetadata(
            level_dimensions=dims,
            level_downsamples=downs,
            mpp=plausible_mpp(props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y"), str(path))
            or plausible_mpp(*(ome or (None, None)), str(path)),
            magnification=mag,
            vendor=str(vendor),
            properties=stringify(props),
            associated_names=assoc,
        )

    def _fast_page(self, level: int) -> TiffPage | None:
        """The TiffPage of ``level`` when the direct tile path applies to it, else ``None``."""
        from tifffile import TiffPage

        try:
            lvl = self._series.levels[level]
            if len(lvl.pages) != 1:
                return None
            page = lvl.pages[0]
            if not isinstance(page, TiffPage):  # a TiffFrame (or nothing) has no tile layout of its own
                return None
            ok = (
                page.is_tiled
                and page.dtype == np.uint8
                and page.planarconfig == 1
                and len(page.shape) in (2, 3)
                and (len(page.shape) == 2 or page.shape[2] in (1, 3, 4))
                and page.tilelength * page.tilewidth <= 4096 * 4096
            )
            return page if ok else None
        except Exception as exc:  # noqa: BLE001 - any failure means the general path, logged
            log.debug("%s level %d: direct tile path unavailable (%s)", self.path, level, exc)
            return None

    # -- pixels -------------------------------------------------------------------------------
    def _decode(self, level: int, lv: _Level, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decode tile ``index`` of ``level`` straight from the file: (th, tw, 3) uint8. ``out``: a writable
        C-contiguous (th, tw, 3) uint8 array that plain JPEG tiles are decoded into (a recycled buffer: no
        new pages to fault in); the result may be another array (other codecs, unusual streams)."""
        offset, count = lv.offsets[index], lv.counts[index]
        if count == 0 or offset == 0:
            return np.full((lv.th, lv.tw, 3), 255, np.uint8)  # sparse tile: background
        if offset + count > self._size:
            raise SlideReadError(
                f"{self.path}: tile {index} of level {level} lies past the end of the file "
                f"(truncated or corrupt file); re-copy or re-export the slide"
            )
        data = os.pread(self._fd, count, offset)
        try:
            if lv.jpeg is not None:
                import imagecodecs

                fits = out is not None and out.shape == (lv.th, lv.tw, 3) and out.dtype == np.uint8 \
                    and out.flags.writeable and out.flags.c_contiguous
                try:
                    segment = imagecodecs.jpeg_decode(data, **lv.jpeg, out=out if fits else None)
                except Exception:
                    if not fits:
                        raise
                    segment = imagecodecs.jpeg_decode(data, **lv.jpeg)  # a stream of another size than out
                if segment.shape[:2] != (lv.th, lv.tw):  # unusual stream: let tifffile pad it
                    segment, _, _ = lv.page.decode(data, index, **lv.decode_args)
            else:
                segment, _, _ = lv.page.decode(data, index, **lv.decode_args)
        except Exception as exc:
            raise SlideReadError(
                f"{self.path}: could not decode tile {index} of level {level} "
                f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt"
            ) from exc
        if segment is None:
            raise SlideReadError(f"{self.path}: tile {index} of level {level} is empty or corrupt")
        segment = np.asarray(segment)
        if segment.ndim == 4:  # tifffile's (depth, length, width, samples)
            segment = segment.reshape(segment.shape[-3:])
        if lv.ycbcr:
            segment = ycbcr_to_rgb(segment)
        return to_rgb(segment)

    def _tile(self, level: int, lv: _Level, index: int) -> np.ndarray:
        return self._cache.get_or_load((level, index), lambda: _frozen(self._decode(level, lv, index)))

    def read_level(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        lv = self._levels[level]
        if lv is None:
            return self._read_via_tiffslide(x, y, width, height, level)
        tw, th, across = lv.tw, lv.th, lv.across
        x_end, y_end = x + width, y + height
        tx0, tx1 = x // tw, (x_end - 1) // tw + 1
        ty0, ty1 = y // th, (y_end - 1) // th + 1
        out = np.empty((height, width, 3), np.uint8)
        pool = _decode_pool() if (tx1 - tx0) * (ty1 - ty0) >= PARALLEL_MIN_TILES else None
        rows_per_batch = max(1, 64 // (tx1 - tx0))  # bounds the tiles held at once to ~64
        for by in range(ty0, ty1, rows_per_batch):
            coords = [(tx, ty) for ty in range(by, min(by + rows_per_batch, ty1)) for tx in range(tx0, tx1)]
            indices = [ty * across + tx for tx, ty in coords]
            if pool is not None and sum(self._cache.get((level, i)) is None for i in indices) >= PARALLEL_MIN_TILES:
                tiles = list(pool.map(lambda i: self._tile(level, lv, i), indices))
            else:
                tiles = [self._tile(level, lv, i) for i in indices]
            for (tx, ty), tile in zip(coords, tiles):
                # intersection of the tile box with the request box, in level pixels
                ox, oy = tx * tw, ty * th
                x0, y0 = max(x, ox), max(y, oy)
                x1, y1 = min(x_end, ox + tw, lv.width), min(y_end, oy + th, lv.height)
                out[y0 - y:y1 - y, x0 - x:x1 - x] = tile[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        return out

    def raw_tiles(self, level: int):
        """Raw JPEG tile access to ``level`` (:class:`wsi_lab.slide.raw_tiles.RawTileLevel`), or None."""
        from wsi_lab.slide.raw_tiles import RawTileLevel

        lv = self._levels[level]
        if lv is None:  # a level tifffile cannot address by tiles
            return None
        return RawTileLevel.from_reader_level(level, lv, self._fd, self._size, str(self.path),
                                              decode=lambda index, out=None: self._decode(level, lv, index, out))

    def _raw_via_tiffslide(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        """The box in level pixels as (H, W, C) in the file's own dtype."""
        ds = self.metadata.level_downsamples[level]
        try:
            arr = self._ts.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height),
                                       as_array=True, padding=False)
        except Exception as exc:
            raise SlideReadError(f"{self.path}: reading level {level} failed ({type(exc).__name__}: {exc})") from exc
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[:2] != (height, width) and arr.shape[1:] == (height, width):
            arr = np.moveaxis(arr, 0, -1)  # CYX -> YXC
        return arr

    def _read_via_tiffslide(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        arr = self._raw_via_tiffslide(x, y, width, height, level)
        if arr.dtype != np.uint8 and self._display_max is None:
            self._display_max = self._compute_display_max(arr.ndim == 3 and arr.shape[2] == 3)
        return to_rgb(arr, self._display_max)

    def _compute_display_max(self, rgb: bool) -> np.ndarray:
        """The value that maps to 255 for non-uint8 pixels, per channel (one shared value for RGB): the
        99.9th percentile of a ≤ ~1 MP subsample of the smallest level, read in bands (memory bounded), so
        every read of the slide is scaled the same way."""
        level = len(self.metadata.level_dimensions) - 1
        lw, lh = self.metadata.level_dimensions[level]
        step = max(1, int(np.ceil(np.sqrt(lw * lh / 1e6))))
        band = max(step, (4_000_000 // max(lw, 1)) // step * step)
        samples = [self._raw_via_tiffslide(0, y, lw, min(band, lh - y), level)[::step, ::step]
                   for y in range(0, lh, band)]
        a = np.concatenate([s if s.ndim == 3 else s[:, :, None] for s in samples]).astype(np.float32)
        a = a.reshape(-1, a.shape[2])
        hi = np.percentile(a, 99.9, axis=0)
        if rgb:
            hi = np.full_like(hi, hi.max())
        return np.where(hi > 0, hi, 1.0)

    def read_associated(self, name: str) -> np.ndarray:
        series = self._assoc[name]
        try:
            img = np.asarray(series.asarray())
        except Exception as exc:
            raise SlideReadError(f"{self.path}: associated image {name!r} is unreadable ({exc})") from exc
        if img.ndim == 3 and str(series.axes).startswith(("C", "S")):  # CYX / planar SYX -> YXC
            img = np.moveaxis(img, 0, -1)
        return to_rgb(img)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._ts.close()


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
