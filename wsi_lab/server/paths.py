"""Slide ids and root-relative path validation for the Jupyter server extension (no tornado imports).

A slide is addressed by the root-relative POSIX path of its file (``cases/a.svs``) or by its *id*, the
first 16 hex digits of the SHA-256 of that path: stable across server restarts and machines with the
same folder layout, and it never reveals absolute paths. The kernel side (``wsi_lab.ui``) computes the
same ids to find its slide on the server.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from wsi_lab.errors import PathSecurityError, SlideNotFoundError

__all__ = ["slide_key", "is_slide_key", "resolve_slide_path", "relative_candidates"]

_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


def slide_key(relpath: str) -> str:
    """Id of the slide at root-relative ``relpath`` (POSIX separators)."""
    return hashlib.sha256(PurePosixPath(relpath).as_posix().encode("utf-8")).hexdigest()[:16]


def is_slide_key(text: str) -> bool:
    return bool(_KEY_RE.match(text))


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
    if not is_file:
        raise SlideNotFoundError(f"slide path {relpath!r}: no such file under the server root")
    return target


def relative_candidates(path: str | os.PathLike, depth: int = 8) -> list[str]:
    """Root-relative paths ``path`` could have on a server whose root is one of its parents, the
    shortest first (``a.svs``, ``cases/a.svs``, ...): the kernel does not know the server's root."""
    parts = Path(os.path.abspath(path)).parts[1:]
    return [PurePosixPath(*parts[-n:]).as_posix() for n in range(1, min(depth, len(parts)) + 1)]
