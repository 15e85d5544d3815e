"""The TileTable on disk: Parquet with provenance in the schema metadata.

A TileTable is a :class:`pandas.DataFrame` with one row per tile and at least the columns
:data:`REQUIRED_COLUMNS` (``x``, ``y`` are level-0 pixels of the tile's top-left corner; ``read_size`` is
the square side in pixels read at ``level``; ``tile_size`` the side after resizing; ``mpp`` the output
µm/px, NaN when unknown). Provenance (slide path, µm/px, every parameter, package version) lives in
``table.attrs["wsi_lab"]`` and is stored under the ``wsi_lab`` key of the Parquet schema metadata.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError
from wsi_lab.io import atomic_path

__all__ = ["concat_tables", "load_tables", "REQUIRED_COLUMNS", "COLUMN_DTYPES", "read_table", "write_table", "validate_table",
           "empty_table", "default_patient_id", "table_meta"]

REQUIRED_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "x", "y", "level", "read_size", "tile_size",
                                     "mpp", "tissue_fraction")
COLUMN_DTYPES: dict[str, str] = {
    "slide_id": "object", "patient_id": "object", "x": "int64", "y": "int64", "level": "int32",
    "read_size": "int32", "tile_size": "int32", "mpp": "float64", "tissue_fraction": "float32",
}
META_KEY = b"wsi_lab"
_TCGA = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)


def default_patient_id(slide_id: str) -> str:
    """Patient of a slide: the first 12 characters of a TCGA barcode (``TCGA-XX-XXXX``) when the slide
    name starts with one, else the slide id itself (one patient per slide)."""
    m = _TCGA.match(str(slide_id))
    return m.group(0).upper() if m else str(slide_id)


def empty_table() -> pd.DataFrame:
    """A TileTable with no rows and the canonical column dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMN_DTYPES.items()})


def validate_table(table: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Check ``table`` has the required columns with usable values; raise :class:`DataError` naming
    ``source`` and what is wrong. Returns the table."""
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source}: missing required TileTable column(s) {missing}; "
                        f"a TileTable needs {list(REQUIRED_COLUMNS)} (make one with wsi_lab.plan_tiles)")
    for c in ("x", "y", "level", "read_size", "tile_size"):
        if len(table) and not pd.api.types.is_integer_dtype(table[c]):
            raise DataError(f"{source}: column {c!r} must hold integers, found dtype {table[c].dtype}")
    if len(table):
        if (table["read_size"] <= 0).any() or (table["tile_size"] <= 0).any():
            raise DataError(f"{source}: read_size and tile_size must be positive")
        if (table["level"] < 0).any():
            raise DataError(f"{source}: level must be ≥ 0")
        if table["slide_id"].isna().any():
            raise DataError(f"{source}: slide_id has missing values")
    return table


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "to_dict"):
        return _jsonable(v.to_dict())
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def write_table(table: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a TileTable to Parquet atomically. ``metadata`` (JSON-able dict) is merged over
    ``table.attrs["wsi_lab"]`` and stored in the schema metadata with the package version. Returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsi_lab._version import __version__

    validate_table(table, str(path))
    meta = dict(table.attrs.get("wsi_lab") or {})
    meta.update(metadata or {})
    meta.setdefault("wsi_lab_version", __version__)
    frame = table.reset_index(drop=True)
    frame.attrs = {}
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    schema_meta = dict(arrow.schema.metadata or {})
    schema_meta[META_KEY] = json.dumps(_jsonable(meta), allow_nan=True).encode()
    arrow = arrow.replace_schema_metadata(schema_meta)
    target = Path(path)
    with atomic_path(target) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return target


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a TileTable written by :func:`write_table` (or any Parquet with the required columns), only
    ``columns`` when given; provenance comes back as ``table.attrs["wsi_lab"]`` (a dict, empty when absent)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such TileTable file; write one with wsi_lab.write_table or `wsi-lab tile`")
    try:
        arrow = pq.read_table(p, columns=columns)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated or non-Parquet files
        raise DataError(f"{p}: not a readable Parquet file ({exc}); re-create it") from exc
    raw = (arrow.schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise DataError(f"{p}: the wsi_lab metadata in the Parquet schema is not valid JSON") from exc
    table = arrow.to_pandas()
    validate_table(table, str(p))
    table.attrs["wsi_lab"] = meta
    return table


def table_meta(table: pd.DataFrame) -> dict:
    """The TileTable's provenance, ``table.attrs["wsi_lab"]`` (the dict itself, not a copy), or ``{}``
    when it has none."""
    meta = table.attrs.get("wsi_lab")
    return meta if isinstance(meta, dict) else {}


def concat_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate TileTables (e.g. one per slide from tiling) keeping every slide's path in
    ``attrs["wsi_lab"]["slides"][slide_id]["path"]``; other metadata comes from the first table."""
    if not tables:
        raise DataError("no TileTable to concatenate")
    slides: dict[str, dict] = {}
    for t in tables:
        meta = table_meta(t)
        for sid, info in (meta.get("slides") or {}).items():
            slides[str(sid)] = dict(info) if isinstance(info, dict) else {"path": str(info)}
        if meta.get("slide_id") and meta.get("slide_path"):
            slides.setdefault(str(meta["slide_id"]), {})["path"] = str(meta["slide_path"])
    out = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0].copy()
    meta = {k: v for k, v in table_meta(tables[0]).items() if len(tables) == 1 or k not in ("slide_id", "slide_path")}
    meta["slides"] = slides
    out.attrs = {"wsi_lab": meta}
    return out


def load_tables(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Read TileTable Parquet files (a folder means every ``*.parquet`` under it, e.g. a tiling output)
    and :func:`concat_tables` them."""
    from pathlib import Path

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.parquet"))
            if not found:
                raise DataError(f"{p}: no .parquet TileTable under this folder")
            files += found
        else:
            files.append(p)
    return concat_tables([read_table(f) for f in files])
