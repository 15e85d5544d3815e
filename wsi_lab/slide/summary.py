"""The one slide-summary record: :class:`SlideInfo` (what ``find_slides``, ``wsi-lab info``, the server's
listing and the slide browser show about a file), and :func:`describe_slide` that fills it.

An unreadable file is a record too: ``error`` holds the reason (without the file's path, which the
record already has, so a server can show it without revealing its root), ``error_type`` the error's
class name, and every number is ``None``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_lab.errors import WSILabError
from wsi_lab.slide.slide import Slide, open_slide, slide_id

__all__ = ["SlideInfo", "describe_slide"]


@dataclass
class SlideInfo:
    """A slide file and its basic metadata (``None`` when unknown or unreadable).

    ``width``/``height`` are level-0 pixels, ``level_dimensions`` ``(width, height)`` per level,
    ``mpp_x``/``mpp_y`` level-0 µm/px, ``size_bytes`` the file size. ``error`` (the reason, no path) and
    ``error_type`` are set when the file could not be opened."""

    path: str
    name: str
    slide_id: str
    size_bytes: int | None
    vendor: str | None = None
    backend: str | None = None
    width: int | None = None
    height: int | None = None
    level_count: int | None = None
    mpp_x: float | None = None
    mpp_y: float | None = None
    magnification: float | None = None
    error: str | None = None
    level_dimensions: tuple[tuple[int, int], ...] | None = None
    level_downsamples: tuple[float, ...] | None = None
    associated_images: tuple[str, ...] | None = None
    error_type: str | None = None

    @property
    def readable(self) -> bool:
        """Whether the file opened."""
        return self.error is None

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 ``(x, y)`` µm/px, or ``None``."""
        return (self.mpp_x, self.mpp_y) if self.mpp_x is not None and self.mpp_y is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (tuples as lists)."""
        d = asdict(self)
        for k in ("level_dimensions", "level_downsamples", "associated_images"):
            if d[k] is not None:
                d[k] = [list(v) if isinstance(v, tuple) else v for v in d[k]]
        return d

    @classmethod
    def of_path(cls, path: str | os.PathLike) -> SlideInfo:
        """The record of a file without opening it (name, id, size only)."""
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        return cls(path=str(p), name=p.name, slide_id=slide_id(p), size_bytes=size)

    @classmethod
    def of_slide(cls, slide: Slide) -> SlideInfo:
        """The record of an open slide."""
        info = cls.of_path(slide.path)
        info.vendor, info.backend = slide.vendor, slide.backend
        info.width, info.height = slide.dimensions
        info.level_count = slide.level_count
        info.level_dimensions = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        info.level_downsamples = tuple(slide.level_downsamples)
        if slide.mpp:
            info.mpp_x, info.mpp_y = slide.mpp
        info.magnification = slide.magnification
        info.associated_images = tuple(sorted(slide.associated_images))
        return info

    @classmethod
    def of_error(cls, path: str | os.PathLike, error: WSILabError) -> SlideInfo:
        """The record of a file that failed to open with ``error``."""
        info = cls.of_path(path)
        info.error = error.reason or str(error)
        info.error_type = type(error).__name__
        return info


def describe_slide(path: str | os.PathLike, backend: str = "auto", timeout: float | None = None) -> SlideInfo:
    """Open ``path`` (with ``backend``; at most ``timeout`` seconds when given) and return its
    :class:`SlideInfo`; a file that fails with a WSI Lab error gives a record with ``error`` set
    instead of raising."""
    try:
        with open_slide(path, backend=backend, timeout=timeout) as s:
            return SlideInfo.of_slide(s)
    except WSILabError as exc:
        return SlideInfo.of_error(path, exc)
