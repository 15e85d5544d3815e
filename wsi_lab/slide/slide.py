"""The :class:`Slide` facade and :func:`open_slide`.

Conventions (as OpenSlide): ``location`` is ``(x, y)`` in level-0 pixels, ``size`` is
``(width, height)`` in pixels *of the level read*, arrays come back as ``(H, W, 3) uint8`` RGB.
Regions that cross the slide edge are padded with white.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_lab.errors import (
    InvalidParameterError,
    MissingMPPError,
    RegionTooLargeError,
    SlideError,
    SlideNotFoundError,
    SlideOpenError,
    UnsupportedFormatError,
    WSILabError,
)
from wsi_lab.slide._logs import route_library_logs
from wsi_lab.slide.backend import SlideReader, backend_candidates, get_backend, slide_suffix
from wsi_lab.slide.metadata import plausible_mpp, to_float
from wsi_lab.slide.tiff_check import check_tiff_structure

log = logging.getLogger(__name__)

#: largest region (in pixels) one read may return: 2^28 px = 768 MiB of RGB
MAX_REGION_PIXELS = 2**28
BACKGROUND = 255


class AssociatedImages(Mapping):
    """Lazy read-only mapping ``name -> (H, W, 3) uint8`` of label/macro/thumbnail images."""

    def __init__(self, reader: SlideReader) -> None:
        self._reader = reader

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._reader.metadata.associated_names:
            raise KeyError(name)
        return self._reader.read_associated(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reader.metadata.associated_names)

    def __len__(self) -> int:
        return len(self._reader.metadata.associated_names)


class Slide:
    """One whole-slide image, read through whichever backend opened it.

    Use :func:`open_slide` to make one. A ``Slide`` is a context manager and pickles by path (a
    Dask worker reopens the file with the same backend and overrides).
    """

    def __init__(self, path: Path, reader: SlideReader, mpp: tuple[float, float] | None = None,
                 requested_backend: str = "auto", owns_reader: bool = True) -> None:
        self.path = path
        self._reader = reader
        self._mpp_override = mpp
        self._requested_backend = requested_backend
        self._owns_reader = owns_reader

    # -- identity -----------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Name of the backend that reads this slide (``tifffile``, ``openslide``, ``cucim``)."""
        return self._reader.backend_name

    @property
    def slide_id(self) -> str:
        """File name without its slide extension (see :func:`slide_id`)."""
        return slide_id(self.path)

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"<Slide {self.path.name!r} {w}x{h} levels={self.level_count} mpp={self.mpp} backend={self.backend}>"

    # -- geometry -----------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self._reader.metadata.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._reader.metadata.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, level 0 first."""
        return self._reader.metadata.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""
        return self._reader.metadata.level_downsamples

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 ``(x, y)`` µm/px: the explicit override, else the metadata, else ``None``."""
        return self._mpp_override or self._reader.metadata.mpp

    @property
    def mpp_from_metadata(self) -> tuple[float, float] | None:
        return self._reader.metadata.mpp

    @property
    def magnification(self) -> float | None:
        """Objective magnification from the metadata (e.g. 20.0), or ``None`` when not recorded."""
        return self._reader.metadata.magnification

    @property
    def vendor(self) -> str | None:
        return self._reader.metadata.vendor

    @property
    def properties(self) -> dict[str, str]:
        """Raw backend metadata as string key/values (OpenSlide-style names where the backend has them)."""
        return dict(self._reader.metadata.properties)

    @cached_property
    def associated_images(self) -> AssociatedImages:
        """Label, macro, thumbnail... as a lazy mapping of ``(H, W, 3) uint8`` arrays."""
        return AssociatedImages(self._reader)

    def with_mpp_fallback(self, mpp: float | tuple[float, float] | None) -> Slide:
        """This slide with ``mpp`` (µm/px) used only when the metadata has none: ``self`` when ``mpp`` is
        ``None`` or the metadata has a µm/px, else a view sharing this slide's open reader (nothing is
        reopened, so nothing leaks; closing the view leaves the reader to this slide)."""
        if mpp is None or self.mpp_from_metadata is not None or self._mpp_override is not None:
            return self
        return Slide(self.path, self._reader, _mpp_pair(mpp, self.path), self._requested_backend, owns_reader=False)

    def require_mpp(self) -> tuple[float, float]:
        """µm/px or :class:`MissingMPPError` saying how to give one."""
        if self.mpp is None:
            raise MissingMPPError(
                f"{self.path}: the slide has no µm/px in its metadata; pass mpp=<µm/px> to open_slide() "
                "(or --slide-mpp on the command line), or work by level instead of by µm/px"
            )
        return self.mpp

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The deepest level whose downsample is ≤ ``downsample`` (level 0 when none is)."""
        if not (downsample > 0 and math.isfinite(downsample)):
            raise InvalidParameterError(f"downsample must be a positive number, got {downsample!r}")
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-3):
                best = i
        return best

    best_level_for_downsample = get_best_level_for_downsample

    # -- pixels -------------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise InvalidParameterError(
                f"{self.path}: level {level!r} does not exist; this slide has levels 0..{self.level_count - 1}"
            )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` = (width, height) pixels of ``level`` whose top-left is ``location`` in level-0
        pixels; returns (H, W, 3) uint8. Parts outside the slide are white."""
        self._check_level(level)
        x0, y0 = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise InvalidParameterError(f"{self.path}: region size must be positive, got {size!r}")
        if w * h > MAX_REGION_PIXELS:
            raise RegionTooLargeError(
                f"{self.path}: a {w}x{h} region ({w * h / 1e6:.0f} MP) exceeds the {MAX_REGION_PIXELS / 1e6:.0f} MP "
                "limit of one read; read it in tiles or at a lower level (read_at_mpp / get_thumbnail)"
            )
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # the request in level coordinates, and its intersection with the level
        lx, ly = int(math.floor(x0 / ds)), int(math.floor(y0 / ds))
        ix0, iy0 = max(lx, 0), max(ly, 0)
        ix1, iy1 = min(lx + w, lw), min(ly + h, lh)
        if ix0 == lx and iy0 == ly and ix1 == lx + w and iy1 == ly + h:
            return self._reader.read_level(lx, ly, w, h, level)
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - ly:iy1 - ly, ix0 - lx:ix1 - lx] = self._reader.read_level(ix0, iy0, ix1 - ix0, iy1 - iy0, level)
        return out

    def level_for_mpp(self, mpp: float) -> tuple[int, float]:
        """Best level to read for target ``mpp`` and the remaining scale factor (≥ 1 means shrink)."""
        if not (isinstance(mpp, (int, float)) and mpp > 0 and math.isfinite(mpp)):
            raise InvalidParameterError(f"{self.path}: target µm/px must be a positive number, got {mpp!r}")
        base = self.require_mpp()[0]
        factor = mpp / base
        level = self.get_best_level_for_downsample(factor)
        return level, factor / self.level_downsamples[level]

    def read_at_mpp(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        """Read a region of ``size`` = (width, height) *output* pixels at ``mpp`` µm/px whose top-left is
        ``location`` in level-0 pixels. Reads the best level and resizes (area filter)."""
        level, scale = self.level_for_mpp(mpp)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise InvalidParameterError(f"{self.path}: region size must be positive, got {size!r}")
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        arr = self.read_region(location, level, (rw, rh))
        if (rw, rh) == (w, h):
            return arr
        return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BOX if scale > 1 else Image.Resampling.BILINEAR))

    def get_thumbnail(self, max_size: int | tuple[int, int] = 1024, display: Any = None) -> np.ndarray:
        """Whole slide shrunk to fit ``max_size`` (pixels, or (width, height)), aspect kept; (H, W, 3) uint8.
        Memory stays bounded: the chosen level is read and shrunk in horizontal bands. ``display``: None
        (raw pixels, for analysis) or ``"auto"``/settings for a person (:mod:`wsi_lab.slide.display`)."""
        if display is not None:
            from wsi_lab.slide.display import apply_display, resolve_display

            return apply_display(self.get_thumbnail(max_size), resolve_display(self, display))
        mw, mh = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else max_size
        if mw <= 0 or mh <= 0 or mw * mh > MAX_REGION_PIXELS:
            raise InvalidParameterError(f"{self.path}: thumbnail max_size must be positive and sane, got {max_size!r}")
        W, H = self.dimensions
        scale = max(W / mw, H / mh, 1.0)
        tw, th = max(1, round(W / scale)), max(1, round(H / scale))
        level = self.get_best_level_for_downsample(scale)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), np.uint8)
        band = max(1, int(4096 * 4096 // max(lw, 1)))  # level rows per band (≤ 16 MP per read)
        rows_done = 0
        for ly in range(0, lh, band):
            bh = min(band, lh - ly)
            y_end = th if ly + bh >= lh else min(th, round((ly + bh) * ds / scale))
            if y_end <= rows_done:
                continue
            arr = self.read_region((0, int(round(ly * ds))), level, (lw, bh))
            out[rows_done:y_end] = np.asarray(Image.fromarray(arr).resize((tw, y_end - rows_done), Image.Resampling.BOX))
            rows_done = y_end
        return out

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handles (a view from :meth:`with_mpp_fallback` leaves them to its owner)."""
        if self._owns_reader:
            self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        return (open_slide, (str(self.path), self._requested_backend, self._mpp_override))


def slide_id(path: str | os.PathLike) -> str:
    """The slide id of a path: its file name without the slide extension (``.ome.tif`` counts as one),
    e.g. ``TCGA-...-01Z-00-DX1`` for ``/data/TCGA-...-01Z-00-DX1.svs``. The one rule every table,
    output folder and widget uses."""
    p = Path(path)
    name = p.name
    suffix = slide_suffix(p)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else p.stem


def _mpp_pair(mpp: float | tuple[float, float], where: Path) -> tuple[float, float]:
    """``mpp`` (one value or (x, y) µm/px) as a plausible pair, or :class:`InvalidParameterError`."""
    pair = (mpp, mpp) if isinstance(mpp, (int, float)) else tuple(mpp)
    override = plausible_mpp(*pair, source="the mpp= argument") if len(pair) == 2 else None
    if override is None or any(to_float(v) is None for v in pair):  # (0.25, 0) is not "square pixels"
        raise InvalidParameterError(f"{where}: mpp={mpp!r} is not a plausible µm/px (expected 0.02–50)")
    return override


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file; check the path (relative paths start at {os.getcwd()})")
    if path.is_dir():
        if slide_suffix(path) in (".zarr",):
            return
        raise SlideNotFoundError(f"{path}: is a directory, not a slide file; use find_slides() to list the slides inside")
    if path.stat().st_size == 0:
        raise SlideOpenError.at(path, "the file is empty (0 bytes); re-copy it from its source")
    check_tiff_structure(path)  # loops and short tile tables make some backends hang or crash: refuse first


def open_slide(path: str | os.PathLike, backend: str = "auto",
               mpp: float | tuple[float, float] | None = None, mpp_only_if_missing: bool = False,
               timeout: float | None = None) -> Slide:
    """Open a whole-slide image. ``backend="auto"`` tries the installed backends in priority order for
    the file's extension and returns the first that reads it; a name (``tifffile``, ``openslide``,
    ``cucim``) forces one. ``mpp`` (µm/px, one value or (x, y)) overrides missing or wrong metadata;
    with ``mpp_only_if_missing=True`` it is used only when the metadata has no µm/px (the file is
    opened once either way). TIFF files are checked for a sound structure (IFD chain, tile tables)
    before any backend sees them. With ``timeout`` (seconds) the open runs in a worker that is
    abandoned after that long (:class:`SlideOpenError` "timed out after N s"; see
    :mod:`wsi_lab.slide.bounded`). Errors carry ``file`` and ``reason`` (:meth:`WSILabError.at`)."""
    if timeout is not None:
        from wsi_lab.slide.bounded import open_bounded

        return open_bounded(path, timeout, backend=backend, mpp=mpp, mpp_only_if_missing=mpp_only_if_missing)
    p = Path(path).expanduser()
    route_library_logs()
    try:
        _check_path(p)
        override = _mpp_pair(mpp, p) if mpp is not None else None
        slide = _open(p, backend, override)
    except WSILabError as exc:  # the one place errors of opening get their file as context
        if exc.file is None:
            exc.file, exc.reason = p, _without_path(str(exc), p)
        raise
    if mpp_only_if_missing and override is not None and slide.mpp_from_metadata is not None:
        slide._mpp_override = None
    return slide


def _without_path(message: str, path: Path) -> str:
    """``message`` with the leading ``"<path>: "`` of the house style removed and other mentions of the
    path shortened to its name (backends write their messages that way)."""
    text = message[len(f"{path}: "):] if message.startswith(f"{path}: ") else message
    return text.replace(f"{path}: ", "").replace(str(path), path.name)


def _open(p: Path, backend: str, override: tuple[float, float] | None) -> Slide:
    """Open ``p`` with ``backend`` (or ``auto``) and the already-validated µm/px ``override``."""
    if backend != "auto":
        cls = get_backend(backend)
        if not cls.can_read(p):
            raise UnsupportedFormatError(f"{p}: the {backend} backend cannot read this file; try backend='auto'")
        reader = cls.open(p)
        problem = _probe(reader)
        if isinstance(problem, UnsupportedFormatError):
            reader.close()
            raise UnsupportedFormatError(f"{p}: the {backend} backend opens this file but cannot decode its pixels "
                                         f"({problem}); try backend='auto'") from problem
        return Slide(p, reader, override, backend)
    candidates = backend_candidates(p)
    errors: list[str] = []
    for cls in candidates:
        if not cls.can_read(p):
            continue
        try:
            reader = cls.open(p)
        except SlideError as exc:  # SlideOpenError, or UnsupportedFormatError for a layout/codec it lacks
            log.info("%s", exc)
            errors.append(f"{cls.name}: {exc}")
            continue
        problem = _probe(reader)
        if not isinstance(problem, UnsupportedFormatError):
            # decodes, or fails on the data itself (a corrupt tile): every backend would, and its reads
            # raise typed errors, so keep it rather than a backend that might return garbage silently
            return Slide(p, reader, override, backend)
        log.info("%s opens %s but cannot decode it (%s); trying the next backend", cls.name, p, problem)
        errors.append(f"{cls.name}: {problem}")
        reader.close()
    if errors:
        raise SlideOpenError(f"{p}: recognised but could not be opened or decoded (corrupt, truncated, or a codec "
                             "no installed backend has?): " + "; ".join(errors))
    raise UnsupportedFormatError(
        f"{p}: not a slide format any installed backend reads ({', '.join(c.name for c in candidates) or 'none installed'}); "
        "supported: SVS, TIFF/OME-TIFF, NDPI, MRXS, SCN, BIF, VMS; run `wsi-lab doctor` to see backends"
    )


def _probe(reader: SlideReader) -> SlideError | None:
    """Read a tiny box at the top-left of the smallest level; return the typed error, or None when it decodes.

    A backend that opens a file but lacks its codec or layout answers :class:`UnsupportedFormatError` (so
    ``auto`` tries the next backend); a read that fails on the data itself (a corrupt tile) answers
    :class:`SlideReadError`; any other exception counts as unsupported."""
    md = reader.metadata
    level = len(md.level_dimensions) - 1
    w, h = md.level_dimensions[level]
    try:
        arr = reader.read_level(0, 0, min(8, w), min(8, h), level)
        if arr.shape != (min(8, h), min(8, w), 3) or arr.dtype != np.uint8:
            return UnsupportedFormatError(f"{reader.backend_name} returned a {arr.shape} {arr.dtype} array "
                                          "instead of (H, W, 3) uint8")
    except SlideError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a backend bug or a codec it lacks: try another backend
        return UnsupportedFormatError(f"{reader.backend_name}: {type(exc).__name__}: {exc}")
    return None
