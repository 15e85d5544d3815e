/**
 * Tiles highlighted on the slide, drawn in the browser: the model's `highlight` is ONE binary buffer of
 * float32 level-0 boxes `[x, y, width, height] * N` (set by wsi_lab/ui/explorer.py from a selection, or in
 * the page from a linked scatter's lasso: see link.ts), filled as pixels of an ImageData on a canvas laid
 * over OpenSeadragon's and redrawn as the view moves. No overlay layer is registered with the server and no
 * overlay tile is rendered or fetched, so a selection shows as soon as its buffer arrives. A legend entry
 * ("selected tiles", with the count) sits in the viewer's legend; its checkbox hides the boxes. Once the
 * frame with new boxes is on screen, `highlight_painted` is counted up (the explorer sends the scatter's
 * own selection only then: see wsi_lab/ui/explorer.py).
 * `data-highlight-count` (boxes held), `data-highlight-drawn` (boxes in the last drawn frame),
 * `data-highlight-set-at`, `-drawn-at` and `-frame-at` (the next frame's start: the boxes are on screen
 * with it; page clock, ms) on the viewer's root are for tests and
 * benchmarks.
 */
import OpenSeadragon from "openseadragon";

export const HIGHLIGHT_NAME = "selected tiles";
const FILL = ((140 << 24) | (0 << 16) | (230 << 8) | 255) >>> 0; // rgba(255, 230, 0, 0.55): RGBA bytes, little-endian

const SWATCH = "#ffe600";

/** A synced bytes trait (DataView / ArrayBuffer / typed array, or null) as float32 values (copied: the
 * buffer's offset need not be 4-byte aligned). */
export function asFloat32(value: unknown): Float32Array {
  if (!value) return new Float32Array(0);
  if (value instanceof ArrayBuffer) return new Float32Array(value.slice(0, value.byteLength - (value.byteLength % 4)));
  if (ArrayBuffer.isView(value)) {
    const n = value.byteLength - (value.byteLength % 4);
    return new Float32Array(value.buffer.slice(value.byteOffset, value.byteOffset + n));
  }
  return new Float32Array(0);
}

export interface Highlight {
  /** Take new boxes (the trait's value) and draw them. */
  set(value: unknown): void;
  /** Redraw now (the view moved). */
  draw(): void;
  /** Put the legend entry (back) into the viewer's legend; true when there is one. */
  appendLegend(): boolean;
  dispose(): void;
}

