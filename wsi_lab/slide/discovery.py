"""Finding slides in a folder tree: :func:`find_slides`."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from wsi_lab.errors import SlideNotFoundError, WSILabError
from wsi_lab.slide.backend import slide_suffix
from wsi_lab.slide.slide import slide_id

log = logging.getLogger(__name__)

#: extensions recognised as slides (``.ome.tif`` is covered by ``.tif``)
SLIDE_EXTENSIONS = frozenset({
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".vms", ".scn", ".bif", ".svslide", ".qptiff", ".btf",
    ".ome.tif", ".ome.tiff",
})
MPP_XY_TOLERANCE = 0.01      # mpp_x and mpp_y may differ by 1 %
MPP_MAG_TOLERANCE = 2.0      # µm/px may be 2x off 10/magnification before it is flagged
_SKIP_DIRS = {".ipynb_checkpoints", "__pycache__", ".git", "node_modules"}


@dataclass
class SlideInfo:
    """A slide found on disk and its basic metadata (``None`` when unknown or unreadable)."""

    path: str
    name: str
    slide_id: str
    size_bytes: int
    vendor: str | None = None
    backend: str | None = None
    width: int | None = None
    height: int | None = None
    level_count: int | None = None
    mpp_x: float | None = None
    mpp_y: float | None = None
    magnification: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
            continue
        mrxs_stems = {Path(e.name).stem for e in entries if e.name.lower().endswith(".mrxs")}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                # MIRAX keeps its tiles in a sibling folder named like the .mrxs file: not slides
                if entry.name in _SKIP_DIRS or entry.name in mrxs_stems:
                    continue
                stack.append(Path(entry.path))
            elif entry.is_file() and slide_suffix(Path(entry.name)) in SLIDE_EXTENSIONS:
                found.append(Path(entry.path))
    return sorted(found)


def _describe(path: Path) -> SlideInfo:
    from wsi_lab.slide.slide import open_slide

    info = SlideInfo(path=str(path), name=path.name, slide_id=slide_id(path), size_bytes=path.stat().st_size)
    try:
        with open_slide(path) as s:
            info.vendor, info.backend = s.vendor, s.backend
            info.width, info.height = s.dimensions
            info.level_count = s.level_count
            if s.mpp:
                info.mpp_x, info.mpp_y = s.mpp
            info.magnification = s.magnification
    except WSILabError as exc:
        info.error = str(exc)
    return info


def find_slides(root: str | os.PathLike, metadata: bool = True, workers: int = 8) -> list[SlideInfo]:
    """Find slide files under ``root`` (recursively, by extension; hidden files and MRXS data folders
    are skipped) and return them sorted by path. With ``metadata=True`` each is opened (in ``workers``
    threads) for its size, levels, µm/px, magnification and vendor; a file that fails to open is still
    listed, with the reason in ``error``."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise SlideNotFoundError(f"{root_path}: not a directory; give the folder that holds your slides")
    paths = _walk(root_path)
    if not metadata:
        infos = []
        for p in paths:
            infos.append(SlideInfo(str(p), p.name, slide_id(p), p.stat().st_size))
        return infos
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(_describe, paths))


def mpp_flags(info: SlideInfo) -> list[str]:
    """Reasons to distrust a slide's scale: missing µm/px, µm/px differing between x and y by more than
    1 %, or µm/px more than 2x away from what the objective magnification implies (≈ 10 / mag)."""
    if info.error:
        return [f"unreadable: {info.error}"]
    flags: list[str] = []
    if not info.mpp_x or not info.mpp_y:
        flags.append("no µm/px in the metadata")
        return flags
    if abs(info.mpp_x - info.mpp_y) > MPP_XY_TOLERANCE * max(info.mpp_x, info.mpp_y):
        flags.append(f"µm/px x={info.mpp_x:.4g} ≠ y={info.mpp_y:.4g}")
    if info.magnification:
        expected = 10.0 / info.magnification
        ratio = info.mpp_x / expected
        if ratio > MPP_MAG_TOLERANCE or ratio < 1 / MPP_MAG_TOLERANCE:
            flags.append(f"µm/px {info.mpp_x:.4g} does not match {info.magnification:g}x (expected ≈ {expected:.3g})")
    return flags
