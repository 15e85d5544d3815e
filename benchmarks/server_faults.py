"""The tile server under load and faults: errors, p50/p95 latency and server memory (RSS) before and
after each phase, against a real Jupyter server with ``wsi_lab.server`` on 127.0.0.1 (generated slides).

    python benchmarks/server_faults.py [--quick] [--repo PATH]

Phases (each bounded; every client is a thread with its own keep-alive connection):

1. ``4 slides``: 8 clients x 500 random tiles over 4 slides (what held before issue 14);
2. ``N slides > cache``: 8 clients x 500 random tiles over more slides than the open-slide cache holds;
3. ``cold x8``: 8 simultaneous first requests for each of 8 slides nobody has opened yet;
4. ``replaced``: 6 clients fetching one slide while its file is replaced 6 times (atomically, then in place);
5. ``bad files``: the listing with a self-looping planar TIFF and a symlink loop under the root;
6. ``layers``: 24 POSTs of flat 2048x2048 snapshots (16 MiB each decoded, ~40 KiB on the wire).

A peer row runs phase 1 against OpenSlide's ``DeepZoomGenerator`` behind ``http.server`` in the same run
(ratios against it). ``--repo`` runs the server from another checkout of wsi_lab (e.g. one before the
issue-14 fixes) so the two can be compared; the script only needs ``tests/jupyter_env.py`` and
``wsi_lab.testing.make_slide`` from it.

Recorded 2026-12-01 (2 shared cores, load average 5-7, so latencies are noisy; --quick = 8 x 150 tiles):
before the issue-14 fixes 18 answers >= 500 (1 with 4 slides, 13 with 20 slides > cache, 1 while
replaced, 3/3 listings with a symlink loop under the root) and +547 MiB RSS after the 24 snapshots;
after them 0 errors in every phase, +230 MiB RSS (layer budget 128 MiB here), p95 with 4 slides
62-140 ms vs 98 ms before and 180-310 ms for the OpenSlide peer. Full run (8 x 500): 0 errors,
p50/p95 38/90 ms with 4 slides, 63/168 ms with 20 slides, peer 80/409 ms.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--quick", action="store_true", help="150 tiles per client")
ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="checkout whose server is measured")
ap.add_argument("--slides", type=int, default=20, help="slides of phase 2 (cache holds 16)")
ARGS = ap.parse_args()
REPO = Path(ARGS.repo).resolve()
sys.path.insert(0, str(REPO))

from benchmarks.openslide_peer import openslide_peer  # noqa: E402
from tests.jupyter_env import start_jupyter  # noqa: E402
from wsi_lab.testing import make_slide  # noqa: E402

W, H, LEVEL_MAX = 4096, 3072, 12  # deep-zoom levels 0..12 for 4096 px


def slide_key(rel: str) -> str:
    """The server's slide id of a root-relative path (same rule as ``wsi_lab.viewing.slide_key``)."""
    return hashlib.sha256(rel.encode()).hexdigest()[:16]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_tiles(rng: random.Random, rels: list[str], n: int) -> list[tuple[str, int, int, int]]:
    out = []
    for _ in range(n):
        level = rng.randrange(8, LEVEL_MAX + 1)
        ds = 2 ** (LEVEL_MAX - level)
        cols, rows = math.ceil(math.ceil(W / ds) / 254), math.ceil(math.ceil(H / ds) / 254)
        out.append((rng.choice(rels), level, rng.randrange(cols), rng.randrange(rows)))
    return out


