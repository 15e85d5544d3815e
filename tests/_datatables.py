"""Small real TileTables for the data tests (labels, splits, exports, datasets): grids of tiles over
the real shared slides, built directly as DataFrames with the TileTable attrs layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def grid_table(path: Path, slide_id: str, patient_id: str | None = None, read_size: int = 256, tile_size: int = 64,
               level: int = 0, step: int | None = None, limit: int | None = None,
               dims: tuple[int, int] | None = None) -> pd.DataFrame:
    """Tiles on a regular grid of level-0 pixels over ``path`` (dims = level-0 (width, height))."""
    if dims is None:
        from wsi_lab.slide import open_slide

        with open_slide(path) as s:
            dims = s.dimensions
            ds = s.level_downsamples[level]
    else:
        ds = 1.0
    span = int(read_size * ds)
    step = step or span
    xs = np.arange(0, dims[0] - span + 1, step)
    ys = np.arange(0, dims[1] - span + 1, step)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    n = xx.size if limit is None else min(limit, xx.size)
    df = pd.DataFrame({
        "slide_id": slide_id, "patient_id": patient_id or slide_id,
        "x": xx.ravel()[:n].astype("int64"), "y": yy.ravel()[:n].astype("int64"),
        "level": np.int32(level), "read_size": np.int32(read_size), "tile_size": np.int32(tile_size),
        "mpp": np.nan, "tissue_fraction": np.float32(1.0),
    })
    df.attrs["wsi_lab"] = {"slides": {slide_id: {"path": str(path)}}}
    return df


def concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tables and merge their ``attrs["wsi_lab"]["slides"]``."""
    out = pd.concat(tables, ignore_index=True)
    slides: dict = {}
    for t in tables:
        slides.update(t.attrs["wsi_lab"]["slides"])
    out.attrs = {"wsi_lab": {"slides": slides}}
    return out


def cohort(path: Path, patients: int, slides_per_patient: int = 1, tiles_per_slide: int = 3,
           labels: tuple = ("LUAD", "LUSC"), tile_size: int = 32, read_size: int = 128) -> pd.DataFrame:
    """A cohort of TCGA-named slides that all point at the real slide ``path`` (different tiles each),
    with a ``label`` per patient (cycling through ``labels``)."""
    tables = []
    dims = None
    from wsi_lab.slide import open_slide

    with open_slide(path) as s:
        dims = s.dimensions
    k = 0
    for p in range(patients):
        pid = f"TCGA-AB-{p:04d}"
        for s_ in range(slides_per_patient):
            sid = f"{pid}-01Z-00-DX{s_ + 1}"
            t = grid_table(path, sid, pid, read_size=read_size, tile_size=tile_size, dims=dims)
            t = t.iloc[(np.arange(tiles_per_slide) + k * tiles_per_slide) % len(t)].reset_index(drop=True)
            t.attrs = {"wsi_lab": {"slides": {sid: {"path": str(path)}}}}
            t["label"] = labels[p % len(labels)]
            tables.append(t)
            k += 1
    return concat(tables)