export function highlightOverlay(viewer: any, root: HTMLElement, legendEl: HTMLElement, getItem: () => any,
                                 model: any): Highlight {
  const canvas = document.createElement("canvas");
  canvas.className = "wsi-highlight";
  canvas.style.cssText = "position:absolute;left:0;top:0;pointer-events:none;z-index:1";
  viewer.canvas.appendChild(canvas);
  let boxes: Float32Array<ArrayBufferLike> = new Float32Array(0);
  let visible = true;
  let pending = 0;
  let entry: HTMLElement | null = null;
  root.dataset.highlightCount = "0";
  root.dataset.highlightDrawn = "0";

  let img: ImageData | null = null;
  // Boxes are filled into an ImageData here (one row fill per box and pixel row) rather than as a canvas
  // path: a software canvas rasterises a 32k-rectangle path at the frame, tens of ms; this costs the
  // pixels covered, a few ms, and overlapping boxes do not darken each other.
  function draw() {
    if (pending) { cancelAnimationFrame(pending); pending = 0; }
    const dpr = window.devicePixelRatio || 1;
    const w = viewer.canvas.clientWidth, h = viewer.canvas.clientHeight;
    const cw = Math.max(1, Math.round(w * dpr)), ch = Math.max(1, Math.round(h * dpr));
    if (canvas.width !== cw || canvas.height !== ch) {
      canvas.width = cw; canvas.height = ch;
      canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const item = getItem();
    const n = Math.floor(boxes.length / 4);
    let drawn = 0;
    if (item && n && visible) {
      if (!img || img.width !== cw || img.height !== ch) img = ctx.createImageData(cw, ch);
      const px = new Uint32Array(img.data.buffer);
      px.fill(0);
      // level-0 px -> canvas px: a scale and an offset (OpenSeadragon's current, animated view)
      const p0 = item.imageToViewerElementCoordinates(new (OpenSeadragon as any).Point(0, 0));
      const p1 = item.imageToViewerElementCoordinates(new (OpenSeadragon as any).Point(1e4, 1e4));
      const sx = ((p1.x - p0.x) / 1e4) * dpr, sy = ((p1.y - p0.y) / 1e4) * dpr;
      const ox = p0.x * dpr, oy = p0.y * dpr;
      for (let i = 0; i < n; i++) {
        const x = ox + boxes[4 * i] * sx, y = oy + boxes[4 * i + 1] * sy;
        const x0 = Math.max(0, Math.floor(x)), y0 = Math.max(0, Math.floor(y));
        const x1 = Math.min(cw, Math.max(Math.floor(x) + 1, Math.ceil(x + boxes[4 * i + 2] * sx)));
        const y1 = Math.min(ch, Math.max(Math.floor(y) + 1, Math.ceil(y + boxes[4 * i + 3] * sy)));
        if (x1 <= x0 || y1 <= y0) continue;  // outside the view
        for (let r = y0; r < y1; r++) px.fill(FILL, r * cw + x0, r * cw + x1);
        drawn++;
      }
      ctx.putImageData(img, 0, 0);
    } else {
      ctx.clearRect(0, 0, cw, ch);
    }
    root.dataset.highlightDrawn = String(drawn);
    root.dataset.highlightDrawnAt = String(performance.now());
  }
  const schedule = () => { if (!pending) pending = requestAnimationFrame(() => { pending = 0; draw(); }); };

  function legend(): HTMLElement {
    const e = document.createElement("div");
    e.className = "wsi-legend-entry";
    e.dataset.layer = HIGHLIGHT_NAME;
    const head = document.createElement("label");
    head.className = "wsi-legend-head";
    const cb = document.createElement("input");
    cb.type = "checkbox";
    cb.checked = visible;
    cb.onchange = () => { visible = cb.checked; draw(); };
    const sw = document.createElement("span");
    sw.className = "wsi-swatch";
    sw.style.background = SWATCH;
    const name = document.createElement("span");
    name.className = "wsi-legend-name";
    name.textContent = HIGHLIGHT_NAME;
    const count = document.createElement("span");
    count.className = "wsi-highlight-count";
    count.textContent = String(Math.floor(boxes.length / 4));
    head.append(cb, sw, name, count);
    e.append(head);
    return e;
  }
  function appendLegend(): boolean {
    entry?.remove();
    entry = boxes.length ? legend() : null;
    if (entry) { legendEl.append(entry); legendEl.style.display = ""; }
    else if (!legendEl.children.length) legendEl.style.display = "none";
    return entry !== null;
  }

  viewer.addHandler("update-viewport", draw); // in OpenSeadragon's own frame: the boxes move with the tiles
  viewer.addHandler("resize", schedule);
  return {
    set(value: unknown) {
      root.dataset.highlightSetAt = String(performance.now());
      boxes = asFloat32(value);
      root.dataset.highlightCount = String(Math.floor(boxes.length / 4));
      appendLegend();
      draw(); // now, not at the next frame: a frame may be long (the scatter beside redrawing its points)
      // once the frame holding it is on screen, tell the kernel (it holds the scatter's redraw until then)
      requestAnimationFrame(() => { root.dataset.highlightFrameAt = String(performance.now()); setTimeout(() => {
        model.set("highlight_painted", (model.get("highlight_painted") || 0) + 1);
        model.save_changes();
      }, 0); });
    },
    draw,
    appendLegend,
    dispose() {
      if (pending) cancelAnimationFrame(pending);
      viewer.removeHandler("update-viewport", draw);
      viewer.removeHandler("resize", schedule);
      canvas.remove();
    },
  };
}
