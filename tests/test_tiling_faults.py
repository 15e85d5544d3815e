"""Tiling under faults and bad input (issue 14: 3, 5, 8, 9, 11; issue 13.5), on generated slides and a
real Dask LocalCluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wsi_lab
from wsi_lab.data.table import read_table
from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs.executors import SchedulerUnreachableError, TooManyWorkersWarning
from wsi_lab.tiling import TilingParams, plan_tiles

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from wsi_lab.testing import make_slide

    d = tmp_path_factory.mktemp("faults")
    a = make_slide(d / "good-a.svs", 2048, 1536, mpp=0.5, tissue_fraction=0.5, seed=1, source="procedural")
    b = make_slide(d / "good-b.svs", 2048, 1536, mpp=0.5, tissue_fraction=0.5, seed=2, source="procedural")
    return a, b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "wsi_lab.cli", *args], capture_output=True, env=env, timeout=timeout,
                          check=False)


PARAMS = TilingParams(tile_size=256, mpp=0.5, method="otsu", min_tissue=0.5)


# 14.3 ---------------------------------------------------------------------------------------------------------
def test_non_utf8_file_name_fails_alone(client, slides, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for s in slides:
        shutil.copy(s, folder / s.name)
    odd = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9-slide.svs"))
    shutil.copy(slides[0], odd)
    res = wsi_lab.run_tiling(folder, PARAMS, client=client, out=tmp_path / "out")
    assert set(res.tables) == {"good-a", "good-b"}, res.summary()
    assert len(res.failures) == 1 and "UTF-8" in res.failures[0].message
    assert res.failures[0].error_type == "DataError" and "\ufffd" in res.failures[0].item
    res.summary().encode("utf-8")  # printable
    # and through the CLI: that one slide reported, the others tiled, exit 1, no traceback
    proc = _cli("tile", str(folder), "--out", str(tmp_path / "cli"), "--mpp", "0.5", "--scheduler",
                client.scheduler.address, "-q")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "2 slide(s) tiled" in out and "1 failed" in out and "UTF-8" in out
    assert "Traceback" not in err and "Traceback" not in out


# 14.8 ---------------------------------------------------------------------------------------------------------
def test_corrupt_slide_is_one_line_and_not_retried(slides, tmp_path):
    from wsi_lab.testing import make_corrupt_copies

    bad = make_corrupt_copies(slides[0], tmp_path / "bad")
    proc = _cli("tile", str(slides[1]), str(bad["corrupt"]), str(bad["text"]), "--out", str(tmp_path / "o"),
                "--mpp", "0.5", "--two-stage", "256:64", "--workers", "1")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1
    assert "Compute Failed" not in err and "Traceback" not in err, err
    failed_lines = [line for line in out.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed_lines) == 2 and all("corrupt" in line or "notes" in line for line in failed_lines), out


def test_task_errors_are_values_and_keys_are_hashes(client, slides, tmp_path):
    from wsi_lab.testing import make_corrupt_copies

    bad = make_corrupt_copies(slides[0], tmp_path / "bad")
    keys: list[str] = []

    def record(ev):
        keys.extend(k for k in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)))

    res = wsi_lab.run_tiling([bad["corrupt"]], TilingParams(tile_size=256, mpp=0.5, method=None), client=client,
                             out=tmp_path / "o", materialize="jpeg", chunk_tiles=4, progress=record)
    assert [f.item for f in res.failures] == ["corrupt"] and res.failures[0].error_type.endswith("Error")
    assert keys and all("corrupt" not in k for k in map(str, keys))
    assert not (tmp_path / "o" / "corrupt").exists()


# 14.9 ---------------------------------------------------------------------------------------------------------
def test_resume_checks_contents_and_cleans_orphans(client, slides, tmp_path):
    out = tmp_path / "out"
    res = wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out, materialize="jpeg")
    assert res.ok, res.summary()
    tiles = sorted((out / "good-a" / "tiles").glob("*.jpg"))
    assert len(tiles) == res.n_tiles["good-a"] > 3
    # a truncated JPEG is not complete
    tiles[0].write_bytes(tiles[0].read_bytes()[:100])
    again = wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out, materialize="jpeg")
    assert again.skipped == [] and tiles[0].stat().st_size > 100
    # a missing tile replaced by a junk file of the same name and size is not complete either
    size = tiles[1].stat().st_size
    tiles[1].write_bytes(b"\0" * size)
    again = wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out, materialize="jpeg")
    assert again.skipped == [] and tiles[1].read_bytes()[:2] == b"\xff\xd8"
    # orphans and a .part file beside a complete manifest are removed on the next run
    (out / "good-a" / "tiles" / "99999_99999.jpg").write_bytes(b"orphan")
    (out / "good-a" / "tiles" / ".1_1.jpg.x.part").write_bytes(b"half")
    again = wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out, materialize="jpeg")
    assert again.skipped == ["good-a"]
    assert sorted((out / "good-a" / "tiles").iterdir()) == tiles
    # a re-run without JPEGs leaves none of the old ones beside its manifest
    table_only = wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out)
    assert table_only.ok and not (out / "good-a" / "tiles").exists()
    assert sorted(p.name for p in (out / "good-a").iterdir()) == ["manifest.json", "mask.png", "tiles.parquet"]
    assert len(read_table(out / "good-a" / "tiles.parquet")) == res.n_tiles["good-a"]


# 14.5 ---------------------------------------------------------------------------------------------------------
def test_grid_cap_refuses_before_allocating(slides):
    with wsi_lab.open_slide(slides[0]) as s:
        t0 = time.perf_counter()
        with pytest.raises(InvalidParameterError, match=r"more than the cap of 1,000") as err:
            plan_tiles(s, 16, max_grid_tiles=1000)
        assert "tile_size" in str(err.value) and time.perf_counter() - t0 < 1
        assert len(plan_tiles(s, 16, max_grid_tiles=20_000, mask=None)) == (2048 // 16) * (1536 // 16)
    from wsi_lab.tiling.grid import MAX_GRID_TILES

    assert 4_000_000 <= MAX_GRID_TILES <= 6_000_000


# 14.11, 13.5 --------------------------------------------------------------------------------------------------
def test_empty_folder_warns_and_cli_exits_non_zero(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level("WARNING", logger="wsi_lab.tiling"):
        res = wsi_lab.run_tiling(tmp_path / "empty", PARAMS, out=tmp_path / "out")
    assert any("no slides to tile" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert not res.ok and res.no_slides and "no slides" in res.summary()
    assert not (tmp_path / "out").exists()
    proc = _cli("tile", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and b"no slides to tile" in proc.stdout and b"Traceback" not in proc.stderr


def test_more_workers_than_cores_warns(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.warns(TooManyWorkersWarning, match="core"):
        wsi_lab.run_tiling(tmp_path / "empty", PARAMS, out=tmp_path / "o", n_workers=(os.cpu_count() or 1) + 4)


def test_wrong_scheduler_address_fails_fast_and_writes_nothing(client, slides, tmp_path):
    out = tmp_path / "out"
    assert wsi_lab.run_tiling([slides[0]], PARAMS, client=client, out=out).ok
    port = _free_port()
    for target in (out, tmp_path / "fresh"):  # complete outputs do not hide a wrong address
        t0 = time.perf_counter()
        with pytest.raises(SchedulerUnreachableError, match=rf"cannot reach tcp://127.0.0.1:{port} within 5 s"):
            wsi_lab.run_tiling([slides[0]], PARAMS, client=f"127.0.0.1:{port}", out=target)
        assert time.perf_counter() - t0 < 4
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(InvalidParameterError, match="scheduler address"):
        wsi_lab.run_tiling([slides[0]], PARAMS, client="tcp://", out=tmp_path / "fresh")


# issue 7: "reopen with the user's µm/px" leaks nothing --------------------------------------------------------
def test_plan_with_slide_mpp_leaks_no_file_handles(tmp_path):
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "nompp.svs", 1024, 768, mpp=None, source="procedural")

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    plan_tiles(p, 128, mpp=1.0, slide_mpp=0.5)
    before = fds()
    for _ in range(5):
        plan_tiles(p, 128, mpp=1.0, slide_mpp=0.5)
        with wsi_lab.open_slide(p) as s:
            plan_tiles(s, 128, mpp=1.0, slide_mpp=0.5)
    assert fds() == before


def test_if_no_mpp_level0_policy(client, tmp_path):
    from wsi_lab.errors import MissingMPPError  # noqa: F401  (the failure the policy avoids)
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "nompp.svs", 1024, 768, mpp=None, source="procedural")
    res = wsi_lab.run_tiling([p], TilingParams(mpp=0.5, method=None), client=client, out=tmp_path / "a")
    assert [f.error_type for f in res.failures] == ["MissingMPPError"]
    res = wsi_lab.run_tiling([p], TilingParams(mpp=0.5, method=None), client=client, out=tmp_path / "b",
                             if_no_mpp="level0")
    assert res.ok and (read_table(res.tables["nompp"]).level == 0).all()
