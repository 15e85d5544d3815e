"""Root-relative path validation for the Jupyter server extension (no tornado imports).

A slide is addressed by the root-relative POSIX path of its file (``cases/a.svs``) or by its id
(:func:`wsi_lab.viewing.slide_key`, shared with the kernel side).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from wsi_lab.errors import PathSecurityError, SlideNotFoundError

__all__ = ["resolve_slide_path"]


def resolve_slide_path(root: str | os.PathLike, relpath: str, allow_hidden: bool = False) -> Path:
    """The real path of root-relative ``relpath`` inside ``root``.

    Raises :class:`PathSecurityError` (HTTP 403) for absolute paths, ``..`` components, NUL bytes and
    symlinks that lead outside ``root``; :class:`SlideNotFoundError` (HTTP 404) when there is no such
    regular file (hidden files count as missing unless ``allow_hidden``)."""
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath:
        raise PathSecurityError(f"slide path {relpath!r} is empty or not text; give a path relative to the server root")
    norm = relpath.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or os.path.isabs(relpath):
        raise PathSecurityError(f"slide path {relpath!r} is absolute; give a path relative to the server root")
    parts = PurePosixPath(norm).parts
    if any(p == ".." for p in parts):
        raise PathSecurityError(f"slide path {relpath!r} contains '..'; give a path inside the server root")
    if not allow_hidden and any(p.startswith(".") for p in parts):
        raise SlideNotFoundError(f"slide path {relpath!r} is hidden; hidden files are not served")
    root_real = Path(root).resolve()
    try:
        target = root_real.joinpath(*parts).resolve()
        if not target.is_relative_to(root_real):
            raise PathSecurityError(f"slide path {relpath!r} leads outside the server root (symlink?); not served")
        is_file = target.is_file()
    except PermissionError as exc:
        raise PathSecurityError(f"slide path {relpath!r} is not readable by the server; not served") from exc
    except OSError as exc:  # a name too long, a symlink loop, ...: the client's path names no servable file
        raise SlideNotFoundError(f"slide path {relpath[:200]!r}: {exc.strerror or 'not a usable path'}") from exc
    except RuntimeError as exc:  # Python < 3.13 reports a symlink loop in resolve() this way
        raise SlideNotFoundError(f"slide path {relpath[:200]!r}: a symlink loop; not served") from exc
    if not is_file:
        raise SlideNotFoundError(f"slide path {relpath!r}: no such file under the server root")
    return target
