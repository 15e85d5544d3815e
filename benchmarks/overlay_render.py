"""Overlay rendering speed: wsi_lab.overlays (vectorised) vs per-tile loops (PIL ImageDraw, numpy slices).

Renders a heatmap of a TileTable of N tiles (a 256-px grid) into 512x512 RGBA for three views: the whole
slide (every tile ~1-2 px), a 4096-px region (~250 tiles) and a 512-px region (~9 tiles). The peers
select the visible tiles with the same boolean test, then draw one rectangle per tile in Python.

    python benchmarks/overlay_render.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from wsi_lab.overlays import colormap_lut, heatmap_layer


def table(n_side_x: int, n_side_y: int) -> pd.DataFrame:
    xs, ys = np.meshgrid(np.arange(n_side_x) * 256, np.arange(n_side_y) * 256)
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "level": 0, "read_size": 256,
                         "v": rng.random(xs.size)})


def _visible(t, box):
    bx, by, bw, bh = box
    x, y = t["x"].to_numpy(float), t["y"].to_numpy(float)
    return np.flatnonzero((x + 256 > bx) & (x < bx + bw) & (y + 256 > by) & (y < by + bh))


def peer_pil(t, box, out, lut):
    bx, by, bw, bh = box
    sx, sy = out[0] / bw, out[1] / bh
    img = Image.new("RGBA", out, (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    v = t["v"].to_numpy()
    for i in _visible(t, box):
        x, y = t["x"].iat[i], t["y"].iat[i]
        c = tuple(int(k) for k in lut[int(v[i] * 255)])
        draw.rectangle([(x - bx) * sx, (y - by) * sy, (x + 256 - bx) * sx - 1, (y + 256 - by) * sy - 1], fill=(*c, 255))
    return np.asarray(img)


def peer_numpy_loop(t, box, out, lut):
    bx, by, bw, bh = box
    sx, sy = out[0] / bw, out[1] / bh
    img = np.zeros((out[1], out[0], 4), np.uint8)
    x, y, v = t["x"].to_numpy(float), t["y"].to_numpy(float), t["v"].to_numpy()
    for i in _visible(t, box):
        c0, c1 = max(0, int(round((x[i] - bx) * sx))), min(out[0], int(round((x[i] + 256 - bx) * sx)))
        r0, r1 = max(0, int(round((y[i] - by) * sy))), min(out[1], int(round((y[i] + 256 - by) * sy)))
        img[r0:r1, c0:c1, :3] = lut[int(v[i] * 255)]
        img[r0:r1, c0:c1, 3] = 255
    return img


def timeit(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (< 60 s)")
    args = ap.parse_args()
    nx, ny = 400, 250  # 100k tiles, a 102400 x 64000 px slide
    t = table(nx, ny)
    lut = colormap_lut("viridis")
    repeat = 2 if args.quick else 5
    t0 = time.perf_counter()
    layer = heatmap_layer(t, "v", vmin=0, vmax=1, opacity=1)
    build = time.perf_counter() - t0
    views = {"whole slide": (0, 0, nx * 256, ny * 256), "4096-px region": (20000, 20000, 4096, 4096),
             "512-px region": (20100, 20100, 512, 512)}
    print(f"{len(t):,} tiles; wsi_lab layer built once in {build * 1e3:.1f} ms; output 512x512 RGBA; best of {repeat}")
    print(f"{'view':<16}{'wsi_lab ms':>12}{'PIL loop ms':>13}{'numpy loop ms':>15}{'PIL/wsi_lab':>13}{'numpy/wsi_lab':>15}")
    for name, box in views.items():
        ours = timeit(lambda: layer.render_region(box, (512, 512)), repeat)  # noqa: B023
        pil = timeit(lambda: peer_pil(t, box, (512, 512), lut), 1 if name == "whole slide" else repeat)  # noqa: B023
        npl = timeit(lambda: peer_numpy_loop(t, box, (512, 512), lut), 1 if name == "whole slide" else repeat)  # noqa: B023
        print(f"{name:<16}{ours * 1e3:>12.2f}{pil * 1e3:>13.2f}{npl * 1e3:>15.2f}{pil / ours:>13.1f}x{npl / ours:>14.1f}x")


if __name__ == "__main__":
    main()
