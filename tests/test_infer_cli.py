"""The inference commands end to end (real subprocess-free CLI calls through wsi_lab.cli.main)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.cli import main  # noqa: E402
from wsi_lab.models import TileClassifier, save_checkpoint  # noqa: E402


def test_predict_evaluate_overlay_geojson(tmp_path, capsys):
    table = make_cohort(tmp_path / "c", slides=2, tile_size=32, read_size=64, width=256, height=128)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=32))
    pred = tmp_path / "pred.parquet"
    assert main(["predict", str(ckpt), str(table), "-o", str(pred), "-q"]) == 0
    assert (tmp_path / "pred_slides" / "s0" / "manifest.json").is_file()
    assert main(["evaluate", str(pred), "--out", str(tmp_path / "ev")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "ev" / "metrics.json").read_text())) >= {"tile", "slide"}
    for kind in ("heatmap", "pred"):
        assert main(["overlay-predictions", str(pred), "-o", str(tmp_path / f"{kind}.png"), "--kind", kind]) == 0
        assert (tmp_path / f"{kind}.png").stat().st_size > 0
    assert main(["geojson", str(pred), "-o", str(tmp_path / "t.geojson")]) == 0
    data = json.loads((tmp_path / "t.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 16
    # bad input: one line, exit 2
    capsys.readouterr()
    assert main(["overlay-predictions", str(pred), "-o", str(tmp_path / "x.png"), "--kind", "attention"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsi-lab: error:") and "'attention'" in err and len(err.strip().splitlines()) == 1


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("wsi-lab: error:") and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_names_the_file_and_value_and_keeps_what_was_written(tmp_path, capsys):
    """Issue 9's bad-input list through the CLI: each a one-line typed error naming the file and the
    value at fault; the outputs written before stay byte for byte."""
    import pandas as pd

    table = make_cohort(tmp_path / "c", slides=2, tile_size=32, read_size=64, width=256, height=128)
    ckpt = save_checkpoint(tmp_path / "m.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=32))
    pred, png, ev = tmp_path / "pred.parquet", tmp_path / "heat.png", tmp_path / "ev"
    assert main(["predict", str(ckpt), str(table), "-o", str(pred), "-q"]) == 0
    assert main(["overlay-predictions", str(pred), "-o", str(png)]) == 0
    assert main(["evaluate", str(pred), "--out", str(ev)]) == 0
    assert main(["geojson", str(pred), "-o", str(tmp_path / "t.geojson")]) == 0
    capsys.readouterr()
    kept = {p: p.read_bytes() for p in (pred, png, ev / "metrics.json", tmp_path / "t.geojson")}

    other = save_checkpoint(tmp_path / "xy.pt", TileClassifier("small_cnn", classes=["x", "y"], input_size=32))
    big = save_checkpoint(tmp_path / "big.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=48))
    for bad, values in ((other, ("['x', 'y']", "['a', 'b']")), (big, ("48", "32"))):
        assert main(["predict", str(bad), str(table), "-o", str(pred), "-q"]) == 2
        err = _err(capsys)
        assert bad.name in err and all(v in err for v in values), err
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(table).iloc[:0].to_parquet(empty)
    assert main(["predict", str(ckpt), str(empty), "-o", str(pred), "-q"]) == 2
    err = _err(capsys)
    assert "empty.parquet" in err and "is empty" in err, err

    assert main(["overlay-predictions", str(pred), "-o", str(png), "--class", "nope"]) == 2
    err = _err(capsys)
    assert "pred.parquet" in err and "prob_nope" in err

    one = tmp_path / "one.parquet"
    t = pd.read_parquet(pred)
    t.assign(label="a").to_parquet(one)
    assert main(["evaluate", str(one), "--out", str(ev)]) == 2
    err = _err(capsys)
    assert "one.parquet" in err and "only ['a']" in err

    notfc = tmp_path / "regions.geojson"
    notfc.write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    assert main(["geojson", str(pred), "-o", str(tmp_path / "t.geojson"), "--annotations", str(notfc)]) == 2
    err = _err(capsys)
    assert "regions.geojson" in err and "'Polygon'" in err
    assert {p: p.read_bytes() for p in kept} == kept
