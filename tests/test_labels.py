"""Labels: CSV parsing, folder labels, attaching labels to a real TileTable."""

from __future__ import annotations

import shutil
import warnings

import pandas as pd
import pytest

from tests._datatables import concat, grid_table
from wsi_lab.data.labels import UnknownSlidesWarning, attach_labels, labels_from_folders, read_labels
from wsi_lab.errors import DataError, InvalidParameterError


def _csv(tmp_path, text, name="labels.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_labels_strings_and_patients(tmp_path):
    df = read_labels(_csv(tmp_path, "slide_id,label,patient_id\nA,LUAD,P1\nB,LUSC,\nA,LUAD,P1\n\n"))
    assert list(df.columns) == ["slide_id", "label", "patient_id"]
    assert df["slide_id"].tolist() == ["A", "B"]  # the repeated identical line is merged
    assert df["label"].tolist() == ["LUAD", "LUSC"]
    assert df["patient_id"].tolist()[0] == "P1" and pd.isna(df["patient_id"].tolist()[1])


def test_read_labels_ints(tmp_path):
    df = read_labels(_csv(tmp_path, "label,slide_id\n1,A\n0,B\n"))
    assert df["label"].tolist() == [1, 0] and all(isinstance(v, int) for v in df["label"])


@pytest.mark.parametrize("text, match", [
    ("slide_id,label\nA,x\nB,y\nA,z\n", r"labels.csv:4: slide 'A' has label 'z' here but 'x' on line 2"),
    ("slide_id,label\nA,x\nB,\n", r"labels.csv:3: slide 'B' has an empty label"),
    ("slide_id,label,grade\nA,x,3\n", r"labels.csv:1: unknown column\(s\) \['grade'\]"),
    ("slide_id,diagnosis\nA,x\n", r"labels.csv:1: unknown column"),
    ("slide_id\nA\n", r"labels.csv:1: missing column 'label'"),
    ("slide_id,label\nA,x,extra\n", r"labels.csv:2: expected 2 fields"),
    ("slide_id,label\n,x\n", r"labels.csv:2: empty slide_id"),
    ("", r"labels.csv:1: empty labels file"),
    ("slide_id,label\n", r"no labels"),
])
def test_read_labels_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_labels(_csv(tmp_path, text))


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "none.csv")


def test_labels_from_folders(tmp_path, cmu_path):
    for label, name in [("tumor", "s1.svs"), ("normal", "s2.svs"), ("tumor", "sub/s3.svs")]:
        target = tmp_path / "root" / label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cmu_path, target)
    df = labels_from_folders(tmp_path / "root")
    got = dict(zip(df["slide_id"], df["label"]))
    assert got == {"s1": "tumor", "s2": "normal", "s3": "sub"}  # label = the folder holding the slide
    assert all(p.endswith(".svs") for p in df["path"])
    (tmp_path / "root" / "loose.svs").write_bytes(b"x")
    with pytest.raises(DataError, match="no label folder"):
        labels_from_folders(tmp_path / "root")


@pytest.fixture
def table(cmu_path):
    return concat([grid_table(cmu_path, sid, limit=4) for sid in
                   ("TCGA-AB-0001-01Z-00-DX1", "TCGA-AB-0001-01Z-00-DX2", "TCGA-AB-0002-01Z-00-DX1")])


def test_attach_labels_index_and_patient(tmp_path, table):
    labels = _csv(tmp_path, "slide_id,label\nTCGA-AB-0001-01Z-00-DX1,LUSC\nTCGA-AB-0001-01Z-00-DX2,LUSC\n"
                            "TCGA-AB-0002-01Z-00-DX1,LUAD\nOTHER,KIRC\n")
    with pytest.warns(UnknownSlidesWarning, match="OTHER"):
        out = attach_labels(table, labels)
    assert len(out) == len(table) and out["label"].tolist()[:4] == ["LUSC"] * 4
    # sorted class names over every class of the labels file (stable across subsets)
    assert out.attrs["wsi_lab"]["label_index"] == {"KIRC": 0, "LUAD": 1, "LUSC": 2}
    assert out.attrs["wsi_lab"]["slides"] == table.attrs["wsi_lab"]["slides"]  # provenance kept
    assert "label" not in table.columns  # input untouched


def test_attach_labels_missing_slides(tmp_path, table):
    labels = _csv(tmp_path, "slide_id,label,patient_id\nTCGA-AB-0001-01Z-00-DX1,1\nTCGA-AB-0002-01Z-00-DX1,0,\n"
                  .replace(",1\n", ",1,PX\n"))
    with pytest.raises(DataError, match=r"1 slide\(s\) in the table have no label.*TCGA-AB-0001-01Z-00-DX2"):
        attach_labels(table, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown slides here: no warning
        out = attach_labels(table, labels, on_missing="drop")
    assert set(out["slide_id"]) == {"TCGA-AB-0001-01Z-00-DX1", "TCGA-AB-0002-01Z-00-DX1"}
    assert out["label"].dtype == "int64" and out.attrs["wsi_lab"]["label_index"] == {"0": 0, "1": 1}
    # patient_id from the labels wins where given, else the table's
    pids = dict(zip(out["slide_id"], out["patient_id"]))
    assert pids == {"TCGA-AB-0001-01Z-00-DX1": "PX", "TCGA-AB-0002-01Z-00-DX1": "TCGA-AB-0002-01Z-00-DX1"}
    with pytest.raises(InvalidParameterError):
        attach_labels(table, labels, on_missing="ignore")


def test_attach_labels_nothing_left(tmp_path, table):
    with pytest.warns(UnknownSlidesWarning):
        with pytest.raises(DataError, match="no slide of the table has a label"):
            attach_labels(table, _csv(tmp_path, "slide_id,label\nZZ,a\n"), on_missing="drop")


def test_label_indices_vectorised_matches_label_keys():
    import numpy as np
    import pandas as pd

    from wsi_lab.data.tile_reader import label_indices

    t = pd.DataFrame({"label": [1.0, np.nan, 3.0, 1.0, None]})  # int labels widened to float by NaN
    assert label_indices(t).tolist() == [0, -1, 1, 0, -1]
    t.attrs["wsi_lab"] = {"label_index": {"3": 0, "1": 1}}
    assert label_indices(t).tolist() == [1, -1, 0, 1, -1]
    t.attrs["wsi_lab"] = {"label_index": {"1": 0}}
    with pytest.raises(DataError, match="not in the table's label_index"):
        label_indices(t)
    assert label_indices(pd.DataFrame({"label": [None, None]})).tolist() == [-1, -1]
