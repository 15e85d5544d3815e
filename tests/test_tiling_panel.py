"""TilingPanel logic (issue 13: 5, 6, 7; issue 14.11) on generated slides: plan before Start, a wrong
scheduler address, bad inputs, progress per tile chunk on a real LocalCluster."""

from __future__ import annotations

import os
import socket
import time

import pytest

from wsi_lab.tiling import TilingParams, TwoStage
from wsi_lab.tiling.plan import expected_tiles
from wsi_lab.ui.tiling_panel import TilingPanel


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from wsi_lab.testing import make_slide

    d = tmp_path_factory.mktemp("panel")
    return make_slide(d / "panel-a.svs", 4096, 4096, mpp=0.25, tissue_fraction=0.5, seed=3, source="procedural")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    from wsi_lab.testing import make_slide

    d = tmp_path_factory.mktemp("panel-b")
    return make_slide(d / "panel-b.svs", 2048, 1536, mpp=0.5, tissue_fraction=0.4, seed=4, source="procedural")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_scheduler_address_says_so_and_leaves_nothing(slide, tmp_path):
    panel = TilingPanel([slide], TilingParams(tile_size=256), out=tmp_path / "never")
    port = _free_port()
    panel.cluster.value, panel.address.value = "address", f"127.0.0.1:{port}"
    t0 = time.perf_counter()
    assert panel.start() is True
    assert panel.wait(30) is None and not panel.running
    assert time.perf_counter() - t0 < 5
    assert f"cannot reach tcp://127.0.0.1:{port} within 5 s" in panel.errors.text
    assert "Unexpected" not in panel.errors.text and "OSError" not in panel.errors.text
    assert panel.slide_table.value == "" and panel.status.value == ""  # no "connecting" line, no "queued" rows
    assert not (tmp_path / "never").exists()
    assert not panel.start_button.disabled and panel.cancel_button.disabled


@pytest.mark.parametrize("address", [":", "tcp://", "", "http://h:1"])
def test_unusable_addresses_refused_before_starting(slide, tmp_path, address):
    panel = TilingPanel([slide], out=tmp_path / "o")
    panel.cluster.value, panel.address.value = "address", address
    assert panel.start() is False and "scheduler address" in panel.errors.text
    assert "ValueError" not in panel.errors.text and not panel.running and panel.job is None


def test_empty_output_box_refused(slide, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    panel = TilingPanel([slide])
    panel.out.value = "  "
    assert panel.start() is False and "Output box is empty" in panel.errors.text
    assert list(tmp_path.iterdir()) == []


def test_more_workers_than_cores_is_flagged():
    panel = TilingPanel([])
    panel.n_workers.value = (os.cpu_count() or 1) + 2
    assert "compete for the cores" in panel.workers_warning()
    panel.n_workers.value = 1
    assert panel.workers_warning() is None


def test_plan_shows_slides_settings_and_expected_tiles(slide, other, tmp_path):
    base = TilingParams(tile_size=256, mpp=0.5, method="otsu", min_tissue=0.5)
    own = TilingParams(tile_size=128, mpp=1.0, method="variance", method_params={"threshold": 80.0})
    panel = TilingPanel([slide, other], base, out=tmp_path, overrides={"panel-b": own})
    assert panel.show_plan(count=True)
    deadline = time.time() + 60
    while "counting…" in panel.plan.value and time.time() < deadline:
        time.sleep(0.1)
    text = panel.plan.value
    assert "panel-a" in text and "panel-b" in text and "override" in text and "defaults" in text
    assert "tile px" in text and "µm/px" in text and "variance" in text and "80.0" in text
    assert f"{expected_tiles(slide, base):,}" in text and f"{expected_tiles(other, own):,}" in text
    # counts the caller already knows (the tuner's) are used as they are
    panel = TilingPanel([slide], base, out=tmp_path, expected=lambda: {"panel-a": 1234})
    panel.show_plan(count=False)
    assert "1,234" in panel.plan.value and "counting" not in panel.plan.value


@pytest.mark.slow
def test_progress_moves_per_tile_chunk(slide, tmp_path):
    params = TilingParams(tile_size=128, mpp=0.25, two_stage=TwoStage(128, 32), min_tissue=0.5)
    panel = TilingPanel([slide], params, out=tmp_path / "t", n_workers=1)
    assert panel.start() is True
    result = panel.wait(240)
    assert result is not None and result.ok, panel.errors.text
    during = [e for e in panel.events if not e.finished and e.done == 0 and e.metrics.get("tiles_expected")]
    fractions = [e.fraction for e in during]
    assert len({round(f, 3) for f in fractions if 0 < f < 1}) >= 2, fractions  # moves before the slide is done
    done = [e.metrics.get("tiles_done", 0) for e in during]
    assert done == sorted(done) and done[-1] > 0 and during[-1].metrics["tiles_expected"] >= 256
    assert any(e.eta_s is not None and e.eta_s > 0 for e in during)
    assert "panel-a" in panel.slide_table.value and "done: " in panel.slide_table.value
    assert panel.progress.value == 1.0
