"""TileTable Parquet I/O: metadata round trip, validation, atomic writes, patient ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import wsi_lab
from wsi_lab.data.table import REQUIRED_COLUMNS, default_patient_id, empty_table, read_table, write_table
from wsi_lab.errors import DataError


def _table(n=5):
    t = pd.DataFrame({"slide_id": ["s1"] * n, "patient_id": ["p1"] * n, "x": np.arange(n) * 256,
                      "y": np.zeros(n, np.int64), "level": np.zeros(n, np.int32), "read_size": np.full(n, 256, np.int32),
                      "tile_size": np.full(n, 256, np.int32), "mpp": np.full(n, 0.5), "tissue_fraction": np.linspace(0, 1, n)})
    t.attrs["wsi_lab"] = {"slide_path": "/data/s1.svs", "params": {"tile_size": 256}}
    return t


def test_roundtrip_keeps_columns_and_metadata(tmp_path):
    t = _table()
    t["label"] = ["a", "b", "a", "b", "a"]
    p = write_table(t, tmp_path / "t.parquet", metadata={"extra": {"k": [1, 2]}, "mpp": np.float64(0.5)})
    back = read_table(p)
    pd.testing.assert_frame_equal(back, t, check_dtype=False)
    meta = back.attrs["wsi_lab"]
    assert meta["slide_path"] == "/data/s1.svs" and meta["params"] == {"tile_size": 256}
    assert meta["extra"] == {"k": [1, 2]} and meta["mpp"] == 0.5
    assert meta["wsi_lab_version"] == wsi_lab.__version__
    # the metadata lives in the Parquet schema, readable without wsi_lab
    import pyarrow.parquet as pq

    assert b"wsi_lab" in pq.read_schema(p).metadata


def test_validation_errors(tmp_path):
    with pytest.raises(DataError, match="missing required"):
        write_table(_table().drop(columns=["x"]), tmp_path / "t.parquet")
    bad = _table()
    bad["x"] = bad["x"].astype(float) + 0.5
    with pytest.raises(DataError, match="integers"):
        write_table(bad, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()
    with pytest.raises(DataError, match="no such"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        read_table(tmp_path / "junk.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="missing required"):
        read_table(tmp_path / "other.parquet")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    p = write_table(_table(3), tmp_path / "t.parquet")
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_table(_table(5), p)
    monkeypatch.undo()
    assert len(read_table(p)) == 3
    assert [f.name for f in tmp_path.iterdir()] == ["t.parquet"]  # no temp files left


def test_empty_table_roundtrip(tmp_path):
    e = empty_table()
    assert list(e.columns) == list(REQUIRED_COLUMNS)
    back = read_table(write_table(e, tmp_path / "e.parquet"))
    assert len(back) == 0 and list(back.columns) == list(REQUIRED_COLUMNS)


def test_default_patient_id():
    assert default_patient_id("TCGA-AB-1234-01Z-00-DX1.abcdef") == "TCGA-AB-1234"
    assert default_patient_id("tcga-ab-1234-01A") == "TCGA-AB-1234"
    assert default_patient_id("CMU-1-Small-Region") == "CMU-1-Small-Region"
    assert default_patient_id("TCGA-AB") == "TCGA-AB"


def test_planned_table_roundtrip(tmp_path, cmu_path):
    t = wsi_lab.plan_tiles(cmu_path, mpp=0.5, mask="otsu")
    back = read_table(write_table(t, tmp_path / "cmu.parquet"))
    assert back.attrs["wsi_lab"]["slide_path"] == str(cmu_path)
    assert back.attrs["wsi_lab"]["mask"]["method"] == "otsu"
    assert back[["x", "y"]].equals(t[["x", "y"]])
