"""Synthetic slides and broken files for tests, benchmarks and demos.

:func:`make_slide` writes a pyramidal, JPEG-tiled, Aperio-SVS-like TIFF of any size in seconds: it cuts a
small pool of tiles from a real slide (or paints an H&E-like texture), JPEG-encodes each once, lays
tissue out as a few blobs on the tile grid (white tiles elsewhere) and writes the *pre-encoded* tiles
with tifffile. Every pyramid level is a top-level IFD (cuCIM does not see SubIFDs), each level is 4x
smaller than the one above, and a lower-level tile is the 4x4-box-filtered image of its 16 children, so
levels agree with each other. Tiles are memoised by their children's keys: identical tissue interiors
are encoded once. OpenSlide, tiffslide/tifffile and cuCIM all read the result as an Aperio slide.

:func:`make_corrupt_copies` makes the broken inputs every area's tests reuse (empty, text renamed
``.svs``, truncated, unsupported format).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["make_slide", "make_corrupt_copies", "default_source_slide", "plain_tiff"]

_PERIOD = 16  # level-0 tissue tiles repeat with this period (in tiles): lower levels memoise well
_WHITE = -1  # key of an all-white (background) tile
_HEADER = "Aperio Image Library v10.0.0"


def default_source_slide() -> Path | None:
    """The real slide ``make_slide`` cuts its tile pool from by default (CMU-1-Small-Region.svs in
    :func:`wsi_lab.locations.shared_slides_dir`), or None."""
    from wsi_lab.locations import shared_slides_dir

    folder = shared_slides_dir()
    candidate = folder / "CMU-1-Small-Region.svs" if folder is not None else None
    return candidate if candidate is not None and candidate.is_file() else None


# -- tile pool ------------------------------------------------------------------------------------
def _encode(tile: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    # JFIF YCbCr 4:2:0: with tifffile's default photometric for JPEG (YCbCr tag) every reader agrees
    return bytes(imagecodecs.jpeg8_encode(tile, level=quality))


def _decode(data: bytes) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpeg8_decode(data)


def _pool_from_slide(source: Path, tile: int, max_tiles: int = 48) -> list[np.ndarray]:
    from wsi_lab.slide import open_slide

    with open_slide(source) as s:
        w, h = s.dimensions
        nx, ny = w // tile, h // tile
        scored = []
        for iy in range(ny):
            for ix in range(nx):
                arr = s.read_region((ix * tile, iy * tile), 0, (tile, tile))
                gray = arr.mean(axis=2)
                tissue = float((gray < 215).mean())
                scored.append((tissue, iy * nx + ix, arr))
    scored.sort(key=lambda t: -t[0])
    keep = [arr for frac, _, arr in scored if frac >= 0.6][:max_tiles]
    if len(keep) < 4:
        keep = [arr for _, _, arr in scored[: min(max_tiles, 8)]]
    return keep


def _procedural_pool(tile: int, rng: np.random.Generator, count: int = 16) -> list[np.ndarray]:
    """H&E-like texture: pink stroma with smooth variation, purple nuclei, a few pale gaps."""
    from scipy import ndimage

    pool = []
    for _ in range(count):
        low = rng.random((tile // 32 + 2, tile // 32 + 2))
        smooth = ndimage.zoom(low, 32, order=1)[:tile, :tile]
        img = np.empty((tile, tile, 3), np.float32)
        img[..., 0] = 225 - 25 * smooth
        img[..., 1] = 150 - 40 * smooth
        img[..., 2] = 200 - 20 * smooth
        seeds = rng.random((tile, tile)) < 0.004
        nuclei = ndimage.gaussian_filter(seeds.astype(np.float32), 2.5) > 0.01
        img[nuclei] = (95, 60, 150)
        gaps = ndimage.zoom(rng.random((tile // 64 + 2, tile // 64 + 2)), 64, order=1)[:tile, :tile] > 0.85
        img[gaps] = (240, 230, 238)
        img += rng.normal(0, 6, img.shape)
        pool.append(np.clip(img, 0, 255).astype(np.uint8))
    return pool


def _tissue_mask(nx: int, ny: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(ny, nx) bool: a few smooth blobs covering about ``fraction`` of the tile grid."""
    if fraction <= 0:
        return np.zeros((ny, nx), bool)
    if fraction >= 1:
        return np.ones((ny, nx), bool)
    scale = max(nx, ny)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64) / scale
    field = np.zeros((ny, nx))
    for _ in range(int(rng.integers(3, 6))):
        cx, cy = rng.uniform(0.15, 0.85) * nx / scale, rng.uniform(0.15, 0.85) * ny / scale
        sx, sy = rng.uniform(0.08, 0.22, 2) * max(nx, ny) / scale
        ang = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u, v = dx * np.cos(ang) + dy * np.sin(ang), -dx * np.sin(ang) + dy * np.cos(ang)
        field += rng.uniform(0.6, 1.0) * np.exp(-((u / sx) ** 2 + (v / sy) ** 2))
    field += 0.08 * rng.random((ny, nx))  # ragged edges
    thr = np.quantile(field, 1 - fraction)
    mask = field > thr
    if not mask.any():
        mask[np.unravel_index(int(np.argmax(field)), field.shape)] = True
    return mask


