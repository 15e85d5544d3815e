"""Step manifests: the one record that says a step's outputs in a folder are complete and valid.

``write_manifest`` is called last, after every output file is in place, and writes ``manifest.json``
atomically. It records the step's ``kind``, the hashes of its inputs and parameters, and every output
file (``path`` relative to the folder, ``bytes``, and ``sha256`` for files up to ``hash_limit`` bytes),
plus step-specific top-level fields and per-file fields. A step is complete (:func:`check_manifest`)
only when the manifest's kind and hashes match what the caller expects AND every listed file still has
its recorded size (and hash). :func:`clean_unlisted` removes what the manifest does not list (orphans
of an earlier or killed run, ``.part`` temp files) within the paths the step owns.

Format::

    {"kind": "tiling", "manifest_format": 1, "inputs_hash": "...", "params_hash": "...", "completed_at": 1.7e9,
     "wsi_lab_version": "...", "files": [{"path": "tiles.parquet", "bytes": 1234, "sha256": "..."}, ...],
     ...step fields (n_tiles, label_index, ...)}
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "FORMAT", "file_record", "write_manifest", "read_manifest", "check_manifest",
           "invalidate", "clean_unlisted", "listed_paths", "remove_tree_outputs", "DEFAULT_HASH_LIMIT"]

MANIFEST = "manifest.json"
FORMAT = 1
#: files up to this many bytes get a SHA-256 in the manifest (bigger ones: size only, unless the
#: caller passes their hash in the file entry)
DEFAULT_HASH_LIMIT = 64 << 20
_RESERVED = ("kind", "manifest_format", "inputs_hash", "params_hash", "completed_at", "wsi_lab_version", "files")


def _sha256(path: Path) -> str:
    from wsi_lab.io import file_sha256

    return file_sha256(path)


def file_record(folder: str | os.PathLike, rel: str, hash_limit: int | None = DEFAULT_HASH_LIMIT,
                **fields: Any) -> dict:
    """``{"path": rel, "bytes": n, "sha256": ...}`` of ``folder/rel`` (hash only when ≤ ``hash_limit``
    bytes; ``hash_limit=None`` never hashes), plus ``fields``."""
    p = Path(folder) / rel
    size = p.stat().st_size
    rec: dict[str, Any] = {"path": Path(rel).as_posix(), "bytes": int(size), **fields}
    if "sha256" not in rec and hash_limit is not None and size <= hash_limit:
        rec["sha256"] = _sha256(p)
    return rec


def write_manifest(folder: str | os.PathLike, kind: str, *, inputs_hash: str, params_hash: str,
                   files: Iterable[str | Mapping[str, Any]], hash_limit: int | None = DEFAULT_HASH_LIMIT,
                   **fields: Any) -> dict:
    """Record the step's outputs in ``folder/manifest.json`` (atomically; call it last) and return the
    manifest. ``files``: paths relative to ``folder`` or ready entries (``{"path", "bytes", "sha256"?,
    ...}``; a path-only entry gets its size/hash measured). ``fields``: step-specific top-level keys."""
    from wsi_lab._version import __version__
    from wsi_lab.io import atomic_write_bytes

    bad = sorted(set(fields) & set(_RESERVED))
    if bad:
        raise InvalidParameterError(f"manifest fields {bad} are reserved; use other names")
    root = Path(folder)
    entries = []
    for f in files:
        if isinstance(f, Mapping) and "bytes" in f:
            entries.append({"path": Path(str(f["path"])).as_posix(), **{k: v for k, v in f.items() if k != "path"}})
        elif isinstance(f, Mapping):
            entries.append(file_record(root, str(f["path"]), hash_limit, **{k: v for k, v in f.items() if k != "path"}))
        else:
            entries.append(file_record(root, str(f), hash_limit))
    manifest = {"kind": kind, "manifest_format": FORMAT, "inputs_hash": inputs_hash, "params_hash": params_hash,
                **fields, "files": entries, "completed_at": time.time(), "wsi_lab_version": __version__}
    atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest in ``folder`` as a dict, or None when there is none or it is unreadable."""
    p = Path(folder) / MANIFEST
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): treated as absent", p, exc)
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        log.warning("%s is not a wsi-lab manifest: treated as absent", p)
        return None
    return m


def _file_ok(root: Path, entry: Mapping[str, Any], verify_hashes: bool) -> bool:
    try:
        p = root / entry["path"]
        if not p.is_file() or p.stat().st_size != int(entry["bytes"]):
            return False
        return not (verify_hashes and entry.get("sha256") and _sha256(p) != entry["sha256"])
    except (OSError, KeyError, TypeError, ValueError):
        return False


