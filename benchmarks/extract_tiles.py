"""Tile extraction against the codec limit, measured in the same run (issue 15).

    python benchmarks/extract_tiles.py [--quick] [--reps 3]

On a generated SVS-like slide (``wsi_lab.testing.make_slide``: 256² JPEG tiles, Q80; 40,000 × 30,000, or
12,000 × 9,000 with ``--quick``), level 0, 256² output, Otsu, 2 workers:

- **limit**: the table's source tiles, pre-read into memory, decoded (imagecodecs, the level's tables)
  and re-encoded at Q90 (imagecodecs) on 2 threads, nothing else; and decode alone (the limit of the
  raw TFRecord schema, which encodes nothing).
- **tiling**: ``run_tiling`` on one LocalCluster of 2 single-threaded workers, the one ``wsi-lab tile``
  starts (``wsi_lab.runs.executors.local_cluster``) (``passthrough=False``:
  decode → encode Q90; ``passthrough=True``, the default, passes tiles through), writing only the
  table, then with ``materialize="jpeg"``; extraction rate = tiles / (wall with JPEGs −
  wall with the table only), as the issue measures it (both walls on the same warm cluster).
- **exports** of the same table: ``export_jpeg`` (passthrough and ``passthrough=False``), and
  ``export_tfrecord`` raw and jpeg (passthrough and not), 2 threads, 2 shards.

Every case writes to a folder of its own, and the JPEG folders are removed only at the end: this disk is
ext4 without a journal, where creating a file within ~30 s of deleting many (the previous case's 7,214
tiles) makes the kernel scan past every recently deleted inode (``recently_deleted()`` in the inode
allocator), ~0.3–0.5 ms of system CPU per new file; that cost belongs to the benchmark's own clean-up, not
to extraction into a fresh folder. ``--delete-between`` deletes each case's files right after it (the
old way) to show the effect.

Every case runs ``--reps`` times interleaved with the limit (load on a shared machine drifts); the table
shows medians and each case's ratio to the median decode + encode limit (and, for raw TFRecords, to the
decode limit). The load average at start and end is printed: the machine's 2 cores may be shared.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagecodecs

from wsi_lab.data.export_jpeg import export_jpeg
from wsi_lab.data.export_tfrecord import export_tfrecord
from wsi_lab.slide import open_slide
from wsi_lab.slide.raw_tiles import aligned_tile
from wsi_lab.tiling import TilingParams, run_tiling

THREADS = 2


def codec_limit(raws: list[bytes], jpeg_args: dict, quality: int | None) -> float:
    """Tiles/s of decode (+ encode at ``quality``) over ``raws`` on THREADS threads."""
    def work(chunk: list[bytes]) -> None:
        for data in chunk:
            arr = imagecodecs.jpeg_decode(data, **jpeg_args)
            if quality is not None:
                imagecodecs.jpeg8_encode(arr, level=quality)

    chunks = [raws[i::THREADS * 8] for i in range(THREADS * 8)]
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, chunks))
    CPU_PER_TILE.setdefault(quality, []).append((time.process_time() - c0) / len(raws))
    return len(raws) / (time.perf_counter() - t0)


def file_writes(raws: list[bytes], folder: Path) -> float:
    """Files/s of writing each of ``raws`` as its own file in a new ``folder`` the way the JPEG folders
    do (``write_atomic``: temp file + rename), on THREADS threads: what the disk costs per file right now."""
    from wsi_lab.data.extract import write_atomic

    folder.mkdir(parents=True)
    dest = os.fspath(folder)

    def work(k: int) -> None:
        for i in range(k, len(raws), THREADS):
            write_atomic(os.path.join(dest, f"{i}.jpg"), raws[i])

    t0, c0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    CPU_PER_TILE.setdefault("fs", []).append((time.process_time() - t0) / len(raws))
    return len(raws) / (time.perf_counter() - c0)


#: CPU seconds per tile of the limits (by quality; None: decode only) and of the cases, per rep
CPU_PER_TILE: dict = {}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _worker_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_seconds(client=None) -> float:
    """CPU seconds used so far by this process (client, scheduler, export threads) and, with ``client``,
    by its workers: on a shared machine the CPU a case costs per tile is steadier than its wall time."""
    t = time.process_time()
    if client is not None:
        t += sum(client.run(_worker_cpu).values())
    return t


def cpu_timed(fn, client=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    c0, t0 = cpu_seconds(client), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds(client) - c0


def _cluster(local_cluster_cls):
    """The cluster ``wsi-lab tile`` starts (``wsi_lab.runs.executors.local_cluster``: its Dask settings),
    2 workers; a plain LocalCluster on older checkouts that have none."""
    try:
        from wsi_lab.runs.executors import local_cluster
    except ImportError:
        return local_cluster_cls(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                 dashboard_address="127.0.0.1:0")
    return local_cluster(2)


def main() -> None:
    from wsi_lab.testing import make_slide

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 12,000 × 9,000 slide (~650 tiles)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--delete-between", action="store_true",
                    help="delete each case's JPEG files before the next case (the old way; see the docstring)")
    ap.add_argument("--out-dir", default=None, help="where outputs are written (default: the temp folder; "
                    "/dev/shm takes the disk out of the measurement)")
    args = ap.parse_args()
    size = (12000, 9000) if args.quick else (40000, 30000)
    cache = Path(tempfile.gettempdir()) / "wsi_lab_bench"
    cache.mkdir(exist_ok=True)
    path = cache / f"extract-{size[0]}x{size[1]}-q80.svs"
    if not path.exists():
        make_slide(path, *size, mpp=0.25, tissue_fraction=0.4, seed=0, quality=80)
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="wsi-extract-", dir=args.out_dir))
    params = TilingParams(tile_size=256, level=0, method="otsu")
    os.environ.pop("WSI_LAB_JPEG_PASSTHROUGH", None)
    rates: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}

    def add(name: str, rate: float) -> None:
        rates.setdefault(name, []).append(rate)

    from distributed import Client, LocalCluster

    clients: dict[str, Any] = {}
    clusters: list[Any] = []
    try:
        # warm clusters (a cluster's start is seconds of noise): run_tiling(passthrough=) says per run whether
        # source tiles pass through; older checkouts read WSI_LAB_JPEG_PASSTHROUGH on the workers, so they
        # get one cluster per mode, started with it set
        modes = {"passthrough": True, "re-encode Q90": False}
        explicit = "passthrough" in inspect.signature(run_tiling).parameters
        for tag in modes:
            if explicit and clients:
                clients[tag] = next(iter(clients.values()))
                continue
            os.environ["WSI_LAB_JPEG_PASSTHROUGH"] = "1" if modes[tag] else "0"
            cluster = _cluster(LocalCluster)
            clusters.append(cluster)
            clients[tag] = Client(cluster)
        os.environ.pop("WSI_LAB_JPEG_PASSTHROUGH", None)
        kw = {tag: ({"passthrough": mode} if explicit else {}) for tag, mode in modes.items()}
        for tag in clients:  # warm: imports, the open slide and its tissue features
            run_tiling(path, params, client=clients[tag], out=tmp / "warm", materialize="jpeg", force=True, **kw[tag])
            shutil.rmtree(tmp / "warm", ignore_errors=True)
        # the table (and the raw source bytes of its tiles, for the limit)
        res = run_tiling(path, params, client=clients["passthrough"], out=tmp / "t0")
        table = res.table()
        n = len(table)
        with open_slide(path) as s:
            raws: list[bytes] = []
            for r in table.itertuples():
                found = aligned_tile(s, int(r.x), int(r.y), int(r.level), int(r.read_size), int(r.tile_size))
                data = found[0].raw(found[1]) if found is not None else None
                if data is None:
                    raise SystemExit(f"tile at ({r.x}, {r.y}) is not one whole source tile: not the benchmark's slide")
                raws.append(data)
            lv = getattr(s, "_reader")._levels[0]  # noqa: B009 - the tifffile backend's level record
            jpeg_args = {k: v for k, v in lv.jpeg.items() if k in ("tables", "colorspace", "outcolorspace")}
        for rep in range(args.reps):
            add("limit: decode + encode Q90 (imagecodecs, 2 threads)", codec_limit(raws, jpeg_args, 90))
            add("limit: decode only (imagecodecs, 2 threads)", codec_limit(raws, jpeg_args, None))
            add("disk: one file per tile (write_atomic, 2 threads)", file_writes(raws, tmp / f"files{rep}"))
            for tag, client in clients.items():
                for name, mat in ((f"tiling: table only ({tag})", None), (f"tiling: jpeg, {tag}", "jpeg")):
                    out = tmp / f"tiling{rep}-{len(walls.get(name, []))}-{abs(hash(name))}"
                    wall, cpu = cpu_timed(lambda: run_tiling(
                        path, params, client=client, out=out, materialize=mat, force=True, **kw[tag]),  # noqa: B023
                        client)
                    walls.setdefault(name, []).append(wall)
                    cpus.setdefault(name, []).append(cpu)
                    if args.delete_between:
                        shutil.rmtree(out, ignore_errors=True)
                add(f"tiling: jpeg, {tag}", n / max(walls[f"tiling: jpeg, {tag}"][-1]
                                                    - walls[f"tiling: table only ({tag})"][-1], 1e-3))
                CPU_PER_TILE.setdefault(f"tiling: jpeg, {tag}", []).append(
                    (cpus[f"tiling: jpeg, {tag}"][-1] - cpus[f"tiling: table only ({tag})"][-1]) / n)
            cases = {
                "export jpeg, passthrough": lambda o: export_jpeg(table, o, workers=THREADS),
                "export jpeg, re-encode Q90": lambda o: export_jpeg(table, o, workers=THREADS, passthrough=False),
                "tfrecord raw": lambda o: export_tfrecord(table, o, shards=2, variant="raw", workers=THREADS),
                "tfrecord jpeg, passthrough": lambda o: export_tfrecord(table, o, shards=2, variant="jpeg",
                                                                        workers=THREADS),
                "tfrecord jpeg, re-encode Q90": lambda o: export_tfrecord(table, o, shards=2, variant="jpeg",
                                                                          workers=THREADS, passthrough=False),
            }
            for name, fn in cases.items():
                out = tmp / f"export{rep}-{abs(hash(name))}"
                wall, cpu = cpu_timed(lambda: fn(out))  # noqa: B023
                add(name, n / wall)
                CPU_PER_TILE.setdefault(name, []).append(cpu / n)
                if args.delete_between or name.startswith("tfrecord"):  # a few large files: no inode churn
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        for c in set(clients.values()):
            c.close()
        for cluster in clusters:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)

    limit = statistics.median(rates["limit: decode + encode Q90 (imagecodecs, 2 threads)"])
    dec = statistics.median(rates["limit: decode only (imagecodecs, 2 threads)"])
    print(f"slide {path.name}: {n} tiles of 256² (level 0, Otsu), {args.reps} reps, medians; outputs in "
          f"{args.out_dir or tempfile.gettempdir()}; "
          f"load average {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} cores)")
    print("tiling walls (median s): " + ", ".join(f"{k.split(': ')[1]} {statistics.median(v):.2f}"
                                                   for k, v in walls.items()))
    lim_reps = rates["limit: decode + encode Q90 (imagecodecs, 2 threads)"]
    print(f"{'case':52} {'tiles/s':>9} {'min–max':>13} {'× limit':>8} {'per rep':>8} {'× decode':>9}")
    for name, vals in rates.items():
        med = statistics.median(vals)
        per_rep = statistics.median(v / lim for v, lim in zip(vals, lim_reps))  # against the limit of its own rep
        extra = f"{med / dec:>9.2f}" if name.startswith(("tfrecord raw", "limit")) else f"{'':>9}"
        print(f"{name:52} {med:>9.0f} {min(vals):>6.0f}–{max(vals):<6.0f} {med / limit:>8.2f} {per_rep:>8.2f} {extra}")
    print("× limit: median rate / median decode + encode limit; per rep: median of (rate / the limit measured "
          "just before it, in the same rep)")
    lim_cpu = statistics.median(CPU_PER_TILE[90])
    dec_cpu = statistics.median(CPU_PER_TILE[None])
    print(f"\nCPU per tile (this process + the workers; steadier than walls when the cores are shared): "
          f"decode + encode Q90 {lim_cpu * 1e3:.2f} ms, decode only {dec_cpu * 1e3:.2f} ms")
    print(f"{'case':52} {'CPU ms/tile':>12} {'limit/case':>11}")
    for name, vals in CPU_PER_TILE.items():
        if name in (90, None, "fs"):
            continue
        med = statistics.median(vals)
        ref = dec_cpu if name.startswith("tfrecord raw") else lim_cpu
        print(f"{name:52} {med * 1e3:>12.2f} {ref / med:>11.2f}")
    print("limit/case: the codec's CPU per tile over the case's (decode only for raw TFRecords); 1 = no overhead")
    print(f"disk: writing each tile as its own file (temp + rename, no codec) cost {statistics.median(CPU_PER_TILE['fs']) * 1e3:.2f}"
          " ms of CPU per file in this run; the JPEG-folder cases pay it on top of the codec, the TFRecord cases do not")


if __name__ == "__main__":
    main()
