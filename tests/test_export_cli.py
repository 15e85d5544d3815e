"""`wsi-lab split` and `wsi-lab export` on tables planned from the real slides by the tiling core."""

from __future__ import annotations

import json
import shutil

import pytest

from wsi_lab.cli import main
from wsi_lab.data.table import read_table, write_table
from wsi_lab.data.tfrecord import read_examples


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Six 'slides' (copies of the real CMU slide under TCGA names, 3 patients × 2 slides), each planned
    by plan_tiles and written as its own TileTable, like a tiling run's output folder."""
    from tests.conftest import CMU
    from wsi_lab.tiling import plan_tiles

    if not CMU.exists():
        pytest.skip("CMU slide missing")
    root = tmp_path_factory.mktemp("cohort")
    paths = []
    for p in range(3):
        for s in range(2):
            sid = f"TCGA-AB-{p:04d}-01Z-00-DX{s + 1}"
            slide = root / "slides" / f"{sid}.svs"
            slide.parent.mkdir(exist_ok=True)
            shutil.copy(CMU, slide)
            t = plan_tiles(slide, tile_size=64, mpp=4.0, min_tissue=0.5)
            t = t.head(4 + p)
            paths.append(write_table(t, root / "tiles" / sid / "tiles.parquet"))
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"TCGA-AB-{p:04d}-01Z-00-DX{s + 1},{'LUAD' if p % 2 else 'LUSC'}\n"
                                                   for p in range(3) for s in range(2)) + "TCGA-ZZ-9999-01Z,LUAD\n")
    return root, paths, labels


def test_split_then_export_tfrecord_and_jpeg(tables, tmp_path, capsys):
    root, paths, labels = tables
    out = tmp_path / "split.parquet"
    with pytest.warns(UserWarning, match="TCGA-ZZ-9999"):
        rc = main(["split", str(root / "tiles"), "--labels", str(labels), "--seed", "1", "-o", str(out)])
    assert rc == 0
    t = read_table(out)
    assert set(t["split"]) == {"train", "val", "test"} and t.groupby("patient_id")["split"].nunique().max() == 1
    assert set(t.attrs["wsi_lab"]["slides"]) == set(t["slide_id"])  # every slide's path survives the merge
    assert t.attrs["wsi_lab"]["label_index"] == {"LUAD": 0, "LUSC": 1}
    assert "train" in capsys.readouterr().out

    rc = main(["export", str(out), "--format", "tfrecord", "--shards", "2", "--out", str(tmp_path / "tf"), "-q"])
    assert rc == 0
    m = json.loads((tmp_path / "tf" / "manifest.json").read_text())
    assert sum(f["records"] for f in m["files"]) == len(t)
    n = sum(1 for f in m["files"] for _ in read_examples(tmp_path / "tf" / f["path"]))
    assert n == len(t)
    assert "TFRecord file(s)" in capsys.readouterr().out

    rc = main(["export", str(out), "--format", "jpeg", "--out", str(tmp_path / "jpg"), "-q"])
    assert rc == 0 and len(list((tmp_path / "jpg").rglob("*.jpg"))) == len(t)


@pytest.mark.filterwarnings("ignore::wsi_lab.data.labels.UnknownSlidesWarning")
def test_cli_bad_input_typed_errors(tables, tmp_path, capsys):
    root, paths, labels = tables
    missing = tmp_path / "missing.csv"
    missing.write_text("slide_id,label\nTCGA-AB-0000-01Z-00-DX1,LUAD\n")
    out = tmp_path / "s.parquet"
    assert main(["split", str(root / "tiles"), "--labels", str(missing), "-o", str(out)]) == 2
    assert "have no label" in capsys.readouterr().err and not out.exists()
    assert main(["split", str(root / "tiles"), "--labels", str(labels), "--fractions", "0.8,0.3,0.1",
                 "-o", str(out)]) == 2
    assert "sum to" in capsys.readouterr().err
    assert main(["split", str(root / "tiles"), "--labels", str(labels), "--fractions", "1.2,-0.1,-0.1",
                 "-o", str(out)]) == 2
    assert "≥ 0" in capsys.readouterr().err
    # an export with shards <= 0 fails and leaves a previous export untouched
    assert main(["split", str(root / "tiles"), "--labels", str(labels), "-o", str(out)]) == 0
    assert main(["export", str(out), "--format", "tfrecord", "--out", str(tmp_path / "tf"), "-q"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "tf").rglob("*") if p.is_file()}
    capsys.readouterr()
    for shards in ("0", "-3"):
        assert main(["export", str(out), "--format", "tfrecord", "--shards", shards, "--out", str(tmp_path / "tf")]) == 2
        assert "shards must be a positive integer" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "tf").rglob("*") if p.is_file()} == before