def fetch_all(port: int, paths: list[list[str]], headers: dict, barrier: bool = False,
              deadline: float | None = None) -> tuple[list[float], dict[int, int], float]:
    """Each client fetches its paths on its own connection; (latencies ms, status counts, wall s)."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(len(paths)) if barrier else None

    def client(mine: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        if start:
            start.wait(30)
        for p in mine:
            if deadline and time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            try:
                conn.request("GET", p, headers=headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException):
                code = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)
                codes[code] = codes.get(code, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, args=(p,)) for p in paths]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, codes, time.perf_counter() - t0


def write_bad_files(folder: Path) -> None:
    """A planar tiled TIFF whose IFD 0 names itself as the next IFD, and a symlink loop."""
    import struct

    import tifffile

    folder.mkdir()
    p = folder / "loop.tif"
    img = np.random.default_rng(0).integers(0, 255, (3, 512, 512), np.uint8)
    tifffile.imwrite(p, img, tile=(128, 128), planarconfig="separate", photometric="rgb", compression="zlib",
                     metadata=None)
    data = bytearray(p.read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, first)[0]
    struct.pack_into("<I", data, first + 2 + 12 * n, first)
    p.write_bytes(bytes(data))
    (folder / "self.svs").symlink_to(folder / "self.svs")


def snapshot_body(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((2048, 2048, 4), value, np.uint8)).save(buf, format="PNG")
    return json.dumps({"snapshot": {"png_b64": base64.b64encode(buf.getvalue()).decode(), "downsample": 2}}).encode()


def main() -> None:
    n_tiles = 150 if ARGS.quick else 500
    tmp = Path(tempfile.mkdtemp(prefix="wsi-lab-faults-"))
    root = tmp / "root"
    (root / "many").mkdir(parents=True)
    rows: list[tuple] = []
    try:
        print(f"writing {ARGS.slides + 2} synthetic {W}x{H} slides...", flush=True)
        for i in range(ARGS.slides):
            make_slide(root / "many" / f"s{i:02d}.svs", W, H, tile=256, seed=i, source="procedural", associated=False)
        for name, seed in (("a.svs", 100), ("b.svs", 200)):
            make_slide(root / name, W, H, tile=256, seed=seed, source="procedural", associated=False)
        shutil.copy(root / "a.svs", root / "served.svs")
        four = [f"many/s{i:02d}.svs" for i in range(4)]
        many = [f"many/s{i:02d}.svs" for i in range(ARGS.slides)]
        rng = random.Random(0)

        srv = start_jupyter(root, app="server", env={"WSI_LAB_LAYER_CACHE_MB": "128", "WSI_LAB_OPEN_TIMEOUT_S": "20"})
        auth = {"Authorization": f"token {srv.token}"}
        url = srv.base_url + "wsi-lab/api/"
        pid = srv.proc.pid

        def phase(name: str, fn) -> None:
            before = rss_mb(pid)
            lat, codes, wall = fn()
            rows.append((name, lat, codes, wall, before, rss_mb(pid)))
            print(f"  {name}: {codes}", flush=True)

        def tiles(seq):
            return [f"{url}tiles/{slide_key(r)}/{lv}/{c}_{rw}.jpeg" for r, lv, c, rw in seq]

        try:
            phase("4 slides, 8 x tiles", lambda: fetch_all(
                srv.port, [tiles(random_tiles(rng, four, n_tiles)) for _ in range(8)], auth))
            phase(f"{ARGS.slides} slides > 16 cached, 8 x tiles", lambda: fetch_all(
                srv.port, [tiles(random_tiles(rng, many, n_tiles)) for _ in range(8)], auth))

            def cold():
                lat, codes, wall = [], {}, 0.0
                for rel in many[-8:]:  # slides the earlier phases may have evicted or never opened
                    lt, cd, wl = fetch_all(srv.port, [tiles([(rel, 10, i % 2, i // 4)]) for i in range(8)], auth,
                                           barrier=True)
                    lat += lt
                    wall += wl
                    for k, v in cd.items():
                        codes[k] = codes.get(k, 0) + v
                return lat, codes, wall

            phase("cold x8 (8 slides)", cold)

            def replaced():
                result: dict = {}
                seqs = [tiles(random_tiles(rng, ["served.svs"], 10_000)) for _ in range(6)]
                t = threading.Thread(target=lambda: result.update(
                    r=fetch_all(srv.port, seqs, auth, deadline=time.monotonic() + 6)))
                t.start()
                for i in range(6):
                    time.sleep(0.8)
                    src = root / ("b.svs" if i % 2 == 0 else "a.svs")
                    if i < 4:
                        shutil.copyfile(src, root / ".tmp")
                        os.replace(root / ".tmp", root / "served.svs")
                    else:
                        shutil.copyfile(src, root / "served.svs")
                t.join(120)
                return result["r"]

            phase("replaced x6 while served", replaced)
            write_bad_files(root / "bad")

            def listing():
                t0 = time.perf_counter()
                lat, codes = [], {}
                for _ in range(3):
                    t = time.perf_counter()
                    try:
                        status = srv.get("wsi-lab/api/slides", timeout=60)[0]
                    except OSError:
                        status = 0
                    lat.append((time.perf_counter() - t) * 1000)
                    codes[status] = codes.get(status, 0) + 1
                    time.sleep(10.5)  # past the listing cache
                return lat, codes, time.perf_counter() - t0

            phase("listing, bad files in root (x3)", listing)

            def layers():
                lat, codes = [], {}
                t0 = time.perf_counter()
                for v in range(24):
                    t = time.perf_counter()
                    status = srv.get("wsi-lab/api/layers", method="POST", body=snapshot_body(v + 1), timeout=120)[0]
                    lat.append((time.perf_counter() - t) * 1000)
                    codes[status] = codes.get(status, 0) + 1
                return lat, codes, time.perf_counter() - t0

            phase("layers: 24 x 16 MiB snapshots", layers)
        finally:
            srv.stop()

        peer_root = tmp / "peer"
        peer_root.mkdir()
        for r in four:
            shutil.copy(root / r, peer_root / Path(r).name)
        names = [Path(r).name for r in four]
        with openslide_peer(peer_root, names) as (port, proc):  # the peer, phase 1 only
            seqs = [[f"/tiles/{Path(r).name}/{lv}/{c}_{rw}.jpeg" for r, lv, c, rw in random_tiles(rng, four, n_tiles)]
                    for _ in range(8)]
            before = rss_mb(proc.pid)
            lat, codes, wall = fetch_all(port, seqs, {})
            peer = ("peer: OpenSlide DeepZoom + http.server, 4 slides", lat, codes, wall, before, rss_mb(proc.pid))
            rows.append(peer)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peer = rows[-1]
    peer_p95 = np.percentile(peer[1], 95)
    print(f"\nserver from {REPO}; {os.cpu_count()} CPUs, loopback, {W}x{H} synthetic slides")
    hdr = (f"{'phase':<46} {'reqs':>5} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'p95/peer':>8} "
           f"{'RSS before':>10} {'RSS after':>9}  statuses")
    print(hdr)
    print("-" * len(hdr))
    for name, lat, codes, _wall, before, after in rows:
        errors = sum(v for k, v in codes.items() if k == 0 or k >= 500)
        a = np.asarray(lat) if lat else np.asarray([np.nan])
        print(f"{name:<46} {len(lat):>5} {errors:>6} {np.percentile(a, 50):>8.1f} {np.percentile(a, 95):>8.1f} "
              f"{np.percentile(a, 95) / peer_p95:>7.2f}x {before:>9.0f}M {after:>8.0f}M  {dict(sorted(codes.items()))}")
    print("\nerrors = answers >= 500 or no answer; 4xx are refusals of bad input (422 for a file caught mid-rewrite)")


if __name__ == "__main__":
    main()