# -- pyramid --------------------------------------------------------------------------------------
def _shrink4(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    s = arr.reshape(h // 4, 4, w // 4, 4, 3).sum(axis=(1, 3), dtype=np.uint16)
    return ((s + 8) >> 4).astype(np.uint8)


class _Pyramid:
    """Tile keys per level (int arrays, -1 = white) plus the encoded bytes and 4x-shrunk pixels of each key."""

    def __init__(self, tile: int, quality: int) -> None:
        self.tile, self.quality = tile, quality
        self.encoded: dict[int, bytes] = {}
        self.small: dict[int, np.ndarray] = {}  # key -> (tile/4, tile/4, 3): the key's pixels shrunk 4x
        q = tile // 4
        white = np.full((tile, tile, 3), 255, np.uint8)
        self.encoded[_WHITE] = _encode(white, quality)
        self.small[_WHITE] = np.full((q, q, 3), 255, np.uint8)
        self._next = 0

    def add(self, pixels: np.ndarray, encoded: bytes | None = None) -> int:
        key = self._next
        self._next += 1
        self.encoded[key] = encoded if encoded is not None else _encode(pixels, self.quality)
        self.small[key] = _shrink4(pixels)
        return key

    def next_level(self, grid: np.ndarray, nx: int, ny: int) -> np.ndarray:
        """Keys of the (ny, nx) tile grid one level down from ``grid`` (each tile = 4x4 children)."""
        t, q = self.tile, self.tile // 4
        child = np.full((4 * ny, 4 * nx), _WHITE, np.int64)
        h, w = min(grid.shape[0], 4 * ny), min(grid.shape[1], 4 * nx)
        child[:h, :w] = grid[:h, :w]
        combos = child.reshape(ny, 4, nx, 4).transpose(0, 2, 1, 3).reshape(ny * nx, 16)
        uniq, inverse = np.unique(combos, axis=0, return_inverse=True)
        keys = np.empty(len(uniq), np.int64)
        canvas = np.empty((t, t, 3), np.uint8)
        for i, combo in enumerate(uniq):
            if (combo == _WHITE).all():
                keys[i] = _WHITE
                continue
            for j, c in enumerate(combo):
                a, b = divmod(j, 4)
                canvas[a * q:(a + 1) * q, b * q:(b + 1) * q] = self.small[int(c)]
            keys[i] = self.add(canvas)
        return keys[inverse.reshape(-1)].reshape(ny, nx)

    def assemble_small(self, grid: np.ndarray, width: int, height: int) -> np.ndarray:
        """The image of ``grid``'s level shrunk 4x, cropped to (width, height) pixels: (H, W, 3)."""
        q = self.tile // 4
        ny, nx = grid.shape
        out = np.empty((ny * q, nx * q, 3), np.uint8)
        for iy in range(ny):
            for ix in range(nx):
                out[iy * q:(iy + 1) * q, ix * q:(ix + 1) * q] = self.small[int(grid[iy, ix])]
        return out[:max(1, height), :max(1, width)]


def _label_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    img = np.full((463, 387, 3), 250, np.uint8)
    x = 40
    while x < 347:  # a barcode
        bw = int(rng.integers(2, 7))
        img[60:200, x:x + bw] = 20
        x += bw + int(rng.integers(2, 6))
    img[260:300, 40:347] = (30, 30, 160)  # a "handwritten" stripe
    return img


def _macro_image(thumb: np.ndarray, label: np.ndarray) -> np.ndarray:
    from PIL import Image

    macro = np.full((431, 1280, 3), 200, np.uint8)  # glass
    lab = np.asarray(Image.fromarray(label).resize((360, 431)))
    macro[:, :360] = lab
    th, tw = thumb.shape[:2]
    s = min(900 / tw, 411 / th)
    small = np.asarray(Image.fromarray(thumb).resize((max(1, int(tw * s)), max(1, int(th * s)))))
    macro[10:10 + small.shape[0], 370:370 + small.shape[1]] = small
    return macro


def _description(width: int, height: int, tile: int, quality: int, mpp: float | None,
                 magnification: float | None, level_size: tuple[int, int] | None = None) -> str:
    head = f"{_HEADER}\n{width}x{height} ({tile}x{tile})"
    if level_size is not None:
        head += f" -> {level_size[0]}x{level_size[1]}"
    fields = [f"{head} JPEG/RGB Q={quality}"]
    if magnification is not None:
        fields.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    return "|".join(fields)


def make_slide(path: str | os.PathLike, width: int, height: int, tile: int = 256, mpp: float | None = 0.25,
               magnification: float | None = 20, quality: int = 80, source: str | os.PathLike | None = None,
               tissue_fraction: float = 0.4, seed: int = 0, associated: bool = True,
               levels: int | None = None) -> Path:
    """Write a synthetic pyramidal Aperio-like SVS of ``width`` x ``height`` level-0 pixels; return its path.

    ``tile``: tile edge in pixels (multiple of 16). ``mpp``: level-0 µm/px written to the description
    (``None``: the slide has no µm/px). ``magnification``: AppMag (``None``: omitted). ``source``: a slide
    to cut the tissue tile pool from (default: CMU-1-Small-Region.svs when found; ``"procedural"`` or no
    slide found: a painted H&E-like texture). ``tissue_fraction``: share of level-0 tiles that hold
    tissue. ``levels``: number of pyramid levels (default: 4x steps until a level fits in one tile).
    ``associated``: also write label and macro images (the Aperio thumbnail page is always written).
    """
    import tifffile

    from wsi_lab.errors import InvalidParameterError

    path = Path(path)
    if width <= 0 or height <= 0:
        raise InvalidParameterError(f"make_slide: size must be positive, got {width}x{height}")
    if tile <= 0 or tile % 16:
        raise InvalidParameterError(f"make_slide: tile must be a positive multiple of 16, got {tile}")
    if levels is not None and levels < 1:
        raise InvalidParameterError(f"make_slide: levels must be >= 1, got {levels}")
    rng = np.random.default_rng(seed)

    # tile pool
    src = None if source == "procedural" else (Path(source) if source is not None else default_source_slide())
    pool_pixels = _pool_from_slide(src, tile) if src is not None else []
    if not pool_pixels:
        pool_pixels = _procedural_pool(tile, rng)
    pyr = _Pyramid(tile, quality)
    pool_keys = []
    for px in pool_pixels:
        enc = _encode(px, quality)
        pool_keys.append(pyr.add(_decode(enc), enc))  # lower levels shrink what readers decode

    # level 0 layout
    nx, ny = -(-width // tile), -(-height // tile)
    mask = _tissue_mask(nx, ny, tissue_fraction, rng)
    pattern = np.asarray(pool_keys, np.int64)[rng.integers(0, len(pool_keys), (_PERIOD, _PERIOD))]
    grid0 = np.where(mask, np.tile(pattern, (-(-ny // _PERIOD), -(-nx // _PERIOD)))[:ny, :nx], _WHITE)

    # pyramid
    sizes, grids = [(width, height)], [grid0]
    while (levels is None and max(sizes[-1]) > tile) or (levels is not None and len(sizes) < levels):
        w, h = max(1, sizes[-1][0] // 4), max(1, sizes[-1][1] // 4)
        grids.append(pyr.next_level(grids[-1], -(-w // tile), -(-h // tile)))
        sizes.append((w, h))

    # thumbnail from the smallest level whose 4x-shrunk image is at most ~2k pixels
    j = next((k for k, g in enumerate(grids) if max(g.shape) * tile // 4 <= 2048), len(grids) - 1)
    thumb = pyr.assemble_small(grids[j], sizes[j][0] // 4, sizes[j][1] // 4)
    th, tw = thumb.shape[:2]
    s = min(1.0, 768 / max(th, tw))
    if s < 1:
        from PIL import Image

        thumb = np.asarray(Image.fromarray(thumb).resize((max(1, round(tw * s)), max(1, round(th * s))),
                                                         Image.Resampling.BOX))

    enc_len = {k: len(v) for k, v in pyr.encoded.items()}
    total = sum(enc_len[k] for g in grids for k in g.ravel().tolist())
    bigtiff = total > 2**32 - 2**28

    def tiles(grid: np.ndarray) -> Iterator[bytes]:
        enc = pyr.encoded
        for k in grid.ravel().tolist():
            yield enc[k]

    common: dict[str, Any] = dict(dtype=np.uint8, compression="jpeg", photometric="rgb", metadata=None)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw_:
        for k, (grid, (w, h)) in enumerate(zip(grids, sizes)):
            desc = _description(width, height, tile, quality, mpp, magnification, None if k == 0 else (w, h))
            tw_.write(data=tiles(grid), shape=(h, w, 3), tile=(tile, tile), description=desc, **common)
            if k == 0:
                tdesc = f"{_HEADER}\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - "
                tw_.write(data=iter([_encode(thumb, 90)]), shape=thumb.shape, rowsperstrip=thumb.shape[0],
                          description=tdesc, **common)
        if associated:
            label = _label_image(seed)
            tw_.write(label, compression="lzw", photometric="rgb", metadata=None, subfiletype=1,
                      rowsperstrip=label.shape[0], description=f"{_HEADER}\nlabel {label.shape[1]}x{label.shape[0]}")
            macro = _macro_image(thumb, label)
            tw_.write(data=iter([_encode(macro, 90)]), shape=macro.shape, rowsperstrip=macro.shape[0], subfiletype=9,
                      description=f"{_HEADER}\nmacro {macro.shape[1]}x{macro.shape[0]}", **common)
    log.info("wrote synthetic slide %s (%dx%d, %d levels, %d unique tiles)", path, width, height, len(sizes),
             len(pyr.encoded))
    return path


def plain_tiff(path: str | os.PathLike, width: int = 512, height: int = 384, tile: int = 128,
               resolution: tuple[float, float] | None = (72.0, 72.0), unit: str = "INCH") -> Path:
    """Write a small generic (non-vendor) tiled JPEG TIFF with a TIFF resolution tag, e.g. the 72-dpi
    default many image writers put there (which must not be read as µm/px). Returns the path."""
    import tifffile

    rng = np.random.default_rng(1)
    img = (rng.random((height // 16, width // 16, 3)) * 120 + 100).astype(np.uint8).repeat(16, 0).repeat(16, 1)
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, img, tile=(tile, tile), compression="jpeg", photometric="rgb", metadata=None,
                         resolution=resolution, resolutionunit=unit if resolution else None)
    return path


def _garble_tiles(src: Path, data: bytes) -> bytes:
    """``data`` (the bytes of TIFF ``src``) with the second half of each tiled page's tiles garbled."""
    import tifffile

    out = bytearray(data)
    rng = np.random.default_rng(0)
    with tifffile.TiffFile(src) as tf:
        for page in tf.pages:
            if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
                continue
            offsets, counts = page.dataoffsets, page.databytecounts
            for i in range(len(offsets) // 2, len(offsets)):
                o, c = int(offsets[i]), int(counts[i])
                if c > 64:  # keep the first bytes (SOI, tables) so readers get past the header
                    out[o + 32:o + c] = rng.integers(0, 256, c - 32, dtype=np.uint8).tobytes()
    return bytes(out)


def _truncate_tiles(src: Path, data: bytes) -> bytes | None:
    """A valid one-directory TIFF whose level-0 tile data stops 60% of the way through (the other
    directories unlinked), or None when ``src``'s first directory does not precede its tiles."""
    import struct

    import tifffile

    with tifffile.TiffFile(src) as tf:
        page = tf.pages[0]
        if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
            return None
        start = min(o for o in page.dataoffsets if o)
        end = max(o + c for o, c in zip(page.dataoffsets, page.databytecounts))
        if page.offset > start:
            return None
        bo, (count_fmt, entry, ptr_fmt) = tf.byteorder, (("Q", 20, "Q") if tf.is_bigtiff else ("H", 12, "I"))
    out = bytearray(data)
    n = struct.unpack_from(bo + count_fmt, out, page.offset)[0]
    struct.pack_into(bo + ptr_fmt, out, page.offset + struct.calcsize(count_fmt) + entry * n, 0)  # no next IFD
    return bytes(out[: start + int(0.6 * (end - start))])


def make_corrupt_copies(src: str | os.PathLike, folder: str | os.PathLike) -> dict[str, Path]:
    """Broken inputs for error-handling tests, made in ``folder`` from the real slide ``src``.

    Keys: ``empty`` (0-byte ``.svs``), ``text`` (a text file renamed ``.svs``), ``truncated`` (the first
    60% of ``src``'s bytes, same extension), ``corrupt`` (same size and header, but the data of the second
    half of every tiled page's tiles overwritten with random bytes: opens everywhere, decoding fails),
    ``truncated_tiles`` (only when ``src``'s first directory comes before its tiles, as in slides written by
    :func:`make_slide`: a valid one-level TIFF whose last 40% of level-0 tile data is cut off, so readers
    open it and only fail on the missing tiles), ``png_as_tif`` (a PNG renamed ``.tif``), ``png`` (a real
    ``.png``: not a slide format), ``directory`` (a folder named like a slide), ``missing`` (a path that
    does not exist).
    """
    from PIL import Image

    src, folder = Path(src), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out["empty"] = folder / "empty.svs"
    out["empty"].write_bytes(b"")
    out["text"] = folder / "notes.svs"
    out["text"].write_text("this is not a slide\n" * 20)
    data = src.read_bytes()
    out["truncated"] = folder / f"truncated{src.suffix}"
    out["truncated"].write_bytes(data[: int(len(data) * 0.6)])
    cut = _truncate_tiles(src, data)
    if cut is not None:
        out["truncated_tiles"] = folder / f"truncated-tiles{src.suffix}"
        out["truncated_tiles"].write_bytes(cut)
    out["corrupt"] = folder / f"corrupt{src.suffix}"
    out["corrupt"].write_bytes(_garble_tiles(src, data))
    png = np.zeros((64, 64, 3), np.uint8)
    png[16:48, 16:48] = (200, 80, 160)
    out["png"] = folder / "picture.png"
    Image.fromarray(png).save(out["png"])
    out["png_as_tif"] = folder / "picture.tif"
    out["png_as_tif"].write_bytes(out["png"].read_bytes())
    out["directory"] = folder / "folder.svs"
    out["directory"].mkdir(exist_ok=True)
    out["missing"] = folder / "does-not-exist.svs"
    return out
