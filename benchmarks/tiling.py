"""Tiling benchmark: WSI Lab (low-res mask + vectorised grid, Dask extraction) against the naive
full-resolution loop, a CLAM-style per-tile loop and, when it installs in /tmp/peer-venv, histolab.

    python benchmarks/tiling.py [--quick]

Prints one table (times in seconds, throughput, peak RSS of the whole process tree) with ratios
against WSI Lab measured in the same run. Full-slide times of the slow loops are extrapolated from a
timed sample of their tiles (marked ``~``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import wsi_lab  # noqa: E402
import wsi_lab.tissue  # noqa: E402
from wsi_lab.tiling import TilingParams, plan_tiles  # noqa: E402

SHARED = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", REPO.parent / "shared" / "data" / "slides"))
PEER_PY = Path("/tmp/peer-venv/bin/python")


class PeakRSS:
    """Peak resident memory (bytes) of this process and all its children, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._sample())


def naive_loop(slide, limit: int, threshold: float = 120.0) -> tuple[float, int, int]:
    """Read every 256² patch at level 0 and threshold its variance; returns (seconds for the whole
    slide (extrapolated when more than ``limit`` patches), patches, kept in the sample)."""
    W, H = slide.dimensions
    xs, ys = np.arange(0, W - 255, 256), np.arange(0, H - 255, 256)
    total = xs.size * ys.size
    rng = np.random.default_rng(0)
    sample = rng.choice(total, size=min(limit, total), replace=False)
    t0 = time.perf_counter()
    kept = 0
    for i in sample:
        y, x = divmod(int(i), xs.size)
        patch = slide.read_region((int(xs[x]), int(ys[y])), 0, (256, 256))
        kept += patch.astype(np.float32).var() > threshold
    dt = time.perf_counter() - t0
    return dt * total / sample.size, total, kept


