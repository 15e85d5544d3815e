"""The data side of a job: the TileTable of a spec (or a folder / CSV of patch files), its splits, checks
that fail early with the cause (empty or single-class splits, missing slides or files, tile sizes), and
datasets over the rows of a split.

The spec's ``data`` block says how ``table`` is read (:data:`DATA_OPTIONS`, checked by
:func:`check_data_options` when the spec is validated):

- ``format``: ``tiles`` (a TileTable, the default), ``folder`` (class folders of image patches),
  ``csv`` (``path,label[,patient][,split]``), ``tfrecord`` (the shards of ``wsi-lab export``, trained
  with Keras, in one process or under Horovod: :mod:`wsi_lab.train.keras`);
- ``sampler``: ``random`` (PyTorch's DistributedSampler, the default) or ``locality`` (shuffled source-tile
  groups: each source tile decoded about once per epoch, :mod:`wsi_lab.data.fast_loader`), tiles only;
- ``size`` (patches: resize every patch to ``size``²), ``root`` (csv: the folder of relative paths),
  ``val_fraction`` (patches without split folders/column: the share of patients held out, seeded);
- ``dask`` (features: ``"local"`` or a scheduler address: one Dask task per slide) and ``n_workers``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["JobData", "load_job_table", "job_data", "check_slides", "job_datasets", "check_data_options",
           "DATA_OPTIONS", "DATA_FORMATS"]

DATA_FORMATS = ("tiles", "folder", "csv", "tfrecord")
DATA_OPTIONS = ("format", "sampler", "size", "root", "val_fraction", "dask", "n_workers")


def check_data_options(spec) -> None:
    """Refuse unknown or impossible ``data`` options of ``spec`` (:class:`InvalidParameterError` naming
    the key); needs no torch."""
    data = spec.data

    def bad(why: str) -> InvalidParameterError:
        return InvalidParameterError(f"job spec key 'data': {why}")

    unknown = sorted(set(data) - set(DATA_OPTIONS))
    if unknown:
        raise bad(f"unknown option(s) {unknown}; known: {list(DATA_OPTIONS)}")
    fmt = data.get("format", "tiles")
    if fmt not in DATA_FORMATS:
        raise bad(f"format {fmt!r} is not one of {', '.join(DATA_FORMATS)}")
    if fmt in ("folder", "csv") and spec.task not in ("classify", "vae"):
        raise bad(f"format {fmt!r} (patch files) feeds tasks classify and vae, not {spec.task!r}")
    if fmt == "tfrecord" and spec.task != "classify":
        raise bad(f"format 'tfrecord' trains a Keras classifier (task classify), not task {spec.task!r}")
    if fmt == "tfrecord" and spec.backend not in ("local", "horovod"):
        raise bad(f"format 'tfrecord' (Keras) runs under backend 'local' or 'horovod', not {spec.backend!r}")
    sampler = data.get("sampler", "random")
    if sampler not in ("random", "locality"):
        raise bad(f"sampler {sampler!r} is not one of random, locality")
    if sampler == "locality" and fmt != "tiles":
        raise bad("sampler 'locality' groups slide tiles; it needs format 'tiles'")
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise bad(f"size must be a positive integer (pixels), got {size!r}")
    vf = data.get("val_fraction", 0.2)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise bad(f"val_fraction must be a number in [0, 1), got {vf!r}")
    if data.get("dask") is not None:
        if spec.task != "features":
            raise bad(f"dask fans out feature extraction (task features), not task {spec.task!r}")
        if not isinstance(data["dask"], str) or not data["dask"].strip():
            raise bad(f"dask must be 'local' or a scheduler address, got {data['dask']!r}")
    nw = data.get("n_workers")
    if nw is not None and (isinstance(nw, bool) or not isinstance(nw, int) or nw < 1):
        raise bad(f"n_workers must be an integer >= 1, got {nw!r}")
    for key in ("root",):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise bad(f"{key} must be a path, got {data[key]!r}")


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
    """The rows of the train and validation splits (indices into ``table``) and the class names.
    ``table`` is a TileTable (``source="tiles"``) or a patch table (``"patches"``: path, label, ...)."""

    table: pd.DataFrame
    train: np.ndarray
    val: np.ndarray
    classes: list[str]
    tile_size: int
    source: str = "tiles"
    resize: int | None = None   # patches: the size every patch is resized to (None: as stored)
    sampler: str = "random"


def job_data(spec, labelled: bool) -> JobData:
    """Load and check the spec's table: ``split_column`` picks train/val rows (without that column an
    unlabelled job trains on every row and validates on none); ``labelled`` jobs need ``label_column``
    and at least two classes in the training split."""
    from wsi_lab.data.tile_reader import label_index_of, label_indices, require_columns

    fmt = spec.data.get("format", "tiles")
    if fmt in ("folder", "csv"):
        return _patch_data(spec, fmt, labelled)
    if fmt != "tiles":
        raise InvalidParameterError(f"job spec key 'data': format {fmt!r} is not read by task {spec.task!r}")
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
    return JobData(table, train, val, classes, int(sizes[0]), sampler=spec.data.get("sampler", "random"))


def _patch_data(spec, fmt: str, labelled: bool) -> JobData:
    """JobData over a folder tree or CSV of patches (:mod:`wsi_lab.data.patches`): splits from the split
    folders / column, else a seeded hold-out of ``val_fraction`` of the patients."""
    from wsi_lab.data.patches import image_size, patch_table

    table = patch_table(spec.table, fmt, spec.data.get("root"))
    if "split" in table.columns:
        split = table["split"].astype(str).to_numpy()
        train, val = np.flatnonzero(split == spec.train_split), np.flatnonzero(split == spec.val_split)
    else:
        patients = np.array(sorted(pd.unique(table["patient_id"].astype(str))))
        rng = np.random.default_rng(spec.seed)
        n_val = int(round(float(spec.data.get("val_fraction", 0.2)) * len(patients)))
        held = set(rng.permutation(patients)[:n_val].tolist())
        is_val = table["patient_id"].astype(str).isin(held).to_numpy()
        train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train) == 0:
        raise DataError(f"{spec.table}: the training split {spec.train_split!r} has no patches")
    classes = sorted(pd.unique(table["label"].astype(str)).tolist())
    if labelled:
        present = sorted(pd.unique(table["label"].astype(str).iloc[train]).tolist())
        if len(present) < 2:
            raise DataError(f"{spec.table}: the training split has {len(present)} class(es) {present}; a classifier "
                            "needs at least two")
    if len(val) == 0:
        log.warning("%s: no validation patches; best.pt follows the training loss", spec.table)
    size = spec.data.get("size")
    tile_size = int(size) if size is not None else image_size(table)
    return JobData(table, train, val, classes, tile_size, source="patches", resize=size)


def job_datasets(data: JobData):
    """``(train Subset, val Subset)`` over one dataset of the whole table (one class index for every
    split): a :class:`~wsi_lab.data.dataset.TileDataset` (slides checked first) or a
    :class:`~wsi_lab.data.patch_dataset.PatchDataset`."""
    import torch

    if data.source == "patches":
        from wsi_lab.data.patch_dataset import PatchDataset

        ds: torch.utils.data.Dataset = PatchDataset(data.table, size=data.resize or data.tile_size,
                                                    classes=data.classes or None)
    else:
        from wsi_lab.data.dataset import TileDataset

        check_slides(data.table)
        ds = TileDataset(data.table)
    return torch.utils.data.Subset(ds, data.train.tolist()), torch.utils.data.Subset(ds, data.val.tolist())


def model_input_size(spec, tile_size: int) -> int:
    """The model's input size: ``model.input_size`` when given (it must equal the tiles'), else the tiles'."""
    given = spec.model_options.get("input_size")
    if given is not None and int(given) != tile_size:
        raise InvalidParameterError(f"job spec key 'model': input_size {given} differs from the table's tile_size "
                                    f"{tile_size}; re-tile or drop input_size")
    return tile_size
