"""JPEG and TFRecord exports of real-slide TileTables."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests._datatables import cohort, concat, grid_table
from wsi_lab.data.export_jpeg import export_jpeg, is_valid_jpeg
from wsi_lab.data.export_tfrecord import export_tfrecord, shard_assignment
from wsi_lab.data.splits import split_by_patient
from wsi_lab.data.tfrecord import read_examples
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.slide import open_slide


@pytest.fixture(scope="module")
def table():
    from tests.conftest import CMU

    if not CMU.exists():
        pytest.skip("CMU slide missing")
    t = cohort(CMU, patients=8, tiles_per_slide=5, tile_size=48, read_size=192)
    return split_by_patient(t, fractions=(0.5, 0.25, 0.25), seed=0)


# -- JPEG ------------------------------------------------------------------------------------------
def test_export_jpeg_layout_pixels_resume(tmp_path, table):
    calls = []
    out = export_jpeg(table, tmp_path / "j", quality=95, workers=2, progress=calls.append)
    files = [tmp_path / "j" / f for f in out["file"]]
    assert all(f.is_file() and is_valid_jpeg(f) for f in files)
    row = out.iloc[7]
    assert row["file"] == f"{row['split']}/{row['label']}/{row['slide_id']}_{row['x']}_{row['y']}.jpg"
    assert calls[0].done == 0 and calls[-1].finished and calls[-1].done == calls[-1].total == len(table)
    assert all(a.done <= b.done for a, b in zip(calls, calls[1:])) and calls[-1].unit == "tiles"
    # pixels: the JPEG decodes to the tile read directly (up to JPEG loss)
    path = table.attrs["wsi_lab"]["slides"][row["slide_id"]]["path"]
    with open_slide(path) as s:
        ref = read_tile(s, row.x, row.y, row.level, row.read_size, row.tile_size)
    img = np.asarray(Image.open(tmp_path / "j" / row["file"]))
    assert img.shape == (48, 48, 3) and np.abs(img.astype(int) - ref).mean() < 4
    manifest = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert manifest["tiles"] == len(table) and manifest["written"] == len(table)
    # resume: a removed and a truncated file are rewritten, the others are kept as they are
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:100])
    before = {f: f.stat().st_mtime_ns for f in files[2:]}
    again = export_jpeg(table, tmp_path / "j", workers=2)
    assert again.attrs["wsi_lab"]["export_jpeg"]["written"] == 2
    assert is_valid_jpeg(files[0]) and is_valid_jpeg(files[1])
    assert {f: f.stat().st_mtime_ns for f in files[2:]} == before
    assert not list((tmp_path / "j").rglob("*.part"))


def test_export_jpeg_flat_and_errors(tmp_path, table):
    plain = table.drop(columns=["split", "label"]).head(4)
    out = export_jpeg(plain, tmp_path / "flat", workers=1)
    assert all("/" not in f for f in out["file"])
    with pytest.raises(DataError, match="no slide path"):
        export_jpeg(plain.assign(slide_id="unknown"), tmp_path / "x")
    with pytest.raises(InvalidParameterError):
        export_jpeg(plain, tmp_path / "x", quality=0)
    with pytest.raises(DataError, match="missing"):
        export_jpeg(plain.drop(columns=["read_size"]), tmp_path / "x")


# -- TFRecord --------------------------------------------------------------------------------------
def test_shard_assignment_balanced():
    parts = shard_assignment(103, 8, seed=1)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == 103
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert [p.tolist() for p in parts] == [p.tolist() for p in shard_assignment(103, 8, seed=1)]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InvalidParameterError):
            shard_assignment(10, bad)


def test_export_tfrecord_raw_shards_and_test_per_slide(tmp_path, table):
    m = export_tfrecord(table, tmp_path / "tf", shards=2, variant="raw", workers=2)
    manifest = json.loads((tmp_path / "tf" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(m))
    by_split = {}
    for f in m["files"]:
        by_split.setdefault(f["split"], []).append(f)
    assert [len(by_split[s]) for s in ("train", "val")] == [2, 2]
    for s in ("train", "val"):
        counts = [f["records"] for f in by_split[s]]
        assert max(counts) - min(counts) <= 1 and sum(counts) == (table["split"] == s).sum()
    test_slides = sorted(table.loc[table.split == "test", "slide_id"].unique())
    assert sorted(f["slide_id"] for f in by_split["test"]) == test_slides
    assert all(f["path"] == f"test/{f['slide_id']}.tfrecord" for f in by_split["test"])
    # every tile exactly once, pixels identical to a direct read
    seen = []
    label_index = m["label_index"]
    assert label_index == {"LUAD": 0, "LUSC": 1}
    with open_slide(table.attrs["wsi_lab"]["slides"][table.slide_id.iloc[0]]["path"]) as s:
        for f in m["files"]:
            for ex in read_examples(tmp_path / "tf" / f["path"]):
                sid = ex["slide_string"][0].decode()
                x, y = ex["x"][0], ex["y"][0]
                row = table[(table.slide_id == sid) & (table.x == x) & (table.y == y)].iloc[0]
                assert row["split"] == f["split"] and ex["label"] == [label_index[row["label"]]]
                assert ex["height"] == [48] and ex["width"] == [48] and ex["depth"] == [3]
                img = np.frombuffer(ex["image_raw"][0], np.uint8).reshape(48, 48, 3)
                assert np.array_equal(img, read_tile(s, x, y, 0, 192, 48))
                seen.append((sid, x, y))
    assert len(seen) == len(set(seen)) == len(table)


def test_export_tfrecord_jpeg_variant_smaller(tmp_path, table):
    raw = export_tfrecord(table, tmp_path / "raw", shards=1, variant="raw")
    jpg = export_tfrecord(table, tmp_path / "jpg", shards=1, variant="jpeg", per_slide_test=False)
    assert [f["path"] for f in jpg["files"]] == [f"{s}/{s}-00000-of-00001.tfrecord" for s in ("train", "val", "test")]
    assert jpg["bytes"] * 4 < raw["bytes"]  # several times smaller even on 48-px tiles
    ex = next(read_examples(tmp_path / "jpg" / jpg["files"][0]["path"]))
    assert ex["image/format"] == [b"jpeg"] and ex["image/height"] == [48]
    assert Image.open(io.BytesIO(ex["image/encoded"][0])).size == (48, 48)


def test_export_tfrecord_resume_and_bad_input_keep_files(tmp_path, table):
    out = tmp_path / "tf"
    m1 = export_tfrecord(table, out, shards=2)
    mtimes = {f["path"]: (out / f["path"]).stat().st_mtime_ns for f in m1["files"]}
    m2 = export_tfrecord(table, out, shards=2)
    assert m2["tiles_written"] == 0
    assert {f["path"]: (out / f["path"]).stat().st_mtime_ns for f in m2["files"]} == mtimes
    # a damaged shard is rewritten, only it
    victim = out / m1["files"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:50])
    events = []
    m3 = export_tfrecord(table, out, shards=2, progress=events.append)
    assert events[-1].finished and events[-1].skipped == len(table) - m1["files"][0]["records"]
    assert m3["tiles_written"] == m1["files"][0]["records"]
    assert len(list(read_examples(victim))) == m1["files"][0]["records"]
    manifest_before = (out / "manifest.json").read_bytes()
    for bad in (0, -1):
        with pytest.raises(InvalidParameterError, match="shards"):
            export_tfrecord(table, out, shards=bad)
    with pytest.raises(DataError, match="fewer than shards"):
        export_tfrecord(table, out, shards=50)
    with pytest.raises(InvalidParameterError, match="variant"):
        export_tfrecord(table, out, variant="png")
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert all((out / f["path"]).is_file() for f in m1["files"])


def test_unreadable_slide_mid_export_keeps_previous_output(tmp_path, table):
    from tests.conftest import CMU
    from wsi_lab.errors import SlideError
    from wsi_lab.testing import make_corrupt_copies

    corrupt = make_corrupt_copies(CMU, tmp_path / "bad")["corrupt"]
    out = tmp_path / "tf"
    export_tfrecord(table, out, shards=2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = table.copy()
    broken.attrs = {"wsi_lab": {"slides": {k: {"path": str(corrupt)} for k in table.attrs["wsi_lab"]["slides"]}}}
    broken = broken.assign(y=broken["y"] + 1500)  # rows in the garbled half of the slide
    with pytest.raises(SlideError):
        export_tfrecord(broken, out, shards=2)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost, no .part left
    with pytest.raises(SlideError):
        export_jpeg(broken, tmp_path / "j", workers=2)
    assert not list((tmp_path / "j").rglob("*.part")) and not (tmp_path / "j" / "manifest.json").exists()


def test_export_tfrecord_other_slides_and_levels(tmp_path):
    from tests.conftest import NDPI, OME

    tables = []
    if NDPI.exists():
        tables.append(grid_table(NDPI, "ndpi", level=2, read_size=128, tile_size=64, limit=6))
    if OME.exists():
        tables.append(grid_table(OME, "ome", read_size=256, tile_size=32, limit=6))
    if not tables:
        pytest.skip("no NDPI/OME slide")
    t = concat(tables)
    m = export_tfrecord(t, tmp_path / "o", shards=3, variant="jpeg")
    assert m["records_per_split"] == {"all": len(t)}
    assert sum(1 for f in m["files"] for _ in read_examples(tmp_path / "o" / f["path"])) == len(t)


TF_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
out, ref = sys.argv[1], sys.argv[2]
m = json.load(open(out + "/manifest.json"))
expected = np.load(ref)
raw = {"image_raw": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
       "slide_string": tf.io.FixedLenFeature([], tf.string), "height": tf.io.FixedLenFeature([], tf.int64),
       "width": tf.io.FixedLenFeature([], tf.int64), "x": tf.io.FixedLenFeature([], tf.int64),
       "y": tf.io.FixedLenFeature([], tf.int64)}
files = [out + "/" + f["path"] for f in m["files"]]
n = 0
for rec in tf.data.TFRecordDataset(files):
    ex = tf.io.parse_single_example(rec, raw)
    img = tf.reshape(tf.io.decode_raw(ex["image_raw"], tf.uint8), (ex["height"], ex["width"], 3)).numpy()
    key = "%s_%d_%d" % (ex["slide_string"].numpy().decode(), int(ex["x"]), int(ex["y"]))
    assert np.array_equal(img, expected[key]), key
    n += 1
jf = {"image/encoded": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
mj = json.load(open(out + "_jpeg/manifest.json"))
nj = 0
for rec in tf.data.TFRecordDataset([out + "_jpeg/" + f["path"] for f in mj["files"]]):
    ex = tf.io.parse_single_example(rec, jf)
    assert tf.io.decode_jpeg(ex["image/encoded"]).shape == (48, 48, 3)
    nj += 1
# and the other way: a file written by TensorFlow, read by wsi_lab
with tf.io.TFRecordWriter(out + "/tf_written.tfrecord") as w:
    for i in range(3):
        f = {"i": tf.train.Feature(int64_list=tf.train.Int64List(value=[i, -i])),
             "s": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc"])),
             "f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
print(json.dumps({"raw": n, "jpeg": nj}))
"""


