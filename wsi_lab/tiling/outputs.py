"""Per-slide outputs of a tiling run and the run's :class:`TilingResult`.

``out/<slide_id>/tiles.parquet`` (+ ``tiles/<x>_<y>.jpg`` or ``tfrecords/``, ``mask.png``) and the
step manifest (:mod:`wsi_lab.runs.manifest`, kind ``"tiling"``) written last. A slide is complete only
when its manifest matches the slide file's hash (path, size, mtime) and the parameters' hash AND every
listed file still has its recorded size and SHA-256; anything in the slide folder the manifest does not
list (orphan JPEGs of an earlier run, ``.part`` files of a killed writer) is removed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsi_lab.runs import manifest as mf
from wsi_lab.runs.job import Failure
from wsi_lab.runs.spec import stable_hash
from wsi_lab.tiling.params import TilingParams

log = logging.getLogger(__name__)

__all__ = ["TilingResult", "slide_outputs_complete", "write_slide_outputs", "params_hash", "inputs_hash",
           "remove_partial_outputs", "clean_slide_dir", "display_name", "KIND", "TABLE", "OWNED"]

KIND = "tiling"
TABLE = "tiles.parquet"
#: what a tiling run writes in a slide folder (and so may clean)
OWNED = (TABLE, "mask.png", "tiles/*", "tfrecords/**/*")


def display_name(text: str) -> str:
    """``text`` safe to print and encode as UTF-8 (undecodable bytes of a file name shown as �)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def inputs_hash(slide_path: Path) -> str:
    """Hash of the slide file's identity: resolved path, size and mtime (raises OSError when missing)."""
    st = slide_path.stat()
    return stable_hash({"slide": [display_name(str(slide_path.resolve())), st.st_size, st.st_mtime_ns]})[:16]


def params_hash(params: TilingParams, materialize: str | None, if_no_mpp: str = "fail",
                passthrough: bool = True) -> str:
    """Hash of everything that decides a slide's outputs besides the slide itself: the parameters, what
    is materialised, the no-µm/px policy and, for JPEG folders, whether source tiles are passed through
    (``WSI_LAB_JPEG_PASSTHROUGH``: a folder written one way is not complete for the other)."""
    d: dict[str, Any] = {"params": params.to_dict(), "materialize": materialize}
    if if_no_mpp != "fail":
        d["if_no_mpp"] = if_no_mpp
    if materialize == "jpeg" and not passthrough:  # absent when on: earlier runs' hashes stay valid
        d["jpeg_passthrough"] = False
    return stable_hash(d)[:16]


def slide_outputs_complete(slide_dir: str | os.PathLike, params_hash: str | None = None,
                           inputs_hash: str | None = None) -> bool:
    """True when ``slide_dir`` holds a tiling manifest whose hashes (those given) match and whose
    listed files all keep their recorded sizes and SHA-256."""
    return mf.check_manifest(slide_dir, KIND, inputs_hash=inputs_hash, params_hash=params_hash) is not None


@dataclass
class TilingResult:
    """What a run did: per-slide table paths and tile counts, ``failures`` (:class:`~wsi_lab.runs.Failure`
    per slide), skipped slides (already complete)."""

    out: Path
    tables: dict[str, Path] = field(default_factory=dict)
    n_tiles: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    tiles_read: int = 0
    megapixels_read: float = 0.0
    dashboard_link: str | None = None
    no_slides: bool = False

    @property
    def failed(self) -> dict[str, str]:
        """``{slide: "ErrorType: message"}`` of the failures (read-only view; for display)."""
        return {f.item: f"{f.error_type}: {f.message}" for f in self.failures}

    @property
    def ok(self) -> bool:
        return not self.failures and not self.cancelled and not self.no_slides

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
        """One line for the run, then one line per failed slide."""
        if self.no_slides:
            return f"no slides to tile (nothing found in the given paths); nothing written to {self.out}"
        done = len(self.tables) - len(self.skipped)
        lines = [f"{done} slide(s) tiled, {len(self.skipped)} skipped (already complete), {len(self.failures)} failed"
                 f"{', cancelled' if self.cancelled else ''}; {self.total_tiles} tiles in {self.elapsed_s:.1f} s -> {self.out}"]
        lines += [display_name(f"  FAILED {f.item}: {f.error_type}: {f.message}").replace("\n", " ") for f in self.failures]
        return "\n".join(lines)


def write_slide_outputs(sdir: Path, table: pd.DataFrame, mask: Any, params: TilingParams, materialize: str | None,
                        slide_path: Path) -> pd.DataFrame:
    """Write the slide's table (sorted row-major) and mask; returns the table. The manifest comes
    after every output (:func:`finish_slide`)."""
    from wsi_lab.data.table import write_table

    table = table.sort_values(["y", "x"], kind="stable").reset_index(drop=True)
    meta = dict(table.attrs.get("wsi_lab") or {})
    meta.update({"tiling_params": params.to_dict(), "materialize": materialize})
    table.attrs["wsi_lab"] = meta
    if mask is not None:
        mask.save(sdir / "mask.png")
    write_table(table, sdir / TABLE)
    return table


def finish_slide(sdir: Path, table: pd.DataFrame, params: TilingParams, materialize: str | None, *,
                 inputs: str, phash: str, slide_path: Path, extra: dict | None = None,
                 records: dict | None = None) -> dict:
    """Write the manifest (last): it lists the table, the mask, every tile JPEG (with its size and
    SHA-256: from ``records`` {name: (bytes, sha256)} as the writer measured them, else read back) and
    TFRecord file; then remove what it does not list. Returns the manifest."""
    files: list[str | dict[str, Any]] = [TABLE, *(["mask.png"] if (sdir / "mask.png").is_file() else [])]
    if materialize == "jpeg":
        names = [f"tiles/{x}_{y}.jpg" for x, y in zip(table["x"], table["y"])]
        present: set[str] = set()
        if names:
            with os.scandir(sdir / "tiles") as it:  # one listing, not a stat per tile
                present = {f"tiles/{e.name}" for e in it if e.is_file()}
        missing = [n for n in names if n not in present]
        if missing:
            raise OSError(f"{sdir}: {len(missing)} tile file(s) missing after the run, e.g. {missing[0]}")
        records = records or {}
        files += [{"path": n, "bytes": records[n][0], "sha256": records[n][1]} if n in records else n for n in names]
    elif materialize == "tfrecord":
        files += sorted(p.relative_to(sdir).as_posix() for p in (sdir / "tfrecords").rglob("*")
                        if p.is_file() and not p.name.endswith(".part"))
    m = mf.write_manifest(sdir, KIND, inputs_hash=inputs, params_hash=phash, files=files,
                          slide_id=table.attrs.get("wsi_lab", {}).get("slide_id"),
                          slide_path=display_name(str(slide_path)), n_tiles=int(len(table)), table=TABLE,
                          params=params.to_dict(), materialize=materialize, **(extra or {}))
    clean_slide_dir(sdir, m)
    return m


def clean_slide_dir(sdir: Path, manifest: dict | None) -> list[Path]:
    """Remove the files tiling owns in ``sdir`` that ``manifest`` does not list (and ``.part`` files)."""
    return mf.clean_unlisted(sdir, manifest, owned=OWNED)


def remove_partial_outputs(sdir: Path) -> None:
    """Remove what a run writes for one slide (manifest first, then table, mask, ``tiles/``,
    ``tfrecords/``, and the folder when it is left empty): used for slides a run did not finish."""
    mf.remove_tree_outputs(sdir, (TABLE, "mask.png"), ("tiles", "tfrecords"))
