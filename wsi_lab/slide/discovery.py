"""Finding slides in a folder tree: :func:`find_slides`."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wsi_lab.errors import SlideNotFoundError
from wsi_lab.slide.backend import slide_suffix
from wsi_lab.slide.summary import SlideInfo, describe_slide

log = logging.getLogger(__name__)

#: extensions recognised as slides (``.ome.tif`` is covered by ``.tif``)
SLIDE_EXTENSIONS = frozenset({
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".vms", ".scn", ".bif", ".svslide", ".qptiff", ".btf",
    ".ome.tif", ".ome.tiff",
})
MPP_XY_TOLERANCE = 0.01      # mpp_x and mpp_y may differ by 1 %
MPP_MAG_TOLERANCE = 2.0      # µm/px may be 2x off 10/magnification before it is flagged
_SKIP_DIRS = {".ipynb_checkpoints", "__pycache__", ".git", "node_modules"}


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
            try:
                if entry.is_dir(follow_symlinks=False):
                    # MIRAX keeps its tiles in a sibling folder named like the .mrxs file: not slides
                    if entry.name in _SKIP_DIRS or entry.name in mrxs_stems:
                        continue
                    stack.append(Path(entry.path))
                elif slide_suffix(Path(entry.name)) in SLIDE_EXTENSIONS and entry.is_file():
                    entry.stat()  # follows symlinks: a loop or a dangling link fails here, not later
                    found.append(Path(entry.path))
            except OSError as exc:  # a symlink loop (ELOOP), a file gone meanwhile, no permission
                log.warning("skipping %s: %s", entry.path, exc.strerror or exc)
    return sorted(found)


def find_slides(root: str | os.PathLike, metadata: bool = True, workers: int = 8,
                timeout: float | None = None) -> list[SlideInfo]:
    """Find slide files under ``root`` (recursively, by extension; hidden files, MRXS data folders and
    unusable entries such as symlink loops are skipped, with a warning for the latter) and return them
    sorted by path. With ``metadata=True`` each is opened (in ``workers`` threads, each open bounded by
    ``timeout`` seconds, default :func:`~wsi_lab.slide.bounded.default_open_timeout`) for its size,
    levels, µm/px, magnification and vendor; a file that fails to open (or times out) is still listed,
    with the reason in ``error``."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise SlideNotFoundError(f"{root_path}: not a directory; give the folder that holds your slides")
    paths = _walk(root_path)
    if not metadata:
        return [SlideInfo.of_path(p) for p in paths]
    from wsi_lab.slide.bounded import default_open_timeout

    limit = default_open_timeout() if timeout is None else timeout
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: describe_slide(p, timeout=limit), paths))


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
