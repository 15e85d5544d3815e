/**
 * ScatterPlot front end (anywidget ESM; model in wsi_lab/ui/scatter.py): a Canvas-2D rasteriser of many
 * points. `x`, `y` (float32) and `codes` (uint8, into `palette`) arrive as binary buffers; every frame is
 * one pass over the points into an ImageData (a `point_size` square each), so 200k points take tens of
 * ms with no GPU. Selected points (`selection`, uint32 indices) are drawn on top in their colours, the
 * others faded. Mouse: drag = lasso (point-in-polygon here, the indices go to the kernel as ONE binary
 * buffer: the `selection` trait, which the kernel does not echo back), shift-drag or the pan tool = pan,
 * wheel = zoom, double click = reset. With `link` and `boxes` (float32 [x, y, w, h] per point: its tile on
 * the linked viewer's slide, NaN when on another), a lasso also hands the selected tiles' boxes to that
 * viewer in the page at once (link.ts), before the kernel hears of it.
 * `data-points`, `data-drawn` (frames drawn), `data-render-at` / `data-first-drawn-at` (the first frame
 * with points) / `data-drawn-at` (page clock, ms), `data-draw-ms` (the last frame's rasterising),
 * `data-selected`, `data-lasso-ms` (the last lasso's point-in-polygon, hand-over to the linked viewer and
 * send to the kernel, ms, space-separated) and `data-lasso-sent-at` on the root are for tests and benchmarks.
 */

import { publishBoxes } from "./link";

interface Model {
  get(name: string): any;
  on(event: string, cb: () => void): void;
  off(event?: string | null, cb?: (() => void) | null): void;
  set(name: string, value: unknown): void;
  save_changes(): void;
}

function typed<T>(value: unknown, make: (b: ArrayBuffer) => T, size: number): T {
  let buf = new ArrayBuffer(0);
  if (value instanceof ArrayBuffer) buf = value;
  else if (value && ArrayBuffer.isView(value)) {
    buf = value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength) as ArrayBuffer;
  }
  return make(buf.byteLength % size ? buf.slice(0, buf.byteLength - (buf.byteLength % size)) : buf);
}

function rgba(hex: string, fade: number): number {
  const s = hex.replace("#", "");
  let r = parseInt(s.slice(0, 2), 16) || 0, g = parseInt(s.slice(2, 4), 16) || 0, b = parseInt(s.slice(4, 6), 16) || 0;
  r = Math.round(r + (255 - r) * fade); g = Math.round(g + (255 - g) * fade); b = Math.round(b + (255 - b) * fade);
  return (255 << 24) | (b << 16) | (g << 8) | r; // little-endian RGBA in a Uint32 view
}

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c] as string);
}

