"""JPEG passthrough: an output tile that is exactly one source tile is the slide's own JPEG bytes
(merged with the level's JPEGTables), decoding to exactly the pixels read_region returns; every other
tile goes through decode → resize → encode. Real slides (CMU-1 Aperio with JPEGTables and RGB samples;
generated SVS with JFIF 4:2:0 tiles; a YCbCr-subsampled TIFF with JPEGTables)."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import wsi_lab
from tests.conftest import CMU
from wsi_lab.data.export_jpeg import export_jpeg
from wsi_lab.data.export_tfrecord import export_tfrecord
from wsi_lab.data.extract import TileCoder, write_atomic
from wsi_lab.data.table import read_table
from wsi_lab.data.tfrecord import read_examples
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.slide import open_slide, raw_tiles
from wsi_lab.slide.raw_tiles import estimate_jpeg_quality, passthrough_jpeg, raw_level
from wsi_lab.tiling import TilingParams


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _source_scan(slide, x: int, y: int, level: int = 0) -> bytes:
    """The entropy-coded part of the source tile at level-0 (x, y): what a passed-through file must hold."""
    rl = raw_level(slide, level)
    ds = slide.level_downsamples[level]
    raw = rl.raw(rl.index_at(int(x // ds), int(y // ds), rl.tile_width, rl.tile_height))
    sos = [s for m, s, _e in raw_tiles.jpeg_segments(raw) if m == 0xDA][0]
    return raw[sos:]


def _grid_table(slide, sid: str, step: int, size: int, read: int | None = None, offset: int = 0,
                level: int = 0) -> pd.DataFrame:
    w, h = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    read = read or size
    xs, ys = np.meshgrid(np.arange(offset, w, step), np.arange(offset, h, step))
    t = pd.DataFrame({"slide_id": sid, "x": (xs.ravel() * ds).astype(int), "y": (ys.ravel() * ds).astype(int),
                      "level": level, "read_size": read, "tile_size": size})
    t.attrs["wsi_lab"] = {"slides": {sid: {"path": str(slide.path)}}}
    return t


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from wsi_lab.testing import make_slide

    d = tmp_path_factory.mktemp("passthrough")
    # 2,000 x 1,500: the last tile column (208 px) and row (220 px) are partial
    return make_slide(d / "syn-p.svs", 2000, 1500, tile=256, mpp=0.25, tissue_fraction=0.6, seed=3, quality=80)


@pytest.fixture(scope="module")
def ycbcr_tiff(tmp_path_factory):
    """A tiled YCbCr 4:2:0 JPEG TIFF laid out like a recent Aperio scanner's: abbreviated tile streams
    (no JFIF marker, no tables) and one shared JPEGTables tag."""
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(7)
    base = rng.integers(60, 230, (48, 64, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((1024, 768), Image.Resampling.BICUBIC))
    tables, tiles = None, []
    for ty in range(3):
        for tx in range(4):
            full = bytes(imagecodecs.jpeg8_encode(img[ty * 256:(ty + 1) * 256, tx * 256:(tx + 1) * 256], level=85))
            segs = raw_tiles.jpeg_segments(full)
            shared = b"".join(full[s:e] for m, s, e in segs if m in (0xDB, 0xC4))
            tables = tables or b"\xff\xd8" + shared + b"\xff\xd9"
            assert b"\xff\xd8" + shared + b"\xff\xd9" == tables  # the same tables for every tile
            sos = segs[-1][1]
            tiles.append(b"\xff\xd8" + b"".join(full[s:e] for m, s, e in segs if m in (0xC0, 0xDD)) + full[sos:])
    p = tmp_path_factory.mktemp("ycc") / "ycc.tif"
    tifffile.imwrite(p, data=iter(tiles), shape=(768, 1024, 3), dtype=np.uint8, tile=(256, 256), compression="jpeg",
                     photometric="ycbcr", subsampling=(2, 2), metadata=None,
                     extratags=[(347, 7, len(tables), tables, True)])
    return p


def test_cmu_aperio_rgb_tiles_pass_through_exactly(tmp_path):
    """Aperio: abbreviated streams + JPEGTables, RGB samples without JFIF (an Adobe marker is added)."""
    with open_slide(CMU) as s:
        rl = raw_level(s, 0)
        assert rl.tables and rl.colorspace == 2 and rl.source_quality() == 30  # "Q=30" in its description
        table = _grid_table(s, "cmu", 240, 240)
        out = export_jpeg(table, tmp_path / "e", quality=90, workers=2)
        w, h = s.dimensions
        full = (out.x + 240 <= w) & (out.y + 240 <= h)
        assert full.sum() == 108 and (~full).sum() == 22
        for row in out.itertuples():
            data = (tmp_path / "e" / row.file).read_bytes()
            ref = s.read_region((row.x, row.y), 0, (240, 240))
            if full[row.Index]:
                assert data.endswith(_source_scan(s, row.x, row.y))  # the slide's own bytes
                assert np.array_equal(_decode(data), ref)
            else:  # partial at the image edge: decoded, padded white, re-encoded at Q90
                assert estimate_jpeg_quality(data) == 90
                assert np.abs(_decode(data).astype(int) - ref).mean() < 8
    assert out.attrs["wsi_lab"]["export_jpeg"]["passed_through"] == 108


def test_tiling_jpeg_folder_passes_through_and_decodes_to_read_region(syn, tmp_path):
    res = wsi_lab.run_tiling(syn, TilingParams(tile_size=256, level=0, method=None), out=tmp_path, n_workers=1,
                             materialize="jpeg")
    assert res.ok, res.summary()
    t = read_table(res.tables["syn-p"])
    assert len(t) == 35  # the grid holds whole tiles only (7 x 5); partial ones: the CMU export test
    passed = 0
    with open_slide(syn) as s:
        for row in t.itertuples():
            data = (tmp_path / "syn-p" / "tiles" / f"{row.x}_{row.y}.jpg").read_bytes()
            assert data.endswith(_source_scan(s, row.x, row.y))
            assert np.array_equal(_decode(data), s.read_region((row.x, row.y), 0, (256, 256)))
            passed += 1
    assert passed == 35  # 7 x 5 whole tiles


def test_ycbcr_subsampled_tiles_with_tables_pass_through_exactly(ycbcr_tiff, tmp_path):
    with open_slide(ycbcr_tiff, backend="tifffile") as s:
        rl = raw_level(s, 0)
        assert rl is not None and rl.tables and rl.colorspace is None and rl.source_quality() == 85
        sof = next(seg for seg in raw_tiles.jpeg_segments(rl.raw(0)) if seg[0] == 0xC0)
        assert rl.raw(0)[sof[1] + 11] == 0x22  # luma sampled 2x2: chroma 4:2:0
        t = _grid_table(s, "ycc", 256, 256)
        out = export_jpeg(t, tmp_path, workers=1, slide_paths={"ycc": str(ycbcr_tiff)}, backend="tifffile")
        assert out.attrs["wsi_lab"]["export_jpeg"]["passed_through"] == 12
        for row in out.itertuples():
            data = (tmp_path / row.file).read_bytes()
            assert data.endswith(_source_scan(s, row.x, row.y))
            assert np.array_equal(_decode(data), s.read_region((row.x, row.y), 0, (256, 256)))


@pytest.mark.parametrize("case", ["offset", "smaller", "resize", "level1"])
def test_non_aligned_tiles_are_decoded_resized_and_encoded(syn, tmp_path, case):
    with open_slide(syn) as s:
        t = {"offset": lambda: _grid_table(s, "syn-p", 256, 256, offset=64),
             "smaller": lambda: _grid_table(s, "syn-p", 256, 224),
             "resize": lambda: _grid_table(s, "syn-p", 512, 256, read=512),
             "level1": lambda: _grid_table(s, "syn-p", 128, 128, level=1)}[case]()
        t = t[(t.x + t.read_size * s.level_downsamples[int(t.level.iloc[0])] <= 2000)
              & (t.y + t.read_size * s.level_downsamples[int(t.level.iloc[0])] <= 1500)]
        out = export_jpeg(t, tmp_path, quality=85, workers=2)
        assert out.attrs["wsi_lab"]["export_jpeg"]["passed_through"] == 0
        for row in out.itertuples():
            data = (tmp_path / row.file).read_bytes()
            assert estimate_jpeg_quality(data) == 85
            ref = read_tile(s, row.x, row.y, row.level, row.read_size, row.tile_size)
            img = _decode(data)
            assert img.shape == ref.shape == (row.tile_size, row.tile_size, 3)
            assert np.abs(img.astype(int) - ref).mean() < 8


def test_quality_and_switch_decide_reencoding(syn, tmp_path):
    with open_slide(syn) as s:
        rl = raw_level(s, 0)
        assert rl.source_quality() == 80
        whole = [i for i in range(len(rl.counts)) if i % rl.across < 7 and i // rl.across < 5]
        i = max(whole, key=lambda k: rl.counts[k])  # a tissue tile (the largest)
        x, y = (i % rl.across) * 256, (i // rl.across) * 256
        row = dict(x=x, y=y, level=0, read_size=256, tile_size=256)
        same, passed = TileCoder(80).jpeg(s, **row)
        assert passed and same.endswith(_source_scan(s, x, y))  # asking no less than the source: lossless
        assert TileCoder(100).jpeg(s, **row)[1]
        smaller, passed = TileCoder(50).jpeg(s, **row)  # smaller files asked: re-encode
        assert not passed and estimate_jpeg_quality(smaller) == 50 and len(smaller) < len(same)
        forced, passed = TileCoder(90, passthrough=False).jpeg(s, **row)
        assert not passed and estimate_jpeg_quality(forced) == 90
    t = _grid_table(s, "syn-p", 256, 256).head(6)
    out = export_jpeg(t, tmp_path / "np", passthrough=False, workers=1)
    assert out.attrs["wsi_lab"]["export_jpeg"]["passed_through"] == 0


def test_other_backends_and_failed_check_fall_back_to_decode(syn, tmp_path, monkeypatch):
    row = dict(x=256, y=256, level=0, read_size=256, tile_size=256)
    pytest.importorskip("openslide")
    with open_slide(syn, backend="openslide") as s:
        assert raw_level(s, 0) is None and passthrough_jpeg(s, **row) is None
        data, passed = TileCoder(90).jpeg(s, **row)
        assert not passed and np.abs(_decode(data).astype(int) - s.read_region((256, 256), 0, (256, 256))).mean() < 8
    # a stand-alone decode that differs from the reader's pixels is never passed through
    monkeypatch.setattr(raw_tiles, "_decodes_alike", lambda jpeg, expected: False)
    with open_slide(syn, backend="tifffile") as s:
        assert passthrough_jpeg(s, **row) is None
        assert not TileCoder(90).jpeg(s, **row)[1]


def test_grayscale_and_non_jpeg_levels_have_no_raw_access(tmp_path):
    import tifffile

    gray = (np.random.default_rng(1).random((512, 512)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", gray, tile=(256, 256), compression="jpeg", metadata=None)
    rgb = np.dstack([gray] * 3)
    tifffile.imwrite(tmp_path / "z.tif", rgb, tile=(256, 256), compression="zlib", photometric="rgb", metadata=None)
    for name in ("g.tif", "z.tif"):
        with open_slide(tmp_path / name, backend="tifffile") as s:
            assert raw_level(s, 0) is None
            assert passthrough_jpeg(s, 0, 0, 0, 256, 256) is None
            data, passed = TileCoder(95).jpeg(s, 0, 0, 0, 256, 256)
            assert not passed and np.abs(_decode(data).astype(int) - s.read_region((0, 0), 0, (256, 256))).mean() < 8


def test_tfrecord_jpeg_schema_carries_source_bytes_and_raw_schema_exact_pixels(syn, tmp_path):
    with open_slide(syn) as s:
        t = _grid_table(s, "syn-p", 256, 256)
        t = t[(t.x + 256 <= 2000) & (t.y + 256 <= 1500)].reset_index(drop=True)
        export_tfrecord(t, tmp_path / "j", shards=2, variant="jpeg", workers=2)
        export_tfrecord(t, tmp_path / "r", shards=2, variant="raw", workers=2)
        seen = 0
        for shard in sorted((tmp_path / "j").rglob("*.tfrecord")):
            for ex in read_examples(shard):
                x, y = ex["x"][0], ex["y"][0]
                data = ex["image/encoded"][0]
                assert data.endswith(_source_scan(s, x, y))
                assert np.array_equal(_decode(data), s.read_region((x, y), 0, (256, 256)))
                seen += 1
        for shard in sorted((tmp_path / "r").rglob("*.tfrecord")):
            for ex in read_examples(shard):
                x, y = ex["x"][0], ex["y"][0]
                arr = np.frombuffer(ex["image_raw"][0], np.uint8).reshape(256, 256, 3)
                assert np.array_equal(arr, s.read_region((x, y), 0, (256, 256)))
                seen += 1
    assert seen == 2 * len(t) == 70


def test_write_atomic_leaves_target_or_nothing(tmp_path):
    target = tmp_path / "a.jpg"
    write_atomic(target, b"first")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]  # no temp file left


def test_export_resumes_and_removes_temp_files_of_a_killed_writer(syn, tmp_path):
    with open_slide(syn) as s:
        t = _grid_table(s, "syn-p", 256, 256).head(10)
    out = export_jpeg(t, tmp_path, workers=2)
    first = {f: (tmp_path / f).stat().st_mtime_ns for f in out.file}
    stale = tmp_path / f".{out.file[0]}.999-1.part"
    stale.write_bytes(b"half a jpeg")
    (tmp_path / out.file[1]).write_bytes(b"\xff\xd8 truncated")  # not a complete JPEG: written again
    again = export_jpeg(t, tmp_path, workers=2)
    meta = again.attrs["wsi_lab"]["export_jpeg"]
    assert (meta["written"], meta["skipped"]) == (1, 9)
    assert not stale.exists()
    assert all((tmp_path / f).stat().st_mtime_ns == first[f] for f in out.file if f != out.file[1])


def test_tfrecord_export_memory_is_bounded(syn, tmp_path):
    """Records are built in a window of ~workers x 32: the peak stays far below the data written."""
    import tracemalloc

    with open_slide(syn) as s:
        t = _grid_table(s, "syn-p", 256, 256)
    t = pd.concat([t] * 12, ignore_index=True)  # 576 raw tiles = 113 MB of records
    t.attrs["wsi_lab"] = {"slides": {"syn-p": {"path": str(syn)}}}
    tracemalloc.start()
    try:
        m = export_tfrecord(t, tmp_path, shards=1, variant="raw", workers=2)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m["bytes"] > 100e6
    assert peak < 40e6, peak


@pytest.mark.slow
def test_killed_worker_loses_no_passthrough_tile(syn, tmp_path):
    from distributed import Client, LocalCluster

    from wsi_lab.testing import make_slide

    big = make_slide(tmp_path / "big.svs", 6144, 4096, tile=256, mpp=0.25, tissue_fraction=0.7, seed=4)
    params = TilingParams(tile_size=256, level=0, method=None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        started = threading.Event()
        job = wsi_lab.start_tiling([big], params, client=client, out=tmp_path / "o", materialize="jpeg",
                                   progress=lambda ev: ev.tiles > 0 and started.set(), chunk_tiles=8)
        assert started.wait(60)
        os.kill(sorted(client.run(os.getpid).values())[0], signal.SIGKILL)
        res = job.result(timeout=180)
    assert res.ok, res.summary()
    t = read_table(res.tables["big"])
    assert len(t) == 24 * 16 and not t.duplicated(["x", "y"]).any()
    folder = tmp_path / "o" / "big" / "tiles"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{x}_{y}.jpg" for x, y in zip(t.x, t.y))
    with open_slide(big) as s:
        for row in t.sample(40, random_state=0).itertuples():
            data = (folder / f"{row.x}_{row.y}.jpg").read_bytes()
            assert np.array_equal(_decode(data), s.read_region((row.x, row.y), 0, (256, 256)))


def test_cli_export_passes_through_unless_reencode(syn, tmp_path, capsys):
    from wsi_lab.cli import main
    from wsi_lab.data.table import write_table

    with open_slide(syn) as s:
        t = _grid_table(s, "syn-p", 256, 256).head(5)
    t["patient_id"], t["mpp"], t["tissue_fraction"] = "p", 0.25, 1.0
    t.attrs["wsi_lab"] = {"slide_id": "syn-p", "slide_path": str(syn)}
    table = write_table(t, tmp_path / "t.parquet")
    assert main(["export", str(table), "--format", "jpeg", "--out", str(tmp_path / "a"), "-q"]) == 0
    assert "5 of them the slide's own JPEG tiles" in capsys.readouterr().out
    assert main(["export", str(table), "--format", "jpeg", "--out", str(tmp_path / "b"), "--reencode", "-q"]) == 0
    assert "(0 of them" in capsys.readouterr().out
    f = sorted((tmp_path / "b").rglob("*.jpg"))[0]
    assert estimate_jpeg_quality(f.read_bytes()) == 90


def test_toggling_passthrough_makes_a_jpeg_folder_incomplete(syn, tmp_path, monkeypatch):
    """``WSI_LAB_JPEG_PASSTHROUGH`` is part of what a re-run compares: a folder written with passthrough is
    tiled again (re-encoded) when it is switched off, and the other way round; an unchanged setting skips."""
    from distributed import Client, LocalCluster

    params = TilingParams(tile_size=256, level=0, method=None)
    tile = tmp_path / "syn-p" / "tiles" / "256_256.jpg"

    def run() -> tuple[list[str], int]:
        res = wsi_lab.run_tiling(syn, params, client=client, out=tmp_path, materialize="jpeg")
        assert res.ok, res.summary()
        return res.skipped, estimate_jpeg_quality(tile.read_bytes())

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        monkeypatch.delenv("WSI_LAB_JPEG_PASSTHROUGH", raising=False)
        assert run() == ([], 80)  # the source tiles' own bytes (Q80)
        assert run() == (["syn-p"], 80)
        monkeypatch.setenv("WSI_LAB_JPEG_PASSTHROUGH", "0")  # the workers were started with it on
        assert run() == ([], 90)  # re-encoded at the run's quality, not taken for complete
        assert run() == (["syn-p"], 90)
        monkeypatch.delenv("WSI_LAB_JPEG_PASSTHROUGH")
        assert run() == ([], 80)
        res = wsi_lab.run_tiling(syn, params, client=client, out=tmp_path, materialize="jpeg", passthrough=False)
        assert not res.skipped and estimate_jpeg_quality(tile.read_bytes()) == 90