def check_manifest(folder: str | os.PathLike, kind: str, *, inputs_hash: str | None = None,
                   params_hash: str | None = None, verify_hashes: bool = True) -> dict | None:
    """The manifest when the step in ``folder`` is complete: same ``kind``, same hashes (those given),
    and every listed file present with its recorded size (and SHA-256 when recorded and
    ``verify_hashes``). None otherwise (the step must run again)."""
    m = read_manifest(folder)
    if m is None or m.get("kind") != kind:
        return None
    if inputs_hash is not None and m.get("inputs_hash") != inputs_hash:
        return None
    if params_hash is not None and m.get("params_hash") != params_hash:
        return None
    root = Path(folder)
    for entry in m["files"]:
        if not _file_ok(root, entry, verify_hashes):
            log.info("%s: %s changed since its manifest was written: the step runs again", root,
                     entry.get("path") if isinstance(entry, Mapping) else entry)
            return None
    return m


def invalidate(folder: str | os.PathLike) -> None:
    """Remove ``folder``'s manifest (its outputs are about to change: not complete until rewritten)."""
    (Path(folder) / MANIFEST).unlink(missing_ok=True)


def listed_paths(manifest: Mapping[str, Any] | None) -> set[str]:
    """The relative paths a manifest lists."""
    return {str(f["path"]) for f in (manifest or {}).get("files", []) if isinstance(f, Mapping) and "path" in f}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex over relative POSIX paths with :meth:`pathlib.Path.glob`'s meaning of ``pattern``: ``*`` and
    ``?`` stay within one path part (dot files included), ``**`` is zero or more whole parts."""
    parts = [p for p in Path(pattern).as_posix().split("/") if p not in ("", ".")]
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += "(?:[^/]+/)*" if not last else "(?:[^/]+/)*[^/]+"
            continue
        seg = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        out += seg + ("" if last else "/")
    return re.compile(out + r"\Z")


def _walk(root: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Every file (and symlink) under ``root`` as ``(relative POSIX path, full path)``, and every folder
    (full paths), with one ``os.scandir`` per folder; symlinked folders are not entered."""
    files: list[tuple[str, str]] = []
    dirs: list[str] = []
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            log.warning("could not list %s: %s", folder, exc)
            continue
        for e in entries:
            r = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                dirs.append(e.path)
                stack.append((e.path, r + "/"))
            elif e.is_symlink() or e.is_file():
                files.append((r, e.path))
    return files, dirs


def clean_unlisted(folder: str | os.PathLike, manifest: Mapping[str, Any] | None,
                   owned: Iterable[str] = ("**/*",), keep: Iterable[str] = ()) -> list[Path]:
    """Remove files under ``folder`` matching the ``owned`` glob patterns that ``manifest`` does not
    list (and every ``.*.part`` temp file), then empty sub-folders; the manifest itself and ``keep``
    (relative paths) stay. Returns what was removed. ``owned`` bounds the clean-up to what the step
    writes (an export into a user's folder passes e.g. ``("**/*.tfrecord",)``). One ``os.scandir`` walk
    (a 7k-tile slide folder is cleaned in milliseconds; ``Path.glob`` stat'ed every file twice)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    listed = listed_paths(manifest) | {MANIFEST} | {Path(k).as_posix() for k in keep}
    patterns = [_glob_regex(p) for p in owned]
    files, dirs = _walk(os.fspath(root))
    removed: list[Path] = []
    for rel, full in sorted(files):
        if rel in listed:
            continue
        name = rel.rsplit("/", 1)[-1]
        if not (name.startswith(".") and name.endswith(".part")) and not any(p.match(rel) for p in patterns):
            continue
        try:
            os.unlink(full)
            removed.append(Path(full))
        except OSError as exc:
            log.warning("could not remove %s: %s", full, exc)
    for d in sorted(dirs, key=lambda p: p.count(os.sep), reverse=True):
        try:
            with os.scandir(d) as it:
                empty = next(it, None) is None
            if empty:
                os.rmdir(d)
        except OSError as exc:
            log.debug("%s kept: %s", d, exc)
    if removed:
        log.info("%s: removed %d file(s) no manifest lists", root, len(removed))
    return removed


def remove_tree_outputs(folder: str | os.PathLike, names: Iterable[str], subdirs: Iterable[str] = ()) -> None:
    """Remove a step's outputs from ``folder`` (manifest first, then ``names``, ``subdirs`` and temp
    files) and the folder itself when that leaves it empty: for steps a run did not finish."""
    root = Path(folder)
    invalidate(root)
    for name in names:
        (root / name).unlink(missing_ok=True)
    for sub in subdirs:
        if (root / sub).is_dir():
            shutil.rmtree(root / sub, ignore_errors=True)
    for f in root.rglob(".*.part") if root.is_dir() else ():
        f.unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError as exc:  # not empty (files of the user's) or already gone
        log.debug("%s kept: %s", root, exc)
