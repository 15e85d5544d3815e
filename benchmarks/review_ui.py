"""Review and latent-explorer benchmark: PCA and k-means of 200k tiles' latents, the explorer's first draw
and brush round trip, the review panel's next tile after a key press.

    python benchmarks/review_ui.py [--tiles 200000] [--quick]

Prints one table. The table: ``--tiles`` 5-px tiles over CMU-1-Small-Region.svs (one slide, so every brushed
point lands on the slide shown) with 32 latents drawn around 6 centres, ``prob_*``/``pred`` columns.

- PCA (2 and 3 components) and k-means (k=6) of the 200k × 32 latents: ``wsi_lab.overlays.predictions``
  (``project_latents``, ``kmeans``: the one implementation the overlays and the explorer call) against the
  implementation before this change (float64 eigh of the centred data; Lloyd over all rows in float64), measured in the same run: ``×`` is old time / new time.
- Explorer first draw (kernel side): read, embed (PCA; no k-means: the clusters are computed when
  coloured by) + the scatter widget + its state serialised for the browser (the points buffers) + the
  slide viewer; target < 1 s. Ours (``scatter="canvas"``: Canvas 2D, binary buffers) against
  jupyter-scatter's (which needs every colour column, the clusters too), interleaved in the same run.
- Brush round trip (kernel side): a selection of 10,000 points arriving from the browser → their tiles as
  the viewer's highlight layer (state ready to sync) ; gallery pictures counted separately; target < 100 ms.
- Review: next tile after a key press (``→``: the gallery's next tile in hand, both viewers told); a
  decision key (``1``: relabel, saved to Parquet + GeoJSON, then the next tile); target < 100 ms.
- Browser side (a real JupyterLab + headless Chromium, unless ``--no-browser`` or Chromium is missing): from
  the explorer cell's execution to the scatter's canvas holding drawn points (``--tiles`` points), ours
  and jupyter-scatter's interleaved (median of ≥ 2 each); target < 1 s. From a programmatic selection
  (``ex.select(...)`` run in a cell, 10,000 points) to the highlight drawn on the slide (the viewer's
  canvas holding the boxes, its legend entry shown); target < 100 ms.
  Both timed in the page (``performance.now()``), the drawn check polled every animation frame, so a long
  frame (jupyter-scatter redrawing through software WebGL in headless Chromium) delays what is counted.
  The polled check starts only once the cell's run has returned to Playwright, so a long frame after that
  (the scatter redrawing its selection) is counted even when the slide was painted before it: with this
  viewer the page also records the start of the first frame after the boxes were drawn (on screen by then).
  Broken down: the first draw into cell start → the points message in the page (the kernel: read, embed,
  build, serialise) and → drawn (the browser), with the message sizes; the selection into cell start → the
  boxes' buffer in the page and → drawn by the viewer's code (before the frame is painted).
  The whole brush round trip from the page: a lasso drawn with the mouse around a patch of points in our
  scatter → the first frame with their tiles' boxes on the slide, timed from the mouse-up; target < 100 ms.
  The scatter holds every point's box on the slide shown and hands the selected ones to the viewer in the
  page (the kernel hears of both afterwards and fills the gallery), so the rows are the browser's
  point-in-polygon, the hand-over and the viewer's draw, the messages to the kernel, the scatter's redraw of
  its selection, and, after the slide shows the tiles, the kernel's handling (its boxes, the gallery).
- ``--browser-only``: only the browser rows (a few minutes less); ``--lasso-only``: only the lasso rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU = SLIDES / "CMU-1-Small-Region.svs"


def old_project_latents(x: np.ndarray) -> np.ndarray:
    """The PCA before this change (kept here only to measure against)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    comps = centred @ evecs[:, ::-1][:, :3]
    comps *= np.where(comps.sum(0) < 0, -1.0, 1.0)
    return comps