function render({ model, el }: { model: Model; el: HTMLElement }) {
  const root = document.createElement("div");
  root.className = "wsi-scatter";
  root.dataset.renderAt = String(performance.now());
  root.style.cssText = "position:relative;width:100%;user-select:none;background:#fff;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "display:block;width:100%;cursor:crosshair;touch-action:none;";
  const overlay = document.createElement("canvas");  // the lasso being drawn
  overlay.style.cssText = "position:absolute;left:0;top:0;width:100%;pointer-events:none;";
  const legend = document.createElement("div");
  legend.className = "wsi-scatter-legend";
  legend.style.cssText = "position:absolute;right:4px;top:4px;max-height:90%;overflow:auto;font:11px sans-serif;"
    + "background:rgba(255,255,255,.85);padding:3px 5px;border-radius:3px;pointer-events:none;";
  const tools = document.createElement("div");
  tools.style.cssText = "position:absolute;left:4px;top:4px;display:flex;gap:2px;";
  const tool = (name: string, text: string, tip: string) => {
    const b = document.createElement("button");
    b.className = `wsi-scatter-${name}`;
    b.textContent = text;
    b.title = tip;
    b.style.cssText = "font:11px sans-serif;padding:1px 5px;";
    tools.appendChild(b);
    return b;
  };
  const lassoBtn = tool("lasso", "Lasso", "drag to select points (shift-drag pans)");
  const panBtn = tool("pan", "Pan", "drag to move the view; the wheel zooms");
  const resetBtn = tool("reset", "Reset", "show all points (or double click)");
  root.append(canvas, overlay, legend, tools);
  el.appendChild(root);

  let xs = new Float32Array(0), ys = new Float32Array(0), codes = new Uint8Array(0);
  let sel = new Uint32Array(0);
  let boxes = new Float32Array(0);  // the points' tiles on the linked viewer's slide (NaN: not on it)
  let full = new Uint32Array(256), faded = new Uint32Array(256);
  let bx0 = 0, by0 = 0, bspan = 1;  // data bounds: the square of side bspan from (bx0, by0)
  let zoom = 1, cx = 0.5, cy = 0.5;  // view: centre (fraction of the bounds square) and zoom
  let mode: "lasso" | "pan" = "lasso";
  let frames = 0, pending = 0;
  // the points' rasters (every point, in full and in faded colours) for the current view and colouring
  let generation = 0, lastKey = "";
  const fullBase = { key: "", px: new Uint32Array(0) }, fadedBase = { key: "", px: new Uint32Array(0) };
  const dpr = () => window.devicePixelRatio || 1;

  function loadPoints() {
    xs = typed(model.get("x"), (b) => new Float32Array(b), 4);
    ys = typed(model.get("y"), (b) => new Float32Array(b), 4);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i], y = ys[i];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (!(x1 >= x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    bspan = Math.max(x1 - x0, y1 - y0) * 1.04 || 1;
    bx0 = (x0 + x1) / 2 - bspan / 2;
    by0 = (y0 + y1) / 2 - bspan / 2;
    root.dataset.points = String(xs.length);
    generation++;
  }
  function loadColours() {
    codes = typed(model.get("codes"), (b) => new Uint8Array(b), 1);
    const pal: string[] = model.get("palette") || [];
    full = new Uint32Array(256); faded = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      const c = pal[i] || pal[pal.length - 1] || "#1f77b4";
      full[i] = rgba(c, 0); faded[i] = rgba(c, 0.65);
    }
    const lg = model.get("legend") || {}, title = esc(model.get("title") || "");
    let h = title ? `<b>${title}</b><br>` : "";
    if (lg.kind === "categorical") {
      h += (lg.entries || []).map(([label, c]: [string, string]) =>
        `<div class="wsi-scatter-entry"><span style="display:inline-block;width:9px;height:9px;background:${esc(c)};margin-right:4px"></span>${esc(label)}</div>`).join("");
    } else if (lg.kind === "continuous") {
      const cs = (lg.colors || []).map(esc).join(",");
      h += `<div style="width:90px;height:8px;background:linear-gradient(to right,${cs})"></div>`
        + `<div style="display:flex;justify-content:space-between;width:90px"><span>${Number(lg.min).toPrecision(3)}</span><span>${Number(lg.max).toPrecision(3)}</span></div>`;
    }
    generation++;
    legend.innerHTML = h;
    legend.style.display = h ? "" : "none";
  }
  function loadBoxes() {
    boxes = typed(model.get("boxes"), (b) => new Float32Array(b), 4);
  }
  /** The selected points' boxes to the linked viewer in this page (those on its slide, in point order). */
  function publishSelection() {
    const link = model.get("link") || "";
    if (!link || boxes.length < 4 * xs.length) return;
    const picked = new Float32Array(4 * sel.length);
    let m = 0;
    for (let j = 0; j < sel.length; j++) {
      const i = 4 * sel[j];
      if (boxes[i] === boxes[i]) { picked.set(boxes.subarray(i, i + 4), 4 * m); m++; }  // NaN !== NaN
    }
    publishBoxes(link, picked.slice(0, 4 * m));
  }
  function loadSelection() {
    sel = typed(model.get("selection"), (b) => new Uint32Array(b), 4);
    root.dataset.selected = String(sel.length);
  }

  /** CSS px of the canvas → data coordinates, and back (scale s, offsets ox, oy: px = (d - o) * s). */
  function transform(w: number, h: number) {
    const side = Math.min(w, h) * zoom;
    const s = side / bspan;
    const ox = bx0 + cx * bspan - w / 2 / s;
    const oy = by0 + cy * bspan + h / 2 / s;  // y grows up
    return { s, ox, oy };
  }

  function draw() {
    const t0 = performance.now();
    pending = 0;
    const w = canvas.clientWidth, h = Number(model.get("height")) || 420;
    canvas.style.height = `${h}px`;
    if (!canvas.isConnected || !w) return;  // not laid out yet: the ResizeObserver draws once it is
    const r = dpr(), W = Math.max(1, Math.round(w * r)), H = Math.max(1, Math.round(h * r));
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const img = ctx.createImageData(W, H);
    const px = new Uint32Array(img.data.buffer);
    const { s, ox, oy } = transform(w, h);
    const k = s * r, size = Math.max(1, Math.round((Number(model.get("point_size")) || 2) * r));
    const n = Math.min(xs.length, ys.length), hasCodes = codes.length >= n;
    const put = (i: number, table: Uint32Array, sz: number, px: Uint32Array) => {
      const X = Math.floor((xs[i] - ox) * k), Y = Math.floor((oy - ys[i]) * k);
      if (X < 0 || Y < 0 || X + sz > W || Y + sz > H) return;
      const c = table[hasCodes ? codes[i] : 0];
      for (let dy = 0; dy < sz; dy++) {
        const row = (Y + dy) * W + X;
        for (let dx = 0; dx < sz; dx++) px[row + dx] = c;
      }
    };
    // every point is rasterised once per view, size and colouring, in full and faded colours, and kept: a
    // new selection only copies the faded raster and draws its own points on top
    const key = `${W},${H},${k},${ox},${oy},${size},${n},${generation}`;
    const raster = (fade: boolean) => {
      const cache = fade ? fadedBase : fullBase;
      if (cache.key !== key || cache.px.length !== W * H) {
        cache.px = new Uint32Array(W * H);
        const table = fade ? faded : full;
        for (let i = 0; i < n; i++) put(i, table, size, cache.px);
        cache.key = key;
      }
      return cache.px;
    };
    const baseImg = raster(sel.length > 0);
    // the other raster when the page is idle: the first lasso (or clear) after a new view copies it too
    setTimeout(() => { if (key === lastKey) raster(sel.length === 0); }, 30);
    lastKey = key;
    px.set(baseImg);
    for (let j = 0; j < sel.length; j++) if (sel[j] < n) put(sel[j], full, size + 1, px);
    ctx.putImageData(img, 0, 0);
    frames++;
    root.dataset.drawn = String(frames);
    root.dataset.drawnAt = String(performance.now());
    if (!root.dataset.firstDrawnAt && n) root.dataset.firstDrawnAt = root.dataset.drawnAt;
    root.dataset.drawMs = (performance.now() - t0).toFixed(1);
  }
  const redraw = () => { if (!pending) pending = requestAnimationFrame(draw); };

  function lassoSelect(poly: [number, number][]) {
    const t0 = performance.now();
    const w = canvas.clientWidth, h = Number(model.get("height")) || 420;
    const { s, ox, oy } = transform(w, h);
    const m = poly.length, PX = new Float64Array(m), PY = new Float64Array(m);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let a = 0; a < m; a++) {
      PX[a] = poly[a][0] / s + ox; PY[a] = oy - poly[a][1] / s;
      x0 = Math.min(x0, PX[a]); x1 = Math.max(x1, PX[a]); y0 = Math.min(y0, PY[a]); y1 = Math.max(y1, PY[a]);
    }
    const found = new Uint32Array(xs.length);
    let count = 0;
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i], y = ys[i];
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      let inside = false;
      for (let a = 0, b = m - 1; a < m; b = a++) {
        const ya = PY[a], yb = PY[b];
        if ((ya > y) !== (yb > y) && x < ((PX[b] - PX[a]) * (y - ya)) / (yb - ya) + PX[a]) inside = !inside;
      }
      if (inside) found[count++] = i;
    }
    sel = found.slice(0, count);
    root.dataset.selected = String(sel.length);
    const t1 = performance.now();
    redraw();
    publishSelection();  // the slide beside shows the tiles now; the kernel hears of both next
    const t2 = performance.now();
    model.set("selection", new DataView(sel.buffer));
    model.save_changes();
    const t3 = performance.now();
    root.dataset.lassoMs = `${(t1 - t0).toFixed(1)} ${(t2 - t1).toFixed(1)} ${(t3 - t2).toFixed(1)}`;
    root.dataset.lassoSentAt = String(t3);
  }

  // -- mouse ------------------------------------------------------------------------------------
  let drag: { kind: "lasso" | "pan"; x: number; y: number; cx: number; cy: number; poly: [number, number][] } | null = null;
  const local = (e: MouseEvent): [number, number] => {
    const b = canvas.getBoundingClientRect();
    return [e.clientX - b.left, e.clientY - b.top];
  };
  const drawLasso = () => {
    const r = dpr();
    overlay.width = canvas.width; overlay.height = canvas.height; overlay.style.height = canvas.style.height;
    const ctx = overlay.getContext("2d");
    if (!ctx || !drag || drag.kind !== "lasso" || drag.poly.length < 2) return;
    ctx.setTransform(r, 0, 0, r, 0, 0);
    ctx.strokeStyle = "#333"; ctx.fillStyle = "rgba(0,0,0,.06)"; ctx.lineWidth = 1;
    ctx.beginPath();
    drag.poly.forEach(([a, b], i) => (i ? ctx.lineTo(a, b) : ctx.moveTo(a, b)));
    ctx.closePath(); ctx.fill(); ctx.stroke();
  };
  const onDown = (e: MouseEvent) => {
    if (e.button !== 0) return;
    e.preventDefault();
    const [x, y] = local(e);
    drag = { kind: mode === "pan" || e.shiftKey ? "pan" : "lasso", x, y, cx, cy, poly: [[x, y]] };
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp);
  };
  const onMove = (e: MouseEvent) => {
    if (!drag) return;
    const [x, y] = local(e);
    if (drag.kind === "pan") {
      const side = Math.min(canvas.clientWidth, Number(model.get("height")) || 420) * zoom;
      cx = drag.cx - (x - drag.x) / side;
      cy = drag.cy + (y - drag.y) / side;
      redraw();
    } else {
      drag.poly.push([x, y]);
      drawLasso();
    }
  };
  const onUp = () => {
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    const d = drag;
    drag = null;
    overlay.getContext("2d")?.clearRect(0, 0, overlay.width, overlay.height);
    if (d && d.kind === "lasso" && d.poly.length >= 3) lassoSelect(d.poly);
  };
  const onWheel = (e: WheelEvent) => {
    e.preventDefault();
    const [x, y] = local(e);
    const w = canvas.clientWidth, h = Number(model.get("height")) || 420;
    const before = transform(w, h);
    const dx = x / before.s + before.ox, dy = before.oy - y / before.s;  // the data point under the mouse stays put
    zoom = Math.min(1000, Math.max(0.2, zoom * Math.exp(-e.deltaY * 0.0015)));
    const s = (Math.min(w, h) * zoom) / bspan;
    cx = (dx - x / s + w / 2 / s - bx0) / bspan;
    cy = (dy + y / s - h / 2 / s - by0) / bspan;
    redraw();
  };
  const reset = () => { zoom = 1; cx = 0.5; cy = 0.5; redraw(); };
  const setMode = (m: "lasso" | "pan") => {
    mode = m;
    lassoBtn.style.fontWeight = m === "lasso" ? "bold" : "";
    panBtn.style.fontWeight = m === "pan" ? "bold" : "";
    canvas.style.cursor = m === "pan" ? "grab" : "crosshair";
  };
  lassoBtn.onclick = () => setMode("lasso");
  panBtn.onclick = () => setMode("pan");
  resetBtn.onclick = reset;
  setMode("lasso");
  canvas.addEventListener("mousedown", onDown);
  canvas.addEventListener("wheel", onWheel, { passive: false });
  canvas.addEventListener("dblclick", reset);

  const onPoints = () => { loadPoints(); redraw(); };
  const onColours = () => { loadColours(); redraw(); };
  const onSelection = () => { loadSelection(); redraw(); };
  model.on("change:x", onPoints);
  model.on("change:y", onPoints);
  model.on("change:codes", onColours);
  model.on("change:palette", onColours);
  model.on("change:legend", onColours);
  model.on("change:selection", onSelection);
  model.on("change:boxes", loadBoxes);
  model.on("change:height", redraw);
  model.on("change:point_size", redraw);
  const resize = new ResizeObserver(() => redraw());
  resize.observe(root);
  loadPoints(); loadColours(); loadSelection(); loadBoxes();
  draw();
  return () => {
    resize.disconnect();
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    model.off("change:x", onPoints); model.off("change:y", onPoints);
    model.off("change:codes", onColours); model.off("change:palette", onColours); model.off("change:legend", onColours);
    model.off("change:selection", onSelection); model.off("change:boxes", loadBoxes); model.off("change:height", redraw); model.off("change:point_size", redraw);
  };
}

export default { render };