@pytest.mark.slow
def test_tensorflow_reads_our_tfrecords(tmp_path, table):
    import subprocess
    import sys
    from importlib.util import find_spec

    if find_spec("tensorflow") is None:
        pytest.skip("tensorflow not installed (pip install 'wsi-lab[tf]')")
    out = tmp_path / "tf"
    export_tfrecord(table, out, shards=2, variant="raw")
    export_tfrecord(table, str(out) + "_jpeg", shards=2, variant="jpeg")
    expected = {}
    with open_slide(table.attrs["wsi_lab"]["slides"][table.slide_id.iloc[0]]["path"]) as s:
        for r in table.itertuples():
            expected[f"{r.slide_id}_{r.x}_{r.y}"] = read_tile(s, r.x, r.y, r.level, r.read_size, r.tile_size)
    np.savez(tmp_path / "ref.npz", **expected)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", TF_SCRIPT, str(out), str(tmp_path / "ref.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"raw": len(table), "jpeg": len(table)}
    back = list(read_examples(out / "tf_written.tfrecord"))
    assert [e["i"] for e in back] == [[0, 0], [1, -1], [2, -2]]
    assert back[0]["s"] == [b"abc"] and back[0]["f"] == [0.25]


def test_export_tfrecord_resume_checks_file_contents_and_removes_stale_shards(tmp_path, table):
    """Regression: a shard overwritten by an interrupted export with other parameters (same size, other
    order) was kept on resume; shards of an earlier layout stayed next to the new ones."""
    import shutil

    out, other = tmp_path / "tf", tmp_path / "other"
    m0 = export_tfrecord(table, out, shards=1, seed=0)
    export_tfrecord(table, other, shards=1, seed=1)
    shard = "train/train-00000-of-00001.tfrecord"
    original = (out / shard).read_bytes()
    assert (other / shard).read_bytes() != original and (other / shard).stat().st_size == len(original)
    shutil.copy(other / shard, out / shard)  # what an interrupted seed=1 run leaves behind
    m1 = export_tfrecord(table, out, shards=1, seed=0)
    assert m1["tiles_written"] == next(f["records"] for f in m0["files"] if f["path"] == shard)
    assert (out / shard).read_bytes() == original
    # fewer shards: the old layout's files go, the new ones hold every tile exactly once
    m2 = export_tfrecord(table, out, shards=2, seed=0)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.tfrecord"))
    assert on_disk == sorted(f["path"] for f in m2["files"])
    assert sum(len(list(read_examples(out / p))) for p in on_disk) == len(table)
