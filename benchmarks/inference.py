"""Inference benchmark: batch-inference tiles/s on the CPU, overlay render times, endpoint latency.

    python benchmarks/inference.py [--quick]

Prints one table. Batch inference over every tile of CMU-1-Small-Region.svs (level 0, batch 64, fp32,
in-process): ``wsi_lab.predict`` from the TileTable against the usual user code (``openslide``
read_region → RGB → tensor → model, batch by batch) for small_cnn (32²), resnet18 (64² in ``--quick``,
else 224²) and the VAE encoder (64²). Overlays: build + render (1024 px, legend, PNG written) of a
200k-tile predictions table: probability heatmap, PCA latent colours. Endpoint: 8 concurrent clients ×
N PNG requests against ``wsi-lab serve-model``'s server on 127.0.0.1 (p50, p95, errors).
``×`` compares with the row named in ``vs`` measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from wsi_lab.slide import open_slide

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU = SLIDES / "CMU-1-Small-Region.svs"


def grid_table(tile: int, limit: int | None):
    import pandas as pd

    with open_slide(CMU) as s:
        w, h = s.dimensions
    ys, xs = np.mgrid[0:h - tile + 1:tile, 0:w - tile + 1:tile]
    t = pd.DataFrame({"slide_id": "cmu", "patient_id": "cmu", "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                      "read_size": tile, "tile_size": tile, "mpp": 0.499, "tissue_fraction": 1.0})
    t = t.iloc[:limit] if limit else t
    t.attrs["wsi_lab"] = {"slides": {"cmu": {"path": str(CMU)}}}
    return t


def openslide_loop(model, coords: np.ndarray, tile: int, batch: int = 64) -> float:
    """tiles/s of the plain loop users write: OpenSlide read_region per tile, batch, run the model."""
    import openslide

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(CMU))
    with torch.no_grad():
        for i in range(0, len(coords), batch):
            tiles = [np.asarray(slide.read_region((int(x), int(y)), 0, (tile, tile)).convert("RGB"))
                     for x, y in coords[i:i + batch]]
            x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
            model(x)
    slide.close()
    return len(coords) / (time.perf_counter() - t0)


def ours(model, table, **kw) -> float:
    from wsi_lab.infer import predict

    t0 = time.perf_counter()
    predict(model, table, batch_size=64, device="cpu", precision="fp32", **kw)
    return len(table) / (time.perf_counter() - t0)


def overlay_times(tmp: Path, n: int = 200_000) -> dict[str, float]:
    import pandas as pd

    from wsi_lab.overlays import predictions as po

    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    p = rng.random(n)
    t = pd.DataFrame({"slide_id": "s", "x": (i % side) * 256, "y": (i // side) * 256, "level": 0, "read_size": 256,
                      "tile_size": 64, "prob_a": 1 - p, "prob_b": p,
                      **{f"z_{k:02d}": rng.normal(size=n).astype(np.float32) for k in range(32)}})
    t.attrs["wsi_lab"] = {"slide_dimensions": [side * 256, side * 256], "predict": {"classes": ["a", "b"]}}
    out = {}
    for kind in ("heatmap", "latent", "heatmap", "latent"):  # second round: warm
        t0, c0 = time.perf_counter(), time.process_time()
        po.render_png(t, po.layer_for(t, kind), tmp / f"{kind}.png", max_size=1024)
        out[kind], out[f"{kind} cpu"] = time.perf_counter() - t0, time.process_time() - c0
    return out


def endpoint(tmp: Path, clients: int, requests: int) -> tuple[float, float, int]:
    from PIL import Image

    from wsi_lab.infer.serve import ModelServer
    from wsi_lab.models import TileClassifier, save_checkpoint

    ckpt = save_checkpoint(tmp / "m.pt", TileClassifier("small_cnn", classes=["a", "b", "c"], input_size=32))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    body = buf.getvalue()
    lat: list[float] = []
    errors = [0]
    with ModelServer(ckpt) as srv:
        def client() -> None:
            for _ in range(requests):
                req = urllib.request.Request(srv.url + "/invocations", data=body, method="POST",
                                             headers={"Content-Type": "image/png"})
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        r.read()
                        ok = r.status == 200
                except (urllib.error.URLError, OSError):
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors[0] += not ok

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ms = np.array(lat) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), errors[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--overlays-only", action="store_true",
                    help="only the 200k-tile heatmap / latent PNG timings (no models, no endpoint)")
    args = ap.parse_args()
    if args.overlays_only:
        with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp:
            times = overlay_times(Path(tmp))
        print(f"\n{'case':<52} {'wall':>8} {'cpu':>8}  unit  target")
        for kind in ("heatmap", "latent"):
            print(f"{kind + ' PNG, 200k tiles (build+render+write)':<52} {times[kind]:>8.2f} "
                  f"{times[kind + ' cpu']:>8.2f}  s     < 1 s")
        return
    if not CMU.exists():
        sys.exit(f"{CMU} not found (set WSI_LAB_SHARED_SLIDES)")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows: list[tuple[str, float, str, str]] = []

    def add(case: str, value: float, unit: str, vs: str = "") -> None:
        rows.append((case, value, unit, vs))
        print(f"  {case}: {value:,.2f} {unit}", file=sys.stderr)

    from wsi_lab.models import VAE, TileClassifier

    limit = 512 if args.quick else None
    r18 = 64 if args.quick else 224
    cases = [("small_cnn", TileClassifier("small_cnn", 3, input_size=32).eval(), 32),
             ("resnet18", TileClassifier("resnet18", 3, input_size=r18).eval(), r18),
             ("VAE encoder", VAE().eval(), 64)]
    for name, model, tile in cases:
        table = grid_table(tile, limit)
        fwd = model.encode if name == "VAE encoder" else model
        with torch.no_grad():  # warm-up: oneDNN primitives and thread pools are built before either timing
            fwd(torch.rand(64, 3, tile, tile).contiguous(memory_format=torch.channels_last))
        mine = f"predict {name} {tile}² (TileTable)"
        add(mine, ours(model, table, **({"recon_error": False} if name == "VAE encoder" else {})), "tiles/s")
        add(f"openslide + torch loop {name} {tile}²", openslide_loop(fwd, table[["x", "y"]].to_numpy(), tile),
            "tiles/s", mine)
    with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp:
        times = overlay_times(Path(tmp))
        add("heatmap PNG, 200k tiles (build+render+write)", times["heatmap"], "s")
        add("PCA latent PNG, 200k tiles (build+render+write)", times["latent"], "s")
        n = 50 if args.quick else 500
        p50, p95, errs = endpoint(Path(tmp), 8, n)
        add(f"endpoint p50, 8 clients × {n} PNG", p50, "ms")
        add(f"endpoint p95, 8 clients × {n} PNG", p95, "ms")
        add("endpoint errors", errs, "count")

    by_name = {r[0]: r[1] for r in rows}
    print(f"\n{'case':<52} {'value':>12}  {'unit':<8} {'×':>6}  vs")
    for case, value, unit, vs in rows:
        ratio = f"{value / by_name[vs]:.2f}" if vs else ""
        print(f"{case:<52} {value:>12,.2f}  {unit:<8} {ratio:>6}  {vs}")


if __name__ == "__main__":
    main()