def old_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """The k-means before this change (kept here only to measure against)."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.clip(np.min([((x - c) ** 2).sum(1) for c in centres], axis=0), 0, None)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    labels = np.zeros(len(x), np.int64)
    sq = (x ** 2).sum(1)
    for it in range(iters):
        new = (sq[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]).argmin(1)
        if (new == labels).all() and it > 0:
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels


def table(n: int, dims: int = 32, tile: int = 5) -> pd.DataFrame:
    from wsi_lab.slide import open_slide

    with open_slide(CMU) as s:
        w, h = s.dimensions
    ys, xs = np.mgrid[0:h - tile + 1:tile, 0:w - tile + 1:tile]
    xs, ys = xs.ravel()[:n], ys.ravel()[:n]
    if len(xs) < n:
        raise SystemExit(f"{CMU.name} holds only {len(xs)} tiles of {tile} px; ask for fewer --tiles")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, dims)) * 3
    z = (centres[rng.integers(6, size=n)] + rng.normal(size=(n, dims))).astype(np.float32)
    t = pd.DataFrame({"slide_id": "cmu", "x": xs, "y": ys, "level": 0, "read_size": tile, "tile_size": tile})
    for i in range(dims):
        t[f"z_{i:02d}"] = z[:, i]
    p = 1 / (1 + np.exp(-z[:, 0]))
    t["prob_normal"], t["prob_tumour"] = (1 - p).astype(np.float32), p.astype(np.float32)
    t["pred"] = np.where(p > 0.5, "tumour", "normal")
    t.attrs["wsi_lab"] = {"slides": {"cmu": {"path": str(CMU)}}, "predict": {"classes": ["normal", "tumour"]}}
    return t


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="one repeat; the old k-means once")
    ap.add_argument("--no-browser", action="store_true", help="kernel-side numbers only")
    ap.add_argument("--browser-only", action="store_true", help="the browser-side numbers only")
    ap.add_argument("--lasso-only", action="store_true", help="only the lasso round trip, broken down (browser)")
    args = ap.parse_args()
    repeat = 1 if args.quick else 3
    from wsi_lab.overlays.predictions import kmeans, project_latents

    t = table(args.tiles)
    x = t[[c for c in t.columns if c.startswith("z_")]].to_numpy(np.float32)
    rows: list[tuple[str, float, str, str, str]] = []

    def add(name: str, value: float, unit: str, target: str = "", vs: str = "") -> None:
        rows.append((name, value, unit, target, vs))

    if args.browser_only or args.lasso_only:
        for name, value, unit, target in browser_timings(t, repeat, lasso_only=args.lasso_only):
            add(name, value, unit, target, "")
        _print(rows)
        return
    project_latents(x[:1000])
    new_pca = best(lambda: project_latents(x, n_components=2), repeat)
    new_pca3 = best(lambda: project_latents(x), repeat)
    old_pca = best(lambda: old_project_latents(x), repeat)
    add(f"PCA 2-D, {len(x):,} × {x.shape[1]}", new_pca, "s", "< 1 s", f"old {old_pca:.3f} s: {old_pca / new_pca:.1f}×")
    add(f"PCA 3-D (latent colours), {len(x):,}", new_pca3, "s", "< 1 s", f"old {old_pca:.3f} s: {old_pca / new_pca3:.1f}×")
    new_km = best(lambda: kmeans(x, 6), repeat)
    old_km = best(lambda: old_kmeans(x, 6), 1)
    add(f"k-means k=6, {len(x):,} × {x.shape[1]}", new_km, "s", "< 1 s", f"old {old_km:.2f} s: {old_km / new_km:.1f}×")
    def inertia(labels: np.ndarray) -> float:
        """Mean squared distance of a tile to its cluster's mean (lower is a better clustering)."""
        return float(sum(((x[labels == j] - x[labels == j].mean(0)) ** 2).sum() for j in np.unique(labels)) / len(x))

    new_i, old_i = inertia(kmeans(x, 6)), inertia(old_kmeans(x, 6))
    add("k-means inertia per tile (lower: better)", new_i, "", "≤ old", f"old {old_i:.2f}: {old_i / new_i:.2f}×")

    from wsi_lab.ui.explorer import SCATTERS, LatentExplorer

    def first_draw(kind: str) -> LatentExplorer:
        ex = LatentExplorer(t, tile_source="server", scatter=kind)
        ex.plot.get_state()  # what goes to the browser: the points buffers and the encodings
        return ex

    for kind in SCATTERS:
        first_draw(kind).close()  # warm-up (imports)
    draw_times: dict[str, list[float]] = {k: [] for k in SCATTERS}
    for _ in range(repeat):  # interleaved
        for kind in SCATTERS:
            t0 = time.perf_counter()
            first_draw(kind).close()
            draw_times[kind].append(time.perf_counter() - t0)
    ours, theirs = min(draw_times["canvas"]), min(draw_times["jupyter-scatter"])
    add(f"explorer first draw (kernel), {len(t):,} points", ours, "s", "< 1 s", f"jupyter-scatter {theirs:.2f} s: {theirs / ours:.1f}×")
    ex = first_draw("canvas")
    from wsi_lab.ui.scatter import ScatterPlot

    assert isinstance(ex.scatter, ScatterPlot)
    rng = np.random.default_rng(1)
    brush, total = [], []
    for _ in range(5):
        sel = np.sort(rng.choice(len(t), 10_000, replace=False)).astype(np.uint32)
        t0 = time.perf_counter()
        ex.scatter.set_state({"selection": memoryview(sel.tobytes())})  # as the browser's lasso sends it
        total.append(time.perf_counter() - t0)
        brush.append(ex.brush_ms / 1000)
    add("brush → tiles on the slide (10k points)", statistics.median(brush) * 1000, "ms", "< 100 ms", "")
    add("brush → + gallery of 12 tiles read", statistics.median(total) * 1000, "ms", "", "")
    ex.close()

    from wsi_lab.ui.review import ReviewPanel

    review_rows = t.iloc[:2000].copy()
    review_rows["read_size"] = review_rows["tile_size"] = 64
    review_rows.attrs = t.attrs
    with tempfile.TemporaryDirectory() as tmp:
        panel = ReviewPanel(review_rows, Path(tmp) / "review", reviewer="bench", n=12, tile_source="server")
        panel.top.index = 0
        nxt, dec = [], []
        for i in range(10):
            panel.top.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
            nxt.append(panel.last_key_ms)
        for _ in range(8):
            panel.top.press("1")
            dec.append(panel.last_key_ms)
        panel.close()
    add("review: next tile after a key press", statistics.median(nxt), "ms", "< 100 ms", "")
    add("review: relabel key (saved) + next tile", statistics.median(dec), "ms", "< 100 ms", "")

    if not args.no_browser:
        for name, value, unit, target in browser_timings(t, repeat):
            add(name, value, unit, target, "")

    _print(rows)


