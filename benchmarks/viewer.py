"""Deep-zoom tile serving: 8 concurrent viewers against a real Jupyter server with ``wsi_lab.server``,
compared with a plain OpenSlide ``DeepZoomGenerator`` behind ``http.server`` in the same run.

    python benchmarks/viewer.py [--quick] [--viewers 8] [--tiles 1000]

Each viewer is a thread with its own keep-alive HTTP connection that fetches ``--tiles`` tiles (deep-zoom
tiles of 254 px + 1 px overlap, i.e. up to 256x256 JPEG) drawn at random from every level of the real
slides (CMU-1-Small-Region.svs and test3-DAPI-2-387.ndpi), the same sequence for both servers, so the
first requests are cold and later ones repeat (as panning and zooming does). Prints one table: errors,
p50/p95/mean latency per tile and throughput, with ratios against the baseline (target p95 < 50 ms).
A second wsi_lab.server row turns its encoded-tile LRU off (``WSI_LAB_TILE_CACHE_MB=0``: every request
reads and encodes, like the baseline); the last row times the SlideViewer comm handler in-process
(tile bytes only, no transport).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.openslide_peer import openslide_peer  # noqa: E402
from tests.jupyter_env import start_jupyter  # noqa: E402
from wsi_lab.viewing import slide_key  # noqa: E402

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", REPO.parent / "shared" / "data" / "slides"))
NAMES = ["CMU-1-Small-Region.svs", "test3-DAPI-2-387.ndpi"]

def tile_addresses() -> list[tuple[str, int, int, int]]:
    """Every (slide name, level, col, row) of the two slides' deep-zoom pyramids (levels with ≥ 1 full tile)."""
    from wsi_lab import open_slide
    from wsi_lab.viewing import DeepZoom

    out = []
    for name in NAMES:
        with open_slide(SLIDES / name) as s:
            dz = DeepZoom(s, 254, 1)
            for level in range(dz.level_count):
                if dz.level_dimensions[level][0] < 256:
                    continue
                cols, rows = dz.level_tiles[level]
                out += [(name, level, c, r) for c in range(cols) for r in range(rows)]
    return out


def run_viewers(port: int, paths: list[list[str]], headers: dict) -> tuple[np.ndarray, int, float]:
    """Fetch each viewer's path list on its own connection, concurrently; (latencies ms, errors, wall s)."""
    lat: list[list[float]] = [[] for _ in paths]
    errors = [0] * len(paths)

    def viewer(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for p in paths[i]:
            t0 = time.perf_counter()
            try:
                conn.request("GET", p, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and body[:2] == b"\xff\xd8"
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            lat[i].append((time.perf_counter() - t0) * 1000)
            errors[i] += not ok
        conn.close()

    threads = [threading.Thread(target=viewer, args=(i,)) for i in range(len(paths))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.concatenate([np.asarray(x) for x in lat]), sum(errors), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="150 tiles per viewer (< 60 s)")
    ap.add_argument("--viewers", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=1000, help="tiles per viewer")
    args = ap.parse_args()
    n_tiles = 150 if args.quick else args.tiles
    root = Path(tempfile.mkdtemp(prefix="wsi-lab-bench-"))
    try:
        for n in NAMES:
            shutil.copy(SLIDES / n, root / n)
        addrs = tile_addresses()
        rng = random.Random(0)
        seqs = [[addrs[rng.randrange(len(addrs))] for _ in range(n_tiles)] for _ in range(args.viewers)]
        rows = []

        # 1. wsi_lab.server inside a real Jupyter server, token auth; with and without its tile LRU
        for label, env in (("wsi_lab.server (Jupyter, auth, LRU)", {}),
                           ("wsi_lab.server, tile LRU off", {"WSI_LAB_TILE_CACHE_MB": "0"})):
            srv = start_jupyter(root, app="server", env=env)
            try:
                auth = {"Authorization": f"token {srv.token}"}
                base = srv.base_url + "wsi-lab/api/tiles/"
                ours = [[f"{base}{slide_key(n)}/{lv}/{c}_{r}.jpeg" for n, lv, c, r in seq] for seq in seqs]
                run_viewers(srv.port, [ours[0][:4]], auth)  # open the slides
                rows.append((label,) + run_viewers(srv.port, ours, auth))
            finally:
                srv.stop()

        # 2. baseline: OpenSlide DeepZoomGenerator behind a threading http.server, no cache
        with openslide_peer(root, NAMES) as (port, _):
            theirs = [[f"/tiles/{n}/{lv}/{c}_{r}.jpeg" for n, lv, c, r in seq] for seq in seqs]
            rows.append(("OpenSlide DeepZoomGenerator + http.server",) + run_viewers(port, theirs, {}))

        # 3. the comm path's Python handler, in-process and sequential (no transport)
        from wsi_lab.ui.viewer import SlideViewer

        viewers = {n: SlideViewer(root / n, tile_source="comm") for n in NAMES}
        lat = []
        errs = 0
        t0 = time.perf_counter()
        for seq in seqs:
            for n, lv, c, r in seq:
                t = time.perf_counter()
                reply, _ = viewers[n].handle_request({"type": "tile", "id": "b", "level": lv, "col": c, "row": r})
                lat.append((time.perf_counter() - t) * 1000)
                errs += not reply["ok"]
        rows.append(("SlideViewer comm handler (in-process)", np.asarray(lat), errs, time.perf_counter() - t0))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = next(r for r in rows if r[0].startswith("OpenSlide"))
    base_p95 = np.percentile(base[1], 95)
    base_rate = len(base[1]) / base[3]
    print(f"\n{args.viewers} viewers x {n_tiles} tiles (254+1 px deep-zoom JPEG tiles, q=80), "
          f"{len(addrs)} distinct tiles, {os.cpu_count()} CPUs, loopback")
    hdr = f"{'server':<42} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} {'mean ms':>8} {'tiles/s':>8} {'p95 vs base':>11} {'tiles/s vs base':>15}"
    print(hdr)
    print("-" * len(hdr))
    for name, lat, errs, wall in rows:
        rate = len(lat) / wall
        print(f"{name:<42} {len(lat):>8} {errs:>6} {np.percentile(lat, 50):>7.1f} {np.percentile(lat, 95):>7.1f} "
              f"{lat.mean():>8.1f} {rate:>8.0f} {np.percentile(lat, 95) / base_p95:>10.2f}x {rate / base_rate:>14.2f}x")
    ok = np.percentile(rows[0][1], 95) < 50
    print(f"\ntarget p95 < 50 ms for wsi_lab.server: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
