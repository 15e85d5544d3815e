"""Writers of small slide-like TIFF variants (codecs, layouts, dtypes, metadata) for
``tests/test_slide_variants.py``. Every writer returns a :class:`Variant` holding the pixels it wrote
(per level, RGB uint8 where the file is RGB) and what the metadata must read as."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

APERIO = "Aperio Image Library v12.0.15\n{w}x{h} ({t}x{t}) {codec}"


@dataclass
class Variant:
    name: str
    path: Path
    levels: list[np.ndarray]                # what was written per level (H, W, C) in the file's dtype
    mpp: tuple[float, float] | None         # the µm/px the metadata must give (None: must be None)
    tol: float = 0.0                        # mean |difference| allowed (lossy codecs)
    tissue: np.ndarray | None = None        # level-0 (H, W) bool truth; None: blank slide
    fluorescence: bool = False
    magnification: float | None = None
    vendor: str | None = None
    associated: tuple[str, ...] = ()
    rgb: bool = True                        # pixels compare directly as RGB uint8
    extra: dict = field(default_factory=dict)

    def level_dims(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level`` as written (channel-first stacks and planar RGB included)."""
        a = self.levels[level]
        h, w = a.shape[1:3] if ("planar" in self.extra or (self.fluorescence and a.ndim == 3)) else a.shape[:2]
        return int(w), int(h)

    @property
    def dims(self) -> tuple[int, int]:
        return self.level_dims(0)


# ------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------
def tissue_truth(w: int, h: int, seed: int = 0) -> np.ndarray:
    """(H, W) bool: two smooth elliptical blobs covering ~25-35% of the image."""
    yy, xx = np.ogrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for cx, cy, rx, ry in ((0.33, 0.45, 0.22, 0.3), (0.7, 0.55, 0.18, 0.25)):
        cx, cy = (cx + rng.uniform(-0.03, 0.03)) * w, (cy + rng.uniform(-0.03, 0.03)) * h
        m |= ((xx - cx) / (rx * w)) ** 2 + ((yy - cy) / (ry * h)) ** 2 <= 1
    return m


