"""Tile export benchmark: TFRecord (raw vs JPEG variant) and JPEG files from a real slide, and the
TFRecord codec alone against TensorFlow's own writer (when TensorFlow is installed).

    python benchmarks/export_tiles.py [--quick]

Prints one table. ``speed ×`` compares with the peer named in ``vs`` measured in the same run;
``size ×`` is raw TFRecord bytes / these bytes. Extraction against the decode + encode limit (tiling's
JPEG folders, the exports, JPEG passthrough) is ``benchmarks/extract_tiles.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_lab.data.export_jpeg import export_jpeg
from wsi_lab.data.export_tfrecord import _example, export_tfrecord
from wsi_lab.data.table import concat_tables
from wsi_lab.data.tfrecord import TFRecordWriter
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.slide import open_slide

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))


def make_table(copies: int, tile: int = 224):
    import pandas as pd

    path = SLIDES / "CMU-1-Small-Region.svs"
    with open_slide(path) as s:
        w, h = s.dimensions
    ys, xs = np.mgrid[0:h - tile + 1:tile, 0:w - tile + 1:tile]
    tables = []
    for c in range(copies):
        sid = f"TCGA-BM-{c:04d}-01Z-00-DX1"
        t = pd.DataFrame({"slide_id": sid, "patient_id": sid[:12], "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                          "read_size": tile, "tile_size": tile, "mpp": 0.499, "tissue_fraction": 1.0})
        t.attrs["wsi_lab"] = {"slides": {sid: {"path": str(path)}}}
        tables.append(t)
    return concat_tables(tables)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one slide copy (~117 tiles), finishes in < 60 s")
    args = ap.parse_args()
    table = make_table(1 if args.quick else 4)
    n = len(table)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="wsi-bench-"))
    try:
        def run(name, fn, out, vs=""):
            t0 = time.perf_counter()
            fn(out)
            dt = time.perf_counter() - t0
            rows.append({"case": name, "tiles": n, "s": dt, "bytes": du(out), "vs": vs})

        run("tfrecord raw, 2 threads", lambda o: export_tfrecord(table, o, shards=2, variant="raw", workers=2), tmp / "raw")
        run("tfrecord jpeg q90, 2 threads", lambda o: export_tfrecord(table, o, shards=2, variant="jpeg", workers=2),
            tmp / "tfj", vs="tfrecord raw, 2 threads")
        run("jpeg files q90, 1 thread", lambda o: export_jpeg(table, o, workers=1), tmp / "j1")
        run("jpeg files q90, 2 threads", lambda o: export_jpeg(table, o, workers=2), tmp / "j2",
            vs="jpeg files q90, 1 thread")
        run("jpeg files, resume (all present)", lambda o: export_jpeg(table, o, workers=2), tmp / "j2",
            vs="jpeg files q90, 2 threads")

        # codec only: the same pre-read tiles serialized + framed, ours vs TensorFlow's writer
        with open_slide(table.attrs["wsi_lab"]["slides"][table.slide_id[0]]["path"]) as s:
            tiles = [read_tile(s, r.x, r.y, r.level, r.read_size, r.tile_size) for r in table.head(117).itertuples()]
        reps = 1 if args.quick else 4
        t0 = time.perf_counter()
        for k in range(reps):
            with TFRecordWriter(tmp / f"ours{k}.tfrecord") as w:
                for i, t in enumerate(tiles):
                    w.write(_example(t, 1, "slide", i, i, "raw", 90))
        ours = time.perf_counter() - t0
        rows.append({"case": "codec: wsi_lab encode+write (raw)", "tiles": len(tiles) * reps, "s": ours,
                     "bytes": sum((tmp / f"ours{k}.tfrecord").stat().st_size for k in range(reps)) // reps * reps,
                     "vs": "codec: tf.train.Example + tf.io.TFRecordWriter"})
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            import tensorflow as tf
        except ImportError:
            tf = None
        if tf is not None:
            def feat_b(v):
                return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

            def feat_i(v):
                return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

            t0 = time.perf_counter()
            for k in range(reps):
                with tf.io.TFRecordWriter(str(tmp / f"tf{k}.tfrecord")) as w:
                    for i, t in enumerate(tiles):
                        ex = tf.train.Example(features=tf.train.Features(feature={
                            "image_raw": feat_b(t.tobytes()), "height": feat_i(t.shape[0]), "width": feat_i(t.shape[1]),
                            "depth": feat_i(3), "label": feat_i(1), "slide_string": feat_b(b"slide"), "x": feat_i(i),
                            "y": feat_i(i)}))
                        w.write(ex.SerializeToString())
            rows.append({"case": "codec: tf.train.Example + tf.io.TFRecordWriter", "tiles": len(tiles) * reps,
                         "s": time.perf_counter() - t0,
                         "bytes": sum((tmp / f"tf{k}.tfrecord").stat().st_size for k in range(reps)), "vs": ""})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    by = {r["case"]: r for r in rows}
    raw_per_tile = by["tfrecord raw, 2 threads"]["bytes"] / n
    print(f"{'case':48} {'tiles':>6} {'s':>7} {'tiles/s':>9} {'kB/tile':>8} {'size ×':>7} {'speed ×':>8}  vs")
    for r in rows:
        rate = r["tiles"] / r["s"] if r["s"] else float("inf")
        peer = by.get(r["vs"])
        speed = f"{rate / (peer['tiles'] / peer['s']):.2f}" if peer else "-"
        per_tile = r["bytes"] / r["tiles"]
        size = f"{raw_per_tile / per_tile:.1f}" if per_tile else "-"
        print(f"{r['case']:48} {r['tiles']:>6} {r['s']:>7.2f} {rate:>9.0f} {per_tile / 1e3:>8.1f} {size:>7} {speed:>8}  "
              f"{r['vs'] or ''}")


if __name__ == "__main__":
    main()
