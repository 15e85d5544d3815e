"""``export_session(folder, out)``: one zip bundle of what a workshop folder holds, enough to re-run it.

What goes in (``session.json`` lists it all; ``FORMAT`` names the layout):

- ``tiling``: every tiling output under ``folder`` (a ``<slide_id>/`` folder with a ``tiling`` manifest):
  the slide's path, size and SHA-256, the :class:`~wsi_lab.tiling.TilingParams`, what was materialised,
  and the TileTable itself (``tables/<relative path>``);
- ``training``: every job folder (a ``spec.json`` that is a :class:`~wsi_lab.train.JobSpec`): the spec,
  its seed, its table (``tables/train/<job>.parquet`` when it is one Parquet file), ``metrics.jsonl`` and
  the SHA-256 of ``checkpoints/last.pt`` (weights stay out of the bundle);
- ``review/`` (decisions, GeoJSON) and display settings (``display*.json``, ``overrides.json``) when present;
- the package versions and the platform.

The bundle is written to a temporary file beside ``out`` and renamed into place, so ``out`` is either the
previous bundle or the complete new one. :func:`read_session` reads ``session.json`` back.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import platform
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["export_session", "read_session", "FORMAT", "PACKAGES", "package_versions"]

FORMAT = "wsi_lab.session/1"
SESSION_FILE = "session.json"
#: distributions whose versions a bundle records (those that change tables or training numbers)
PACKAGES = ("wsi-lab", "numpy", "pandas", "pyarrow", "tifffile", "imagecodecs", "openslide-python", "tiffslide",
            "scipy", "scikit-image", "dask", "distributed", "torch", "torchvision", "timm", "scikit-learn", "Pillow")
_DISPLAY = ("display*.json", "overrides.json")
_SKIP_DIRS = {".ipynb_checkpoints", "__pycache__", ".git"}


def package_versions() -> dict[str, str | None]:
    """Installed version of every :data:`PACKAGES` distribution (None when absent), plus Python's."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def _walk(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.rglob(name) if not any(part in _SKIP_DIRS for part in p.relative_to(folder).parts))


def _tiling_entries(folder: Path, hash_slides: bool) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    from wsi_lab.data.table import read_table
    from wsi_lab.io import file_sha256
    from wsi_lab.runs.manifest import read_manifest

    entries, slides = [], {}
    for manifest in _walk(folder, "manifest.json"):
        m = read_manifest(manifest.parent)
        table_path = manifest.parent / "tiles.parquet"
        if m is None or m.get("kind") != "tiling" or not table_path.is_file():
            continue
        table = read_table(table_path)
        meta = table.attrs.get("wsi_lab") or {}
        params = meta.get("tiling_params")
        slide_path = meta.get("slide_path")
        if params is None or not slide_path:
            log.info("%s: no tiling parameters or slide path in its metadata; not in the bundle", table_path)
            continue
        sid = str(meta.get("slide_id") or manifest.parent.name)
        sp = Path(slide_path)
        if sid not in slides:
            if not sp.is_file():
                raise DataError(f"{table_path}: its slide {sp} is gone; a bundle needs every slide's checksum")
            slides[sid] = {"slide_id": sid, "path": str(sp.resolve()), "name": sp.name, "bytes": sp.stat().st_size,
                           "sha256": file_sha256(sp) if hash_slides else None}
        entries.append({"slide_id": sid, "params": params, "materialize": meta.get("materialize"),
                        "table": f"tables/{table_path.relative_to(folder).as_posix()}",
                        "source": table_path.relative_to(folder).as_posix(), "rows": len(table),
                        "out": manifest.parent.parent.relative_to(folder).as_posix()})
    return entries, slides