def _print(rows: list[tuple[str, float, str, str, str]]) -> None:
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'measure':<44} {'value':>10} {'unit':<4} {'target':<10} vs (same run)")
    for name, value, unit, target, vs in rows:
        print(f"{name:<44} {value:>10.3f} {unit:<4} {target:<10} {vs}")


_CANVAS_DRAWN = """() => {  // our scatter: the last explorer's canvas holds its points (set when drawn)
    const e = [...document.querySelectorAll('.wsi-lab-explorer .wsi-scatter')].pop();
    return e && Number(e.dataset.points) > 0 && e.dataset.firstDrawnAt ? Number(e.dataset.firstDrawnAt) : false;
}"""
_SCATTER_DRAWN = """() => {
    const ex = [...document.querySelectorAll('.wsi-lab-explorer')].pop();
    const c = [...(ex ? ex.querySelectorAll('canvas') : [])].filter(e => !e.closest('.wsi-viewer'))
        .sort((a, b) => b.width * b.height - a.width * a.height)[0];
    if (!c || !c.width || !c.height) return false;
    const ctx = c.getContext('2d');  // jupyter-scatter copies its WebGL frame to a 2-D canvas
    if (!ctx) return false;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4 * 13) if (d[i] > 0) n++;
    return n > 100 ? performance.now() : false;
}"""
_HIGHLIGHT_SHOWN = """() => {
    const v = document.querySelector('.wsi-explorer-viewer .wsi-viewer');
    return v && v.querySelector(".wsi-legend-entry[data-layer='selected tiles']") && Number(v.dataset.highlightDrawn) > 0
        ? performance.now() : false;
}"""
_SETTLED = """() => new Promise(done => {  // five frames in a row under 50 ms apart: nothing left redrawing
    let last = performance.now(), calm = 0;
    const stop = performance.now() + 10000;
    const f = (t) => { calm = t - last < 50 ? calm + 1 : 0; last = t;
                       if (calm >= 5 || t > stop) done(true); else requestAnimationFrame(f); };
    requestAnimationFrame(f);
})"""
_HIGHLIGHT_GONE = "() => !document.querySelector(\".wsi-explorer-viewer .wsi-legend-entry[data-layer='selected tiles']\")"


