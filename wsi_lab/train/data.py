"""The data side of a job: the TileTable of a spec, its splits, checks that fail early with the cause
(empty or single-class splits, missing slides, tile sizes), and datasets over the rows of a split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["JobData", "load_job_table", "job_data", "check_slides"]


def load_job_table(path: str) -> pd.DataFrame:
    """The TileTable of a job: one Parquet file, or a tiling output folder (every ``*/tiles.parquet``)."""
    from wsi_lab.data.table import load_tables, read_table

    p = Path(path)
    if p.is_dir():
        parts = sorted(p.glob("*/tiles.parquet")) or sorted(p.glob("*.parquet"))
        if not parts:
            raise DataError(f"{p}: no TileTable in this folder (expected */tiles.parquet or *.parquet)")
        return load_tables(list(parts))
    if not p.is_file():
        raise DataError(f"{p}: TileTable not found")
    return read_table(p)


def check_slides(table: pd.DataFrame) -> dict[str, str]:
    """``{slide_id: path}`` of the table's slides; :class:`DataError` naming every tile source that is
    missing on disk (checked before training starts, not in a DataLoader worker)."""
    from wsi_lab.data.tile_reader import slide_paths_of

    paths = slide_paths_of(table)
    missing = {s: p for s, p in paths.items() if not Path(p).exists()}
    if missing:
        first = list(missing.items())[:5]
        raise DataError(f"the table's tiles point to {len(missing)} missing slide(s): "
                        + ", ".join(f"{s} -> {p}" for s, p in first) + "; fix the paths or re-tile")
    return paths


@dataclass
class JobData:
    """The rows of the train and validation splits (indices into ``table``) and the class names."""

    table: pd.DataFrame
    train: np.ndarray
    val: np.ndarray
    classes: list[str]
    tile_size: int


def job_data(spec, labelled: bool) -> JobData:
    """Load and check the spec's table: ``split_column`` picks train/val rows (without that column an
    unlabelled job trains on every row and validates on none); ``labelled`` jobs need ``label_column``
    and at least two classes in the training split."""
    from wsi_lab.data.tile_reader import label_index_of, label_indices, require_columns

    table = load_job_table(spec.table)
    require_columns(table, ("slide_id", "x", "y", "level", "read_size", "tile_size"), f"task {spec.task!r}")
    if len(table) == 0:
        raise DataError(f"{spec.table}: the TileTable has no tiles")
    if spec.split_column in table.columns:
        split = table[spec.split_column].astype(str).to_numpy()
        train, val = np.flatnonzero(split == spec.train_split), np.flatnonzero(split == spec.val_split)
    elif labelled:
        raise DataError(f"{spec.table}: no {spec.split_column!r} column; run `wsi-lab split` first or name the "
                        "column with split_column")
    else:
        train, val = np.arange(len(table)), np.zeros(0, np.int64)
    if len(train) == 0:
        raise DataError(f"{spec.table}: the training split {spec.train_split!r} (column {spec.split_column!r}) is "
                        "empty; check the split names or re-run `wsi-lab split`")
    classes: list[str] = []
    if labelled:
        if spec.label_column not in table.columns:
            raise DataError(f"{spec.table}: no {spec.label_column!r} column; attach labels first (wsi-lab labels)")
        index = label_index_of(table, spec.label_column)
        classes = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
        y = label_indices(table, spec.label_column)
        train, val = train[y[train] >= 0], val[y[val] >= 0]
        present = sorted({classes[i] for i in np.unique(y[train])}) if len(train) else []
        if len(present) < 2:
            raise DataError(f"{spec.table}: the training split has {len(present)} class(es) {present}; a classifier "
                            "needs at least two: label more slides or change the split")
    if len(val) == 0:
        log.warning("%s: no validation rows (split %r); best.pt follows the training loss", spec.table, spec.val_split)
    sizes = sorted(pd.unique(table["tile_size"]).tolist())
    if len(sizes) != 1:
        raise DataError(f"{spec.table}: tiles of several sizes {sizes}; a job trains on one tile size")
    return JobData(table, train, val, classes, int(sizes[0]))


def model_input_size(spec, tile_size: int) -> int:
    """The model's input size: ``model.input_size`` when given (it must equal the tiles'), else the tiles'."""
    given = spec.model_options.get("input_size")
    if given is not None and int(given) != tile_size:
        raise InvalidParameterError(f"job spec key 'model': input_size {given} differs from the table's tile_size "
                                    f"{tile_size}; re-tile or drop input_size")
    return tile_size