def _training_entries(folder: Path) -> list[dict[str, Any]]:
    from wsi_lab.io import file_sha256
    from wsi_lab.train.spec import JobSpec

    entries = []
    for spec_file in _walk(folder, "spec.json"):
        try:
            spec = JobSpec.from_json(spec_file.read_text(encoding="utf-8"))
        except (InvalidParameterError, OSError, UnicodeDecodeError):
            continue  # another tool's spec.json
        job = spec_file.parent
        name = job.relative_to(folder).as_posix()
        entry: dict[str, Any] = {"name": name, "spec": spec.to_dict(), "seed": spec.seed, "table": None}
        table = Path(spec.table)
        if table.is_file():
            entry["table"] = f"tables/train/{name.replace('/', '__')}.parquet"
            entry["table_source"] = str(table)
        elif table.is_dir() and table.resolve().is_relative_to(folder):  # a tiling output replayed beside it
            entry["table_folder"] = table.resolve().relative_to(folder).as_posix()
        metrics = job / "metrics.jsonl"
        if metrics.is_file():
            entry["metrics"] = f"training/{name}/metrics.jsonl"
        last = job / "checkpoints" / "last.pt"
        entry["checkpoint_sha256"] = file_sha256(last) if last.is_file() else None
        entries.append(entry)
    return entries


def export_session(folder: str | os.PathLike, out: str | os.PathLike, *, hash_slides: bool = True,
                   note: str = "") -> Path:
    """Write the bundle of ``folder`` (see the module docstring) to ``out`` (a ``.zip``), atomically.
    ``hash_slides=False`` records slide sizes without SHA-256 (faster on large slides; replay then checks
    sizes only). Refuses a folder with nothing to bundle (:class:`DataError`). Returns ``out``."""
    from wsi_lab.io import atomic_path

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; export_session takes the workshop folder that holds the outputs")
    target = Path(out).expanduser()
    if target.suffix.lower() != ".zip":
        raise InvalidParameterError(f"{target}: a session bundle is a .zip file; give a name ending in .zip")
    tiling, slides = _tiling_entries(root, hash_slides)
    training = _training_entries(root)
    review = [p for p in sorted((root / "review").rglob("*")) if p.is_file()] if (root / "review").is_dir() else []
    display = sorted({p for pattern in _DISPLAY for p in root.glob(pattern) if p.is_file()})
    if not tiling and not training and not review:
        raise DataError(f"{root}: no tiling outputs, job specs or review decisions to bundle")
    from wsi_lab import __version__

    session = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": note,
               "folder": str(root), "wsi_lab_version": __version__, "packages": package_versions(),
               "platform": {"system": platform.system(), "machine": platform.machine(),
                            "python": platform.python_implementation()},
               "seeds": {e["name"]: e["seed"] for e in training}, "slides": list(slides.values()),
               "tiling": tiling, "training": training,
               "review": [f"review/{p.relative_to(root / 'review').as_posix()}" for p in review],
               "display": [p.name for p in display]}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(SESSION_FILE, json.dumps(session, indent=2, default=str))
        for e in tiling:
            zf.write(root / e["source"], e["table"])
        for e in training:
            if e["table"]:
                zf.write(e["table_source"], e["table"])
            if e.get("metrics"):
                zf.write(root / e["name"] / "metrics.jsonl", e["metrics"])
        for p in review:
            zf.write(p, f"review/{p.relative_to(root / 'review').as_posix()}")
        for p in display:
            zf.write(p, f"display/{p.name}")
    log.info("session bundle %s: %d tiling table(s), %d job(s), %d review file(s)", target, len(tiling),
             len(training), len(review))
    return target


def read_session(bundle: str | os.PathLike) -> dict[str, Any]:
    """The ``session.json`` of a bundle (``DataError`` for a file that is not a WSI Lab session bundle)."""
    p = Path(bundle)
    if not p.is_file():
        raise DataError(f"{p}: no such session bundle")
    try:
        with zipfile.ZipFile(p) as zf:
            session = json.loads(zf.read(SESSION_FILE))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DataError(f"{p}: not a WSI Lab session bundle ({exc}); write one with wsi-lab export-session") from exc
    if not isinstance(session, dict) or session.get("format") != FORMAT:
        raise DataError(f"{p}: session format {session.get('format') if isinstance(session, dict) else None!r}, "
                        f"expected {FORMAT!r}")
    return session
