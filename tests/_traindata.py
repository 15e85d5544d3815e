"""Small generated slides and TileTables for the model and training tests (no real slides needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsi_lab.data.table import write_table
from wsi_lab.testing import make_slide


def make_cohort(folder: Path, slides: int = 2, tile_size: int = 64, read_size: int = 128, width: int = 768,
                height: int = 512, labels: tuple[str, ...] = ("a", "b"), val_fraction: float = 0.25,
                seed: int = 0, val_slides: tuple[str, ...] | None = None) -> Path:
    """Write ``slides`` procedural slides and a labelled, split TileTable over them; returns the table path.
    Slide ``i`` gets label ``labels[i % len(labels)]``; rows are split train/val at random (seeded), or
    by slide when ``val_slides`` names the validation slides."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, meta = [], {}
    rng = np.random.default_rng(seed)
    for i in range(slides):
        sid = f"s{i}"
        path = make_slide(folder / f"{sid}.svs", width, height, tile=256, seed=seed + i, source="procedural",
                          tissue_fraction=1.0, associated=False)
        meta[sid] = {"path": str(path)}
        for y in range(0, height - read_size + 1, read_size):
            for x in range(0, width - read_size + 1, read_size):
                rows.append({"slide_id": sid, "patient_id": sid, "x": x, "y": y, "level": 0, "read_size": read_size,
                             "tile_size": tile_size, "mpp": np.nan, "tissue_fraction": 1.0,
                             "label": labels[i % len(labels)]})
    df = pd.DataFrame(rows)
    if val_slides is not None:
        df["split"] = np.where(df["slide_id"].isin(val_slides), "val", "train")
    else:
        df["split"] = np.where(rng.random(len(df)) < val_fraction, "val", "train")
    df.attrs["wsi_lab"] = {"slides": meta}
    out = folder / "table.parquet"
    write_table(df, out)
    return out
