"""The demo job end to end on two small generated slides with tiny model settings: tiling, a VAE
trained through JobSpec + launch, latents for every tile, latent/cluster overlays, GeoJSON, the slide
classifier with its metrics; a second run skips what is complete; without torch the model steps are
skipped with the install command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_lab.testing import make_slide

pytest.importorskip("torch")

TINY = dict(epochs=1, batch_size=16, latent_dim=8, clusters=3, classifier=True, max_tiles_per_slide=24)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("demo-slides")
    return [make_slide(folder / "alpha.svs", 1536, 1536, mpp=0.5, seed=1, tissue_fraction=0.6),
            make_slide(folder / "beta.svs", 1536, 1536, mpp=0.5, seed=2, tissue_fraction=0.6, source="procedural")]


@pytest.fixture(scope="module")
def demo_run(slides, tmp_path_factory):
    from wsi_lab.demo import run_demo
    from wsi_lab.demo_ml import MLSettings

    out = tmp_path_factory.mktemp("demo-out")
    lines: list[str] = []
    report = run_demo(slides, out, workers=1, settings=MLSettings(**TINY), say=lines.append)
    return out, report, lines


def test_demo_trains_predicts_and_draws(demo_run):
    from wsi_lab.infer import read_predictions

    out, report, lines = demo_run
    assert not report.failed, report.failed
    ckpt = out / "train" / "vae" / "checkpoints" / "last.pt"
    assert ckpt.is_file() and report.checkpoints["vae"] == ckpt
    assert (out / "train" / "vae" / "spec.json").is_file()  # written by wsi_lab.launch, the user's path
    preds = read_predictions(report.predictions["vae"])
    z = [c for c in preds.columns if c.startswith("z_")]
    assert len(z) == TINY["latent_dim"] and "recon_error" in preds.columns
    assert set(preds["slide_id"]) == {"alpha", "beta"} and preds[z].notna().all().all()
    assert (preds.groupby("slide_id").size() <= TINY["max_tiles_per_slide"]).all()
    for sid in ("alpha", "beta"):
        for kind in ("latent", "clusters"):
            png = out / "overlays" / f"{sid}_{kind}.png"
            assert report.overlays[f"{sid} {kind}"] == png
            im = Image.open(png)
            assert im.size[0] > 200 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # tiles in colours + legend
        gj = json.loads((out / "geojson" / f"{sid}.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
        assert len(tiles) == (preds["slide_id"] == sid).sum()
        assert {f["properties"]["classification"]["name"] for f in tiles} <= {f"cluster {i}" for i in range(3)}
        assert "recon_error" in tiles[0]["properties"]["measurements"]
    metrics = json.loads(report.metrics["classify"].read_text())
    assert metrics["tile"]["classes"] == ["alpha", "beta"]
    assert (out / "eval" / "classify" / "confusion_tile.png").is_file()
    assert any(line.startswith("[train vae]") for line in lines)
    summary = report.summary()
    for p in (ckpt, report.predictions["vae"], out / "geojson" / "alpha.geojson", report.metrics["classify"]):
        assert str(p) in summary


def test_second_run_skips_complete_steps(demo_run, slides):
    from wsi_lab.demo import run_demo
    from wsi_lab.demo_ml import MLSettings

    out, first, _ = demo_run
    ckpt = first.checkpoints["vae"]
    before = ckpt.stat().st_mtime_ns
    lines: list[str] = []
    report = run_demo(slides, out, workers=1, settings=MLSettings(**TINY), say=lines.append)
    assert ckpt.stat().st_mtime_ns == before
    assert sum("is complete for this spec" in line for line in lines) == 2, lines
    assert not report.failed and report.geojson.keys() == first.geojson.keys()
    # other tiles (a smaller sample), another model: another spec hash, so the demo's folder trains afresh
    lines.clear()
    report = run_demo(slides, out, workers=1, settings=MLSettings(**{**TINY, "epochs": 2, "classifier": False,
                                                                       "max_tiles_per_slide": 12, "latent_dim": 4}),
                      say=lines.append)
    assert any("training it afresh" in line for line in lines), lines
    assert not any("is complete" in line for line in lines) and ckpt.stat().st_mtime_ns != before
    assert not report.failed, report.failed
    from wsi_lab.infer import read_predictions

    preds = read_predictions(report.predictions["vae"])
    assert len([c for c in preds.columns if c.startswith("z_")]) == 4 and len(preds) <= 24


def test_without_torch_the_model_steps_are_skipped_with_the_install_command(slides, tmp_path):
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.modules["torch"] = None; sys.modules["torchvision"] = None   # as if not installed
        sys.argv = ["wsi-lab", "demo", "--slides", {str(slides[0].parent)!r}, "--out", {str(tmp_path)!r},
                    "--workers", "1"]
        runpy.run_module("wsi_lab.cli", run_name="__main__")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "pip install 'wsi-lab[train]'" in res.stdout and "scripts/setup.sh" in res.stdout
    assert (tmp_path / "tiles" / "alpha" / "tiles.parquet").is_file()
    assert not (tmp_path / "train" / "vae").exists()