def clam_style(slide, tile_l0: int, limit: int) -> tuple[float, int]:
    """CLAM-like planning without OpenCV: saturation thumbnail, blur + Otsu, then a per-tile Python loop
    testing every grid tile's corner points against the tissue mask (its ``isInContour`` check)."""
    from scipy import ndimage

    from wsi_lab.tissue import otsu_threshold

    t0 = time.perf_counter()
    W, H = slide.dimensions
    level = slide.get_best_level_for_downsample(64)  # CLAM's seg_level: downsample ~64
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    img = slide.read_region((0, 0), level, (lw, lh)).astype(np.float32)
    sat = ndimage.uniform_filter((img.max(2) - img.min(2)), size=7)  # (CLAM: cv2.medianBlur)
    mask = sat > otsu_threshold(sat)
    t_mask = time.perf_counter() - t0
    xs, ys = range(0, W - tile_l0 + 1, tile_l0), range(0, H - tile_l0 + 1, tile_l0)
    total = len(xs) * len(ys)
    t1 = time.perf_counter()
    n = kept = 0
    for y in ys:
        for x in xs:
            pts = [(x + tile_l0 // 4, y + tile_l0 // 4), (x + 3 * tile_l0 // 4, y + tile_l0 // 4),
                   (x + tile_l0 // 4, y + 3 * tile_l0 // 4), (x + 3 * tile_l0 // 4, y + 3 * tile_l0 // 4)]
            if any(mask[min(int(py / ds), lh - 1), min(int(px / ds), lw - 1)] for px, py in pts):
                kept += 1
            n += 1
            if n >= limit:
                break
        if n >= limit:
            break
    loop = (time.perf_counter() - t1) * total / max(n, 1)
    return t_mask + loop, total


PEER_SCRIPT = r"""
import json, sys, time
from histolab.slide import Slide
from histolab.masks import TissueMask
import numpy as np
path, tile_l0 = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
s = Slide(path, processed_path="/tmp/peer-out")
m = TissueMask()(s)   # histolab's tissue mask on the slide's thumbnail
t_mask = time.perf_counter() - t0
H, W = m.shape
sx, sy = s.dimensions[0] / W, s.dimensions[1] / H
t1 = time.perf_counter()
n = 0
for y in range(0, s.dimensions[1] - tile_l0 + 1, tile_l0):   # histolab's GridTiler: per-tile mask check
    for x in range(0, s.dimensions[0] - tile_l0 + 1, tile_l0):
        sub = m[int(y / sy):int((y + tile_l0) / sy) + 1, int(x / sx):int((x + tile_l0) / sx) + 1]
        n += sub.mean() >= 0.5
print(json.dumps({"mask_s": t_mask, "plan_s": time.perf_counter() - t1, "kept": int(n)}))
"""


def peer(path: Path, tile_l0: int) -> dict | None:
    if not PEER_PY.exists():
        return None
    try:
        out = subprocess.run([str(PEER_PY), "-c", PEER_SCRIPT, str(path), str(tile_l0)], capture_output=True,
                             text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode:
        sys.stderr.write(f"histolab peer failed on {path.name}: {out.stderr.strip().splitlines()[-1:]}\n")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def extraction(path: Path, params: TilingParams, client, limit: int, out: Path) -> dict:
    """tiles/s and MP/s of extracting (read + resize + JPEG) the first ``limit`` planned tiles on Dask."""
    from wsi_lab.tiling.tasks import chunk_task

    table = plan_tiles(path, params.tile_size, params.mpp, mask=params.method, min_tissue=params.min_tissue).head(limit)
    workers = len(client.scheduler_info()["workers"])
    jdir = out / f"jpeg-{workers}"
    jdir.mkdir(parents=True, exist_ok=True)
    chunks = [table.iloc[i:i + 16] for i in range(0, len(table), 16)]
    pj = params.to_json()
    client.run(lambda: __import__("wsi_lab.tiling.tasks"))  # warm imports on the workers
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        futs = [client.submit(chunk_task, str(path), pj, c, None, str(jdir), pure=False) for c in chunks]
        res = client.gather(futs)
        dt = time.perf_counter() - t0
    n = sum(r[1] for r in res)
    mp = sum(r[2] for r in res)
    return {"tiles_s": n / dt, "mp_s": mp / dt, "rss": rss.peak, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small synthetic slide, small samples (< 60 s)")
    args = ap.parse_args()
    from wsi_lab.testing import make_slide

    tmp = Path(tempfile.gettempdir()) / "wsi_lab_bench"
    tmp.mkdir(exist_ok=True)
    size = (12_000, 9_000) if args.quick else (100_000, 80_000)
    syn = tmp / f"synthetic-{size[0]}x{size[1]}.svs"
    if not syn.exists():
        t0 = time.perf_counter()
        make_slide(syn, *size, mpp=0.25, tissue_fraction=0.4, seed=0)
        sys.stderr.write(f"made {syn.name} in {time.perf_counter() - t0:.1f} s\n")
    slides = [syn] + [SHARED / n for n in ("CMU-1-Small-Region.svs", "test3-DAPI-2-387.ndpi", "OS-1-detail.ome.tif")
                      if (SHARED / n).exists()]
    sample = 60 if args.quick else 1000
    extract_n = 120 if args.quick else 2000
    from distributed import Client, LocalCluster

    clusters = {w: LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address="127.0.0.1:0") for w in (1, 2)}
    clients = {w: Client(c) for w, c in clusters.items()}
    with wsi_lab.open_slide(slides[-1]) as s:  # warm up imports (scipy, PIL, pyarrow) before timing
        plan_tiles(s, 64, mask="otsu", min_tissue=0.0)
    rows = []
    for path in slides:
        with wsi_lab.open_slide(path) as s:
            mpp0 = s.mpp[0]
            params = TilingParams(tile_size=256, mpp=round(max(0.5, mpp0), 3), method="otsu", min_tissue=0.5)
            wsi_lab.tissue.clear_feature_cache()
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                mask = wsi_lab.detect_tissue(s, "otsu")
                t_mask = time.perf_counter() - t0
                t0 = time.perf_counter()
                table = plan_tiles(s, 256, params.mpp, mask=mask, min_tissue=0.5)
                t_plan = time.perf_counter() - t0
            naive_s, n_patches, _ = naive_loop(s, sample)
            tile_l0 = int(round(256 * params.mpp / mpp0))
            clam_s, _ = clam_style(s, tile_l0, sample * 50)
        pr = peer(path, tile_l0)
        ex = {w: extraction(path, params, clients[w], extract_n, tmp / "out")
              for w in (1, 2)} if (path == syn or not args.quick) else None
        ours = t_mask + t_plan
        rows.append({
            "slide": path.name[:28], "size": f"{s.dimensions[0]}x{s.dimensions[1]}", "tiles": len(table),
            "mask_s": t_mask, "plan_s": t_plan, "ours_s": ours, "plan_rss_mb": rss.peak / 2**20,
            "naive_s": naive_s, "naive_x": naive_s / ours, "clam_s": clam_s, "clam_x": clam_s / ours,
            "histolab_s": None if pr is None else pr["mask_s"] + pr["plan_s"],
            "histolab_x": None if pr is None else (pr["mask_s"] + pr["plan_s"]) / ours,
            **({k: None for k in ("ex1_tiles_s", "ex1_mp_s", "ex2_tiles_s", "ex2_mp_s", "ex_scale", "ex_rss_mb")} if ex is None else {
                "ex1_tiles_s": ex[1]["tiles_s"], "ex1_mp_s": ex[1]["mp_s"], "ex2_tiles_s": ex[2]["tiles_s"],
                "ex2_mp_s": ex[2]["mp_s"], "ex_scale": ex[2]["tiles_s"] / ex[1]["tiles_s"],
                "ex_rss_mb": max(ex[1]["rss"], ex[2]["rss"]) / 2**20}),
        })
    for w in (1, 2):
        clients[w].close()
        clusters[w].close()
    cols = [("slide", "{}"), ("size", "{}"), ("tiles", "{}"), ("mask_s", "{:.2f}"), ("plan_s", "{:.3f}"),
            ("plan_rss_mb", "{:.0f}"), ("naive_s", "~{:.1f}"), ("naive_x", "{:.0f}x"), ("clam_s", "~{:.2f}"),
            ("clam_x", "{:.1f}x"), ("histolab_s", "{:.2f}"), ("histolab_x", "{:.1f}x"), ("ex1_tiles_s", "{:.0f}"),
            ("ex1_mp_s", "{:.1f}"), ("ex2_tiles_s", "{:.0f}"), ("ex2_mp_s", "{:.1f}"), ("ex_scale", "{:.2f}x"),
            ("ex_rss_mb", "{:.0f}")]
    cells = [[("-" if r[c] is None else f.format(r[c])) for c, f in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, (c, _) in enumerate(cols)]
    print("  ".join(c.ljust(w) for (c, _), w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"\nours = mask + plan (tile 256 at max(0.5, native) µm/px, otsu, min_tissue 0.5); *_x = peer time / ours. "
          f"naive/clam: ~ extrapolated from {sample} sampled patches. ex1/ex2: Dask extraction of up to {extract_n} "
          f"tiles (read+resize+JPEG) on 1/2 workers; RSS = peak of the whole process tree. "
          f"histolab: {'measured in /tmp/peer-venv' if any(r['histolab_s'] is not None for r in rows) else 'not installed in /tmp/peer-venv (-)'}; "
          f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