def he_image(w: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB uint8 image (white glass, pink/purple tissue with smooth texture) and its tissue truth."""
    mask = tissue_truth(w, h, seed)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    tex = 0.5 + 0.25 * np.sin(xx / 23.0 + seed) * np.cos(yy / 17.0) + 0.25 * np.sin((xx + yy) / 41.0)
    nuclei = (np.sin(xx / 2.3) * np.sin(yy / 2.9 + seed) > 0.6) & (np.sin(xx / 19.0) * np.cos(yy / 15.0) > 0.2)
    img = np.full((h, w, 3), 255, np.uint8)
    for c, (base, amp, dark) in enumerate(((215, 40, 95), (120, 60, 60), (185, 35, 150))):
        chan = np.where(nuclei, dark, base - amp * tex).astype(np.uint8)
        img[..., c] = np.where(mask, chan, 255)
    return img, mask


def fluo_image(w: int, h: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (C, H, W) uint16 fluorescence stack (dark background ~100, bright tissue) and its tissue truth."""
    mask = tissue_truth(w, h, seed)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    stack = np.empty((channels, h, w), np.uint16)
    for c in range(channels):
        tex = 0.6 + 0.4 * np.sin(xx / (11.0 + 3 * c)) * np.cos(yy / (13.0 + 2 * c))
        stack[c] = np.where(mask, 800 + 2500 * tex, 100).astype(np.uint16)
    return stack, mask


def shrink(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter ``img`` (H, W[, C]) by an integer factor, dims floor(W/f) x floor(H/f)."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    crop = img[: h * factor, : w * factor].astype(np.float32)
    shape = (h, factor, w, factor) + img.shape[2:]
    return np.round(crop.reshape(shape).mean(axis=(1, 3))).astype(img.dtype)


def pyramid(img: np.ndarray, factor: int, count: int) -> list[np.ndarray]:
    out = [img]
    for _ in range(count - 1):
        out.append(shrink(out[0], factor ** len(out)))
    return out


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------
def _aperio_desc(w, h, tile, codec, mpp=None, mag=None, level=None):
    d = APERIO.format(w=w, h=h, t=tile, codec=codec)
    if level is not None:
        d += f" -> {level[0]}x{level[1]}"
    d += " Q=70"
    if mag is not None:
        d += f"|AppMag = {mag:g}"
    if mpp is not None:
        d += f"|MPP = {mpp:g}"
    return d


def rgb_to_ycbcr(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> full-range (JFIF) YCbCr, as Aperio stores JPEG 2000 tiles (compression 33003)."""
    a = a.astype(np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.dstack([y, cb, cr])), 0, 255).astype(np.uint8)


def _ycc_j2k_tiles(img: np.ndarray, tile: int):
    import imagecodecs

    h, w = img.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[y:y + tile, x:x + tile]
            t[:part.shape[0], :part.shape[1]] = part
            yield imagecodecs.jpeg2k_encode(rgb_to_ycbcr(t), level=0, codecformat="J2K", mct=False)


def svs(path: Path, compression, tile: int = 256, mpp: float | None = 0.5, mag: float | None = 20,
        size=(1536, 1024), tol: float = 0.0, name: str = "", levels: int = 2, ycc_j2k: bool = False,
        **kw) -> Variant:
    """Aperio-like SVS laid out as Aperio does: level 0, a stripped thumbnail page, the 4x levels, then a
    label (LZW) and a macro (JPEG) with their Aperio descriptions. ``ycc_j2k``: pre-encoded YCbCr
    JPEG 2000 tiles tagged 33003, as Aperio writes them."""
    w, h = size
    img, mask = he_image(w, h)
    levs = pyramid(img, 4, levels)
    codec = "J2K/YUV16" if ycc_j2k else ("J2K" if "2000" in str(compression) else "RGB")
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levs):
            desc = _aperio_desc(w, h, tile, codec, mpp, mag, None if i == 0 else (lv.shape[1], lv.shape[0]))
            if ycc_j2k:
                tw.write(_ycc_j2k_tiles(lv, tile), shape=lv.shape, dtype=np.uint8, tile=(tile, tile),
                         compression=33003, photometric="rgb", metadata=None, description=desc)
            else:
                tw.write(lv, tile=(tile, tile), compression=compression, photometric="rgb", metadata=None,
                         description=desc, **kw)
            if i == 0:
                thumb = shrink(img, 8)
                tw.write(thumb, photometric="rgb", metadata=None, compression="jpeg",
                         description=f"{APERIO.split(chr(10))[0]}\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - ")
        label = np.full((200, 300, 3), 250, np.uint8)
        label[50:150, 40:260] = 20
        tw.write(label, photometric="rgb", metadata=None, compression="lzw", subfiletype=1,
                 description=f"{APERIO.split(chr(10))[0]}\nlabel 300x200")
        macro = np.full((300, 800, 3), 200, np.uint8)
        tw.write(macro, photometric="rgb", metadata=None, compression="jpeg", subfiletype=9,
                 description=f"{APERIO.split(chr(10))[0]}\nmacro 800x300")
    return Variant(name or path.stem, path, levs, (mpp, mpp) if mpp else None, tol, mask,
                   magnification=mag, vendor="aperio", associated=("label", "macro", "thumbnail"))


def svs_ycc_j2k(path: Path) -> Variant:
    return svs(path, None, ycc_j2k=True, tol=1.5)


def generic(path: Path, img: np.ndarray, mask, *, levels: list[np.ndarray] | None = None, tile=None,
            compression=None, photometric=None, mpp=None, resolution=None, unit=None, subifds=False,
            ome=False, planar=None, byteorder="<", bigtiff=False, rowsperstrip=None, tol=0.0, extra_pages=(),
            name="", description=None, compressionargs=None, **vkw) -> Variant:
    """A generic TIFF: one level (or ``levels``) as top-level pages or SubIFDs, any codec/layout."""
    levs = levels or [img]
    kw = dict(compression=compression, photometric=photometric, byteorder=byteorder)
    if compressionargs:
        kw["compressionargs"] = compressionargs
    if tile:
        kw["tile"] = tile
    if rowsperstrip:
        kw["rowsperstrip"] = rowsperstrip
    if planar:
        kw["planarconfig"] = planar
    if resolution is not None:
        kw["resolution"] = resolution
        kw["resolutionunit"] = unit
    if description is not None:
        kw["description"] = description
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome, byteorder=byteorder) as tw:
        if subifds:
            md = {"axes": "YXS" if levs[0].ndim == 3 and levs[0].shape[-1] in (3, 4) else None}
            if ome and mpp:
                md.update(PhysicalSizeX=mpp[0], PhysicalSizeY=mpp[1])
            tw.write(levs[0], subifds=len(levs) - 1, metadata=md if ome else None, **{k: v for k, v in kw.items()
                                                                                      if k != "byteorder"})
            for lv in levs[1:]:
                tw.write(lv, subfiletype=1, metadata=None, **{k: v for k, v in kw.items()
                                                             if k not in ("byteorder", "description")})
        else:
            for i, lv in enumerate(levs):
                md = None
                if ome and i == 0:
                    md = {"axes": "CYX" if lv.ndim == 3 and photometric == "minisblack" else "YXS"}
                    if mpp:
                        md.update(PhysicalSizeX=mpp[0], PhysicalSizeY=mpp[1])
                kk = {k: v for k, v in kw.items() if k != "byteorder"}
                if i:
                    kk.pop("description", None)
                tw.write(lv, metadata=md, **kk)
        for page in extra_pages:
            tw.write(page, photometric="rgb", metadata=None, subfiletype=1, compression="zlib")
    return Variant(name or path.stem, path, levs, mpp, tol, mask, **vkw)


def blank(path: Path) -> Variant:
    img = np.full((768, 1024, 3), 255, np.uint8)
    return generic(path, img, None, tile=(256, 256), compression="zlib", photometric="rgb")


def all_variants(folder: Path) -> dict[str, Callable[[], Variant]]:
    """name -> thunk writing that variant into ``folder``."""
    f = folder
    he, hem = he_image(1500, 1100, seed=1)
    odd, oddm = he_image(2001, 1333, seed=2)
    big, bigm = he_image(4000, 3000, seed=3)
    gray = np.round(he.astype(np.float32).mean(axis=2)).astype(np.uint8)
    rgba = np.dstack([he, np.where(hem, 255, 0).astype(np.uint8)])
    rgba16 = (he.astype(np.uint16) * 257)
    fl3, flm = fluo_image(1200, 900, 3, seed=4)
    fl5, fl5m = fluo_image(1200, 900, 5, seed=5)
    v: dict[str, Callable[[], Variant]] = {
        # Aperio SVS, codecs
        "svs-jpeg2000": lambda: svs(f / "j2k.svs", "jpeg2000", tol=0.0),
        "svs-aperio33003": lambda: svs_ycc_j2k(f / "aperio33003.svs"),
        "svs-aperio33005": lambda: svs(f / "aperio33005.svs", 33005, tol=3.0, compressionargs={"level": 40}),
        "svs-lzw": lambda: svs(f / "lzw.svs", "lzw"),
        "svs-deflate": lambda: svs(f / "deflate.svs", "zlib", tile=512),
        "svs-raw": lambda: svs(f / "raw.svs", None, tile=128),
        "svs-mpp-no-appmag": lambda: svs(f / "noappmag.svs", "zlib", mpp=0.2527, mag=None),
        "svs-no-mpp": lambda: svs(f / "nompp.svs", "zlib", mpp=None, mag=40),
        "tif-webp": lambda: generic(f / "webp.tif", he, hem, tile=(256, 256), compression="webp", compressionargs={"level": 90},
                                    photometric="rgb", tol=6.0),
        "tif-jpegxl": lambda: generic(f / "jxl.tif", he, hem, tile=(256, 256), compression="jpegxl", compressionargs={"level": 95},
                                      photometric="rgb", tol=6.0),
        "tif-zstd": lambda: generic(f / "zstd.tif", he, hem, tile=(256, 256), compression="zstd",
                                    photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), unit="CENTIMETER",
                                    mpp=(0.5, 0.5)),
        # pyramids
        "ome-subifds": lambda: generic(f / "pyr.ome.tif", he, hem, levels=pyramid(he, 2, 3), tile=(256, 256),
                                       compression="zlib", photometric="rgb", subifds=True, ome=True,
                                       mpp=(0.25, 0.25)),
        "tif-subifds-3x-odd": lambda: generic(f / "odd3x.tif", odd, oddm, levels=pyramid(odd, 3, 3),
                                              tile=(208, 144), compression="zlib", photometric="rgb",
                                              subifds=True),
        "tif-pages-3x-odd": lambda: generic(f / "odd3x-pages.tif", odd, oddm, levels=pyramid(odd, 3, 3),
                                            tile=(112, 80), compression="jpeg", photometric="rgb", tol=4.0,
                                            resolution=(1e4 / 0.3, 1e4 / 0.3), unit="CENTIMETER",
                                            mpp=(0.3, 0.3)),
        # strips and big single level
        "tif-stripped": lambda: generic(f / "stripped.tif", *he_image(3000, 2000, seed=6), rowsperstrip=16,
                                        compression="lzw", photometric="rgb"),
        "tif-large-single": lambda: generic(f / "large.tif", big, bigm, compression="zlib", photometric="rgb",
                                            rowsperstrip=64),
        # dtypes and layouts
        "tif-gray8": lambda: generic(f / "gray.tif", gray, hem, tile=(256, 256), compression="zlib",
                                     photometric="minisblack", rgb=False),
        "tif-rgba": lambda: generic(f / "rgba.tif", rgba, hem, tile=(256, 256), compression="zlib",
                                    photometric="rgb", extra={"alpha": True}),
        "tif-rgb16": lambda: generic(f / "rgb16.tif", rgba16, hem, tile=(256, 256), compression="zlib",
                                     photometric="rgb", rgb=False),
        "ome-fluo-3ch": lambda: generic(f / "fluo3.ome.tif", fl3, flm, tile=(256, 256), compression="zlib",
                                        photometric="minisblack", ome=True, mpp=(0.65, 0.65), fluorescence=True,
                                        rgb=False),
        "ome-fluo-5ch-pyr": lambda: generic(f / "fluo5.ome.tif", fl5, fl5m,
                                            levels=[fl5, fl5[:, ::2, ::2].copy()], subifds=True, tile=(256, 256),
                                            compression="zlib", photometric="minisblack", ome=True,
                                            mpp=(0.325, 0.325), fluorescence=True, rgb=False),
        "tif-planar-separate": lambda: generic(f / "planar.tif", np.ascontiguousarray(he.transpose(2, 0, 1)), hem,
                                               tile=(256, 256), compression="zlib", photometric="rgb",
                                               planar="separate", name="tif-planar-separate",
                                               extra={"planar": he}),
        "tif-bigendian": lambda: generic(f / "bigendian.tif", he, hem, tile=(256, 256), compression="zlib",
                                         photometric="rgb", byteorder=">"),
        # metadata
        "tif-no-resolution": lambda: generic(f / "nores.tif", he, hem, tile=(256, 256), compression="zlib",
                                             photometric="rgb"),
        "tif-72dpi": lambda: generic(f / "dpi72.tif", he, hem, tile=(256, 256), compression="zlib",
                                     photometric="rgb", resolution=(72, 72), unit="INCH"),
        "tif-cm": lambda: generic(f / "cm.tif", he, hem, tile=(256, 256), compression="zlib", photometric="rgb",
                                  resolution=(1e4 / 0.46, 1e4 / 0.46), unit="CENTIMETER", mpp=(0.46, 0.46)),
        "tif-inch-scanner": lambda: generic(f / "inch.tif", he, hem, tile=(256, 256), compression="zlib",
                                            photometric="rgb", resolution=(25400 / 0.5, 25400 / 0.5), unit="INCH",
                                            mpp=(0.5, 0.5)),
        "tif-anisotropic": lambda: generic(f / "aniso.tif", he, hem, tile=(256, 256), compression="zlib",
                                           photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.5),
                                           unit="CENTIMETER", mpp=(0.25, 0.5)),
        # extra pages, BigTIFF
        "tif-label-macro": lambda: generic(f / "withlabel.tif", he, hem, levels=pyramid(he, 4, 2), tile=(256, 256),
                                           compression="zlib", photometric="rgb",
                                           extra_pages=[np.full((200, 300, 3), 240, np.uint8),
                                                        np.full((300, 800, 3), 128, np.uint8)]),
        "bigtiff": lambda: generic(f / "big.tif", he, hem, levels=pyramid(he, 2, 3), tile=(256, 256),
                                   compression="zlib", photometric="rgb", bigtiff=True),
        "blank": lambda: blank(f / "blank.tif"),
    }
    return v


# ------------------------------------------------------------------------------------------------
# malformed files (issue 14): each is a small sound TIFF with one structural field patched
# ------------------------------------------------------------------------------------------------
def _first_ifd(data: bytes) -> tuple[str, int, int]:
    """(byte order, offset of IFD 0, its entry count) of a classic TIFF."""
    import struct

    bo = "<" if data[:2] == b"II" else ">"
    first = struct.unpack_from(bo + "I", data, 4)[0]
    return bo, first, struct.unpack_from(bo + "H", data, first)[0]


def planar_self_loop(path: Path) -> Path:
    """A planar (separate-plane) tiled RGB TIFF whose IFD 0 names itself as the next IFD (cuCIM spins on it)."""
    import struct

    img = np.random.default_rng(0).integers(0, 255, (3, 512, 512), np.uint8)
    tifffile.imwrite(path, img, tile=(128, 128), planarconfig="separate", photometric="rgb", compression="zlib",
                     metadata=None)
    data = bytearray(path.read_bytes())
    bo, first, n = _first_ifd(data)
    struct.pack_into(bo + "I", data, first + 2 + 12 * n, first)
    path.write_bytes(bytes(data))
    return path


def size_beyond_tiles(path: Path, declared: int = 10_000_000) -> Path:
    """A tiled TIFF of 512x512 px (4 tiles) whose ImageWidth/ImageLength say ``declared`` px."""
    import struct

    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None)
    data = bytearray(path.read_bytes())
    bo, first, n = _first_ifd(data)
    for i in range(n):
        at = first + 2 + 12 * i
        tag = struct.unpack_from(bo + "H", data, at)[0]
        if tag in (256, 257):
            struct.pack_into(bo + "HHII", data, at, tag, 4, 1, declared)
    path.write_bytes(bytes(data))
    return path


def ifd_past_eof(path: Path) -> Path:
    """A two-page TIFF whose IFD 0 points to a next IFD beyond the end of the file."""
    import struct

    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", compression="zlib", metadata=None)
    data = bytearray(path.read_bytes())
    bo, first, n = _first_ifd(data)
    struct.pack_into(bo + "I", data, first + 2 + 12 * n, len(data) + 10_000)
    path.write_bytes(bytes(data))
    return path
