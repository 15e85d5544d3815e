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
