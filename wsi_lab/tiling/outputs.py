"""Per-slide outputs of a tiling run: ``out/<slide_id>/tiles.parquet`` (+ ``tiles/<x>_<y>.jpg``,
``mask.png``) and ``manifest.json``, written last, that says the slide is complete; and the run's
:class:`TilingResult`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsi_lab.io import file_sha256
from wsi_lab.tiling.params import TilingParams

log = logging.getLogger(__name__)

__all__ = ["TilingResult", "slide_outputs_complete", "write_slide_outputs", "write_manifest", "params_hash",
           "slide_id_of", "remove_partial_outputs", "MANIFEST", "TABLE"]

MANIFEST = "manifest.json"
TABLE = "tiles.parquet"


# ----------------------------------------------------------------------------------------------
def params_hash(params: TilingParams, materialize: str | None, slide_path: Path) -> str:
    st = slide_path.stat()
    blob = json.dumps({"params": params.to_dict(), "materialize": materialize,
                       "slide": [str(slide_path.resolve()), st.st_size, st.st_mtime_ns]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def slide_outputs_complete(slide_dir: str | os.PathLike, params_hash: str | None = None) -> bool:
    """True when ``slide_dir`` holds a manifest whose table hash, tile-file count and (optionally)
    parameter hash all match what is on disk."""
    d = Path(slide_dir)
    try:
        m = json.loads((d / MANIFEST).read_text())
        if params_hash is not None and m.get("params_hash") != params_hash:
            return False
        if file_sha256(d / m["table"]) != m["table_sha256"]:
            return False
        if m.get("materialize") == "jpeg":
            return sum(1 for _ in (d / "tiles").glob("*.jpg")) == m["n_tiles"]
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def slide_id_of(path: Path) -> str:
    from wsi_lab.slide import slide_id

    return slide_id(path)


@dataclass
class TilingResult:
    """What a run did: per-slide table paths and tile counts, failures (slide -> message), skipped slides."""

    out: Path
    tables: dict[str, Path] = field(default_factory=dict)
    n_tiles: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    tiles_read: int = 0
    megapixels_read: float = 0.0
    dashboard_link: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cancelled

    @property
    def total_tiles(self) -> int:
        return sum(self.n_tiles.values())

    def table(self) -> pd.DataFrame:
        """All completed slides' TileTables concatenated, every slide's path kept in
        ``attrs["wsi_lab"]["slides"][slide_id]["path"]``."""
        from wsi_lab.data.table import concat_tables, empty_table, read_table

        tables = [read_table(p) for p in self.tables.values()]
        return concat_tables(tables) if tables else empty_table()

    def summary(self) -> str:
        done = len(self.tables) - len(self.skipped)
        lines = [f"{done} slide(s) tiled, {len(self.skipped)} skipped (already complete), {len(self.failed)} failed"
                 f"{', cancelled' if self.cancelled else ''}; {self.total_tiles} tiles in {self.elapsed_s:.1f} s -> {self.out}"]
        lines += [f"  FAILED {sid}: {msg}" for sid, msg in self.failed.items()]
        return "\n".join(lines)


def write_slide_outputs(sdir: Path, table: pd.DataFrame, mask, params: TilingParams, materialize: str | None,
                        phash: str, slide_path: Path, extra: dict | None = None, manifest: bool = True) -> pd.DataFrame:
    """Write the slide's table (sorted row-major), mask and, when ``manifest``, the manifest; returns the table."""
    from wsi_lab.data.table import write_table

    table = table.sort_values(["y", "x"], kind="stable").reset_index(drop=True)
    meta = dict(table.attrs.get("wsi_lab") or {})
    meta.update({"tiling_params": params.to_dict(), "materialize": materialize})
    table.attrs["wsi_lab"] = meta
    if mask is not None:
        mask.save(sdir / "mask.png")
    write_table(table, sdir / TABLE)
    if materialize == "jpeg":
        wanted = {f"{x}_{y}.jpg" for x, y in zip(table["x"], table["y"])}
        for f in (sdir / "tiles").glob("*.jpg"):
            if f.name not in wanted:  # stale tile from an earlier run with other parameters
                f.unlink()
        for f in (sdir / "tiles").glob(".*.part"):  # left by a writer killed mid-file (its task was re-run)
            f.unlink(missing_ok=True)
    if manifest:
        write_manifest(sdir, len(table), params, materialize, phash, slide_path, meta.get("slide_id"), extra)
    return table


def write_manifest(sdir: Path, n_tiles: int, params: TilingParams, materialize: str | None, phash: str,
                   slide_path: Path, slide_id: str | None, extra: dict | None = None) -> None:
    """Write ``manifest.json`` (atomically, last): the slide's outputs are complete."""
    from wsi_lab._version import __version__
    from wsi_lab.io import atomic_write_bytes

    manifest = {"slide_id": slide_id, "slide_path": str(slide_path), "n_tiles": int(n_tiles), "table": TABLE,
                "table_sha256": file_sha256(sdir / TABLE), "params_hash": phash, "params": params.to_dict(),
                "materialize": materialize, "completed_at": time.time(), "wsi_lab_version": __version__,
                **(extra or {})}
    atomic_write_bytes(sdir / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())


def remove_partial_outputs(sdir: Path) -> None:
    """Remove what a run writes for one slide (manifest first, then table, mask, ``tiles/``,
    ``tfrecords/``, and the folder when it is left empty): used for slides a run did not finish."""
    (sdir / MANIFEST).unlink(missing_ok=True)
    for name in (TABLE, "mask.png"):
        (sdir / name).unlink(missing_ok=True)
    for sub in ("tiles", "tfrecords"):
        if (sdir / sub).is_dir():
            shutil.rmtree(sdir / sub, ignore_errors=True)
    for f in sdir.glob(".*.part") if sdir.is_dir() else ():
        f.unlink(missing_ok=True)
    try:
        sdir.rmdir()
    except OSError as exc:  # not empty (files of the user's) or already gone
        log.debug("%s kept: %s", sdir, exc)
