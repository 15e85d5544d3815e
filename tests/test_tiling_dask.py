"""run_tiling on a real Dask LocalCluster: outputs, re-runs, failures, a killed worker, cancel, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import wsi_lab
from tests.conftest import REPO
from wsi_lab.data.table import read_table
from wsi_lab.tiling import TilingParams, TwoStage, apply_fine_pass, plan_tiles

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from wsi_lab.testing import make_slide

    d = tmp_path_factory.mktemp("dask-syn")
    return make_slide(d / "syn-a.svs", 8192, 6144, mpp=0.25, tissue_fraction=0.45, seed=5)


def _events():
    events = []
    return events, events.append


def test_batch_with_corrupt_slide_in_the_middle(client, tmp_path, cmu_path, ndpi_path, ome_path):
    from wsi_lab.testing import make_corrupt_copies

    bad = make_corrupt_copies(cmu_path, tmp_path / "bad")
    params = TilingParams(tile_size=256, mpp=0.5, method="otsu", min_tissue=0.5)
    events, cb = _events()
    out = tmp_path / "out"
    res = wsi_lab.run_tiling([cmu_path, bad["corrupt"], ndpi_path, bad["text"], ome_path], params, client=client, out=out,
                             progress=cb)
    assert set(res.tables) == {"CMU-1-Small-Region", "test3-DAPI-2-387", "OS-1-detail"}
    assert set(res.failed) == {"corrupt", "notes"}
    assert all(("Error" in m and len(m) > 20) for m in res.failed.values())
    assert "FAILED corrupt" in res.summary() and not res.ok
    # each written table is exactly the in-process plan
    for sid, path in res.tables.items():
        t = read_table(path)
        src = {"CMU-1-Small-Region": cmu_path, "test3-DAPI-2-387": ndpi_path, "OS-1-detail": ome_path}[sid]
        ref = plan_tiles(src, 256, mpp=0.5, mask="otsu", min_tissue=0.5)
        assert t[["x", "y"]].reset_index(drop=True).equals(ref[["x", "y"]].reset_index(drop=True))
        assert t.attrs["wsi_lab"]["tiling_params"]["mpp"] == 0.5
        assert t.attrs["wsi_lab"]["slide_path"] == str(src)
        m = json.loads((out / sid / "manifest.json").read_text())
        assert m["n_tiles"] == len(t) and (out / sid / "mask.png").exists()
    assert not (out / "corrupt" / "manifest.json").exists()
    last = events[-1]
    assert last.finished and last.done == 5 and last.failed == 2 and last.tiles == res.total_tiles
    assert any(e.dashboard and e.dashboard.startswith("http://127.0.0.1") for e in events)
    assert res.dashboard_link.startswith("http://127.0.0.1")

    # re-run: complete slides are skipped without touching them; the failed ones are tried again
    mtime = (out / "CMU-1-Small-Region" / "tiles.parquet").stat().st_mtime_ns
    res2 = wsi_lab.run_tiling([cmu_path, bad["corrupt"], ndpi_path, ome_path], params, client=client, out=out)
    assert sorted(res2.skipped) == sorted(res.tables) and set(res2.failed) == {"corrupt"}
    assert (out / "CMU-1-Small-Region" / "tiles.parquet").stat().st_mtime_ns == mtime
    assert res2.table().shape[0] == res.total_tiles
    # a damaged table or changed parameters make the slide run again
    (out / "OS-1-detail" / "tiles.parquet").write_bytes(b"garbage")
    res3 = wsi_lab.run_tiling([cmu_path, ome_path], params, client=client, out=out)
    assert res3.skipped == ["CMU-1-Small-Region"] and "OS-1-detail" in res3.tables
    assert len(read_table(out / "OS-1-detail" / "tiles.parquet")) == res.n_tiles["OS-1-detail"]
    res4 = wsi_lab.run_tiling([cmu_path], TilingParams(tile_size=128, mpp=0.5), client=client, out=out)
    assert res4.skipped == [] and (read_table(res4.tables["CMU-1-Small-Region"]).tile_size == 128).all()


def test_two_stage_jpeg_and_overrides(client, tmp_path, cmu_path, ome_path):
    params = TilingParams(tile_size=256, mpp=0.5, two_stage=TwoStage(256, 64), min_tissue=0.5)
    overrides = {"OS-1-detail": TilingParams(tile_size=128, mpp=0.5, method="variance", min_tissue=0.5)}
    res = wsi_lab.run_tiling([cmu_path, ome_path], params, client=client, out=tmp_path, materialize="jpeg",
                             overrides=overrides, chunk_tiles=8)
    assert res.ok, res.summary()
    t = read_table(res.tables["CMU-1-Small-Region"])
    with wsi_lab.open_slide(cmu_path) as s:
        ref = apply_fine_pass(s, plan_tiles(s, 256, mpp=0.5, two_stage=params.two_stage, min_tissue=0.5))
    assert t[["x", "y"]].equals(ref[["x", "y"]]) and np.allclose(t.tissue_fraction, ref.tissue_fraction)
    jpgs = sorted(p.name for p in (tmp_path / "CMU-1-Small-Region" / "tiles").glob("*.jpg"))
    assert jpgs == sorted(f"{x}_{y}.jpg" for x, y in zip(t.x, t.y))
    from PIL import Image

    with Image.open(tmp_path / "CMU-1-Small-Region" / "tiles" / jpgs[0]) as im:
        assert im.size == (256, 256)
    assert (read_table(res.tables["OS-1-detail"]).tile_size == 128).all()
    assert res.tiles_read >= len(t)


def test_killed_worker_neither_loses_nor_duplicates_tiles(client, synthetic, tmp_path):
    params = TilingParams(tile_size=256, mpp=0.25, two_stage=TwoStage(256, 64), min_tissue=0.5)
    with wsi_lab.open_slide(synthetic) as s:
        cand = plan_tiles(s, 256, mpp=0.25, two_stage=params.two_stage, min_tissue=0.5)
        ref = apply_fine_pass(s, cand)
    assert len(cand) > 150
    started = threading.Event()

    def cb(ev):
        if ev.tiles > 0:
            started.set()

    job = wsi_lab.start_tiling([synthetic], params, client=client, out=tmp_path, materialize="jpeg",
                               progress=cb, chunk_tiles=6)
    assert started.wait(60)
    assert not job.done()  # the worker dies mid-run
    pids = client.run(os.getpid)
    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    res = job.result(timeout=120)
    assert res.ok, res.summary()
    t = read_table(res.tables["syn-a"])
    assert not t.duplicated(["x", "y"]).any()
    assert t[["x", "y"]].equals(ref[["x", "y"]])
    files = sorted(p.name for p in (tmp_path / "syn-a" / "tiles").iterdir())
    assert files == sorted(f"{x}_{y}.jpg" for x, y in zip(t.x, t.y))  # no temp or stale files either
    client.wait_for_workers(2, timeout=60)


def test_cancel_keeps_finished_slides(client, synthetic, tmp_path, cmu_path):
    copies = []
    for i in range(3):
        p = tmp_path / f"copy-{i}.svs"
        shutil.copy(synthetic, p)
        copies.append(p)
    params = TilingParams(tile_size=256, mpp=0.25, two_stage=TwoStage(256, 64))
    cancel = threading.Event()

    def cb(ev):
        if ev.tiles > 0:
            cancel.set()

    res = wsi_lab.run_tiling([cmu_path, *copies], params, client=client, out=tmp_path / "out", materialize="jpeg",
                             progress=cb, cancel=cancel, chunk_tiles=4)
    assert res.cancelled and not res.ok
    assert len(res.tables) < 4
    for sid in ("copy-0", "copy-1", "copy-2", "CMU-1-Small-Region"):
        complete = (tmp_path / "out" / sid / "manifest.json").exists()
        assert complete == (sid in res.tables)


def test_tfrecord_materialize(client, tmp_path, ome_path):
    res = wsi_lab.run_tiling([ome_path], TilingParams(tile_size=128, mpp=0.5), client=client, out=tmp_path,
                             materialize="tfrecord")
    assert res.ok, res.summary()
    assert list((tmp_path / "OS-1-detail" / "tfrecords").rglob("*.tfrecord"))
    m = json.loads((tmp_path / "OS-1-detail" / "manifest.json").read_text())
    assert m["materialize"] == "tfrecord"


def test_bad_arguments_write_nothing(client, tmp_path, cmu_path):
    from wsi_lab.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):
        wsi_lab.run_tiling([cmu_path], TilingParams(tile_size=0), client=client, out=tmp_path / "o")
    with pytest.raises(InvalidParameterError):
        wsi_lab.run_tiling([cmu_path], TilingParams(), client=client, out=tmp_path / "o", materialize="png")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    res = wsi_lab.run_tiling([tmp_path / "missing.svs", cmu_path], TilingParams(tile_size=99999 // 10, mpp=0.5),
                             client=client, out=tmp_path / "o2")
    assert set(res.failed) == {"missing", "CMU-1-Small-Region"}
    assert "larger" in res.failed["CMU-1-Small-Region"] or "only" in res.failed["CMU-1-Small-Region"]


def test_cli_tile_and_tissue(client, tmp_path, cmu_path, ndpi_path, ome_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    addr = client.scheduler.address
    proc = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "tile", str(cmu_path), str(ome_path), "--out", str(tmp_path),
                           "--mpp", "0.5", "--two-stage", "256:64", "--scheduler", addr, "--materialize", "jpeg"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 slide(s) tiled" in proc.stdout
    assert "tiles/s" in proc.stderr and "3/3" not in proc.stderr and "2/2 slides" in proc.stderr
    assert (tmp_path / "CMU-1-Small-Region" / "manifest.json").exists()
    proc = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "tile", str(cmu_path), "--out", str(tmp_path),
                           "--tile-size", "0", "--scheduler", addr], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "tile_size" in proc.stderr and "Traceback" not in proc.stderr
    from wsi_lab.cli import main

    assert main(["tissue", str(ndpi_path), "-o", str(tmp_path / "m.png"), "--method", "variance", "--threshold", "80",
                 "--overlay", str(tmp_path / "o.png")]) == 0
    m = wsi_lab.TissueMask.load(tmp_path / "m.png")
    assert m.params["threshold"] == 80 and (tmp_path / "o.png").exists()
    assert main(["tissue", str(cmu_path), "-o", str(tmp_path / "n.png"), "--method", "variance",
                 "--threshold", "60000"]) == 2


def test_rerun_with_other_parameters_invalidates_the_old_manifest(client, synthetic, tmp_path):
    """A run that rewrites a slide's tiles and stops mid-way must not leave the previous run's manifest
    saying the (now mixed) outputs are complete (regression: the old manifest survived)."""
    a = TilingParams(tile_size=256, mpp=0.25, method="otsu", min_tissue=0.5, jpeg_quality=90)
    res = wsi_lab.run_tiling([synthetic], a, client=client, out=tmp_path, materialize="jpeg", chunk_tiles=64)
    assert res.ok, res.summary()
    sdir = tmp_path / "syn-a"
    assert (sdir / "manifest.json").exists()
    cancel = threading.Event()

    def cb(ev):
        if ev.tiles > 0:
            cancel.set()

    b = TilingParams(tile_size=256, mpp=0.25, method="otsu", min_tissue=0.5, jpeg_quality=30)
    res_b = wsi_lab.run_tiling([synthetic], b, client=client, out=tmp_path, materialize="jpeg", chunk_tiles=4,
                               progress=cb, cancel=cancel)
    assert res_b.cancelled and "syn-a" not in res_b.tables
    assert not (sdir / "manifest.json").exists()
    again = wsi_lab.run_tiling([synthetic], a, client=client, out=tmp_path, materialize="jpeg", chunk_tiles=64)
    assert again.ok and again.skipped == [] and again.n_tiles["syn-a"] == res.n_tiles["syn-a"]


def test_cancel_leaves_no_partial_outputs(synthetic, tmp_path):
    """With its own LocalCluster (shut down before returning) a cancelled slide leaves nothing behind."""
    cancel = threading.Event()

    def cb(ev):
        if ev.tiles > 0:
            cancel.set()

    params = TilingParams(tile_size=256, mpp=0.25, method="otsu", min_tissue=0.5)
    res = wsi_lab.run_tiling([synthetic], params, out=tmp_path / "out", materialize="jpeg", chunk_tiles=4,
                             n_workers=1, progress=cb, cancel=cancel)
    assert res.cancelled and not res.tables
    assert not (tmp_path / "out" / "syn-a").exists(), sorted(map(str, (tmp_path / "out").rglob("*")))