def _run_cell(page, code: str) -> float:
    """Put ``code`` in a new last cell and start it; returns the page's clock at the start (ms)."""
    from tests.jupyter_env import run_command

    page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget.content;
        nb.activeCellIndex = nb.widgets.length - 1; }""")
    run_command(page, "notebook:insert-cell-below")
    page.evaluate("(code) => window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.setSource(code)",
                  code)
    t0 = float(page.evaluate("performance.now()"))
    run_command(page, "notebook:run-cell")
    return t0


def browser_timings(t: pd.DataFrame, repeat: int, lasso_only: bool = False) -> list[tuple[str, float, str, str]]:
    """The explorer's first draw and a selection's highlight, in a real JupyterLab + headless Chromium."""
    import shutil

    from tests.jupyter_env import (
        browser_available,
        browser_page,
        jupyter_server,
        open_notebook,
        run_all_cells,
        run_code,
        wait_kernel_idle,
        write_notebook,
    )
    from wsi_lab.data.table import write_table
    from wsi_lab.ui.explorer import SCATTERS

    if not browser_available():
        print("browser timings skipped: playwright or Chromium missing", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(CMU, root / CMU.name)  # under the Jupyter root: the server extension serves its tiles
        table = t.assign(patient_id="p", mpp=0.5, tissue_fraction=1.0)
        table.attrs = {"wsi_lab": {**t.attrs["wsi_lab"], "slides": {"cmu": {"path": str(root / CMU.name)}}}}
        write_table(table, root / "preds.parquet")
        write_notebook(root / "bench.ipynb", ["import numpy as np\nfrom wsi_lab.ui.explorer import LatentExplorer\n"
                                              "import jscatter"])
        out: list[tuple[str, float, str, str]] = []
        with jupyter_server(root, app="lab") as srv, browser_page((1280, 1000), timeout_ms=120_000) as page:
            frames: list[tuple[float, int]] = []  # (Python clock, bytes) of every frame the page receives
            page.on("websocket", lambda ws: ws.on("framereceived", lambda p: frames.append((time.perf_counter(), len(p)))))
            open_notebook(page, srv, "bench.ipynb")
            run_all_cells(page)  # the imports: not part of the draw
            if lasso_only:
                _run_cell(page, "ex = LatentExplorer('preds.parquet', height=360)\nex")
                page.wait_for_function(_CANVAS_DRAWN, polling="raf", timeout=120_000)
                page.wait_for_selector(".wsi-explorer-viewer .wsi-viewer[data-ready='1']", timeout=60_000)
                wait_kernel_idle(page)
                page.evaluate(_SETTLED)
                out.extend(_lasso_timings(page, max(5, 3 * repeat)))
                print(f"load average during the run: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
                return out
            draws: dict[str, list[tuple[float, float, int, int]]] = {k: [] for k in SCATTERS}
            views: list[tuple[float, float]] = []
            reps = max(2, repeat)
            for rep in range(reps):  # interleaved: jupyter-scatter's, then ours, in the same page
                for kind in SCATTERS[::-1]:
                    frames.clear()
                    py0 = time.perf_counter()
                    t0 = _run_cell(page, f"ex = LatentExplorer('preds.parquet', height=360, scatter={kind!r})\nex")
                    check = _CANVAS_DRAWN if kind == "canvas" else _SCATTER_DRAWN
                    drawn = float(page.wait_for_function(check, polling="raf", timeout=120_000).json_value())
                    big = max(frames, key=lambda f: f[1])  # the scatter's points (binary buffers)
                    draws[kind].append(((drawn - t0) / 1000, big[0] - py0, big[1], sum(n for _, n in frames)))
                    if kind == "canvas":  # the page's clock: the scatter's view made, its points rasterised
                        at = page.evaluate("() => { const d = [...document.querySelectorAll('.wsi-scatter')].pop()"
                                           ".dataset; return [Number(d.renderAt), Number(d.drawMs)]; }")
                        views.append(((at[0] - t0) / 1000, at[1]))
                    wait_kernel_idle(page)
                    page.evaluate(_SETTLED)
                    if rep < reps - 1 or kind != SCATTERS[0]:  # ours stays, the last time, for the selections
                        _run_cell(page, "ex.close()")
                        wait_kernel_idle(page)
                        page.evaluate(_SETTLED)
            wait_kernel_idle(page)
            kernel = run_code(page, "import time\n_t = time.perf_counter()\n"  # the same build, not shown
                              "_e = LatentExplorer('preds.parquet', height=360); _e.plot.get_state()\n"
                              "print('KERNEL', time.perf_counter() - _t); _e.close()")
            kernel_s = float(kernel[kernel.index("KERNEL") + 6:].split()[0])
            for kind in SCATTERS:
                total, arrived, big_n, all_n = sorted(draws[kind])[len(draws[kind]) // 2]  # the median run
                out.append((f"explorer first draw (browser, {kind}), {len(t):,} points", total, "s",
                            "< 1 s" if kind == "canvas" else ""))
                if kind == "canvas" and views:  # the page's clock only
                    made = statistics.median(v[0] for v in views)
                    out.append(("  of which: the explorer built in the page's kernel", kernel_s, "s", ""))
                    out.append(("  of which: cell start → the scatter's view made", made, "s", ""))
                    out.append(("  of which: view made → points drawn", total - made, "s", ""))
                    out.append(("  rasterising the points (JS)", statistics.median(v[1] for v in views), "ms", ""))
                else:  # the Python clock (websocket frames) against the page's
                    out.append(("  of which: cell start → points in the page", arrived, "s", ""))
                    out.append(("  of which: points in the page → drawn", total - arrived, "s", ""))
                out.append((f"  points message (all: {all_n / 1e6:.1f} MB)", big_n / 1e6, "MB", ""))
            page.wait_for_selector(".wsi-explorer-viewer .wsi-viewer[data-ready='1']", timeout=60_000)
            wait_kernel_idle(page)
            page.evaluate(_SETTLED)
            times, arrive, painted, frame = [], [], [], []
            for k in range(max(3, repeat)):
                t0 = _run_cell(page, f"ex.select(np.random.default_rng({k}).choice({len(t)}, 10_000, replace=False))")
                shown = float(page.wait_for_function(_HIGHLIGHT_SHOWN, polling="raf", timeout=60_000).json_value())
                times.append(shown - t0)
                at = page.evaluate("() => { const d = document.querySelector('.wsi-explorer-viewer .wsi-viewer').dataset;"
                                   " return d.highlightSetAt ? [Number(d.highlightSetAt), Number(d.highlightDrawnAt),"
                                   " Number(d.highlightFrameAt)] : null; }")
                if at:  # the boxes' buffer reached the viewer, and the viewer drew them (the page's clock)
                    arrive.append(at[0] - t0)
                    painted.append(at[1] - t0)
                    frame.append(at[2] - t0)
                wait_kernel_idle(page)
                _run_cell(page, "ex.action('clear')")
                page.wait_for_function(_HIGHLIGHT_GONE, timeout=60_000)
                wait_kernel_idle(page)
                page.evaluate(_SETTLED)  # the scatter's redraw after the clear ends before the next selection
            out.append(("selection → tiles on the slide (browser, 10k)", statistics.median(times), "ms", "< 100 ms"))
            if arrive:
                out.append(("  of which: cell start → boxes in the page", statistics.median(arrive), "ms", ""))
                out.append(("  of which: cell start → boxes drawn (JS)", statistics.median(painted), "ms", ""))
                out.append(("  cell start → next frame (boxes on screen)", statistics.median(frame), "ms", "< 100 ms"))
            out.extend(_lasso_timings(page, max(3, repeat)))
        print(f"load average during the run: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        return out


_LASSO_UP = """() => { window._lassoUpAt = 0;
    const up = () => { if (!window._lassoUpAt) window._lassoUpAt = performance.now(); };
    document.addEventListener('pointerup', up, {capture: true, once: true});
    document.addEventListener('mouseup', up, {capture: true, once: true}); }"""
_POINT_AT = """(q) => {  // CSS (x, y) in the scatter's canvas of a drawn point: the q-quantile by x of the drawn pixels
    const c = document.querySelector('.wsi-lab-explorer .wsi-scatter canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, pts = [];
    for (let i = 3; i < d.length; i += 4 * 7) if (d[i] > 0) pts.push((i - 3) / 4);
    pts.sort((a, b) => a % c.width - b % c.width);
    const p = pts[Math.floor(q * (pts.length - 1))], s = c.getBoundingClientRect().width / c.width;
    return [(p % c.width) * s, Math.floor(p / c.width) * s]; }"""
_LASSO_SHOWN = """() => { const d = document.querySelector('.wsi-explorer-viewer .wsi-viewer').dataset;
    const s = document.querySelector('.wsi-lab-explorer .wsi-scatter').dataset;
    const up = window._lassoUpAt, at = Number(d.highlightFrameAt);
    return up && at > up && Number(d.highlightCount) > 0 ? [at - up, Number(d.highlightDrawnAt) - up,
        Number(d.highlightCount), ...s.lassoMs.split(' ').map(Number), Number(s.lassoSentAt) - up,
        Number(d.highlightSetAt) - up, Number(s.drawMs)] : false; }"""


def _lasso_timings(page, reps: int) -> list[tuple[str, float, str, str]]:
    """A lasso drawn with the mouse in our scatter → its tiles' boxes on the slide's next frame: the page's clock from
    the mouse-up (the browser's selection, the kernel's boxes, the viewer's draw: the whole brush round trip)."""
    import math

    from tests.jupyter_env import wait_kernel_idle

    canvas = page.locator(".wsi-lab-explorer .wsi-scatter canvas").first
    from tests.jupyter_env import run_code

    frames, drawn, counts, parts = [], [], [], []
    for k in range(reps):
        _run_cell(page, "ex.action('clear')")
        page.wait_for_function(_HIGHLIGHT_GONE, timeout=60_000)
        wait_kernel_idle(page)
        canvas.scroll_into_view_if_needed()  # a new cell scrolls the notebook: find the plot again
        page.evaluate(_SETTLED)
        box = canvas.bounding_box()
        if not box:
            return []
        r = min(box["width"], box["height"]) * 0.1
        px, py = page.evaluate(_POINT_AT, (k % 3 + 1) / 4)  # a different patch of points each time
        cx, cy = box["x"] + px, box["y"] + py
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for j in range(1, 25):
            a = 2 * math.pi * j / 24
            page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a))
        page.evaluate(_LASSO_UP)
        page.mouse.up()
        got = page.wait_for_function(_LASSO_SHOWN, polling="raf", timeout=60_000).json_value()
        frames.append(float(got[0]))
        drawn.append(float(got[1]))
        counts.append(int(got[2]))
        wait_kernel_idle(page)
        kernel = run_code(page, "print('KERNEL', ex.scatter.select_ms, ex.brush_ms, ex.gallery_ms)")
        parts.append([*got[3:], *map(float, kernel[kernel.index("KERNEL") + 6:].split()[:3])])
    med = [statistics.median(p[i] for p in parts) for i in range(len(parts[0]))]
    return [(f"lasso in the scatter → tiles on the slide (browser, median {int(statistics.median(counts)):,} tiles)",
             statistics.median(frames), "ms", "< 100 ms"),
            ("  of which: mouse-up → boxes drawn (JS)", statistics.median(drawn), "ms", ""),
            ("  the browser's point-in-polygon (JS)", med[0], "ms", ""),
            ("  the boxes handed to the viewer + drawn (JS)", med[1], "ms", ""),
            ("  both sent to the kernel (JS)", med[2], "ms", ""),
            ("  mouse-up → the points sent (JS)", med[3], "ms", ""),
            ("  mouse-up → the boxes in the viewer", med[4], "ms", ""),
            ("  the scatter's redraw (JS)", med[5], "ms", ""),
            ("  kernel, after: the lasso handled (all)", med[6], "ms", ""),
            ("  kernel, after: of which the boxes", med[7], "ms", ""),
            ("  kernel, after: of which the gallery", med[8], "ms", "")]


if __name__ == "__main__":
    main()
