/**
 * SlideViewer front end (anywidget ESM): OpenSeadragon over a deep-zoom pyramid, tiles from the
 * wsi_lab.server Jupyter extension over HTTP, or from the kernel over the widget comm.
 *
 * Model state (see wsi_lab/ui/viewer.py): slide_info, tile_source ("auto" | "server" | "comm"),
 * layers [{key, name, opacity, visible, legend, payload}], viewport [x, y, w, h] (level-0 px),
 * selected_tile, height, display_state (channel picker: see display.ts), highlight (float32 level-0 boxes
 * drawn in the browser: see highlight.ts), link (a token: boxes a linked scatter publishes in the page, see
 * link.ts, become the highlight at once); written here: active_source, status, highlight (from a link).
 * Comm protocol: {type: "tile"|"overlay", id, level, col, row[, layer]} -> reply {type, id, ok, error?}
 * + one binary buffer (JPEG / PNG); {type: "click", x, y} -> Python callbacks.
 */
import OpenSeadragon from "openseadragon";
import { displayPanel } from "./display";
import { highlightOverlay } from "./highlight";
import { onLinkedBoxes } from "./link";
import { legendHtml, niceLength } from "./legend";
import { type AnyModel, CommClient, type LayerState, type ServerTarget, type SlideInfo, commTileSource,
  httpTileSource, probeServer } from "./sources";

// ---------------------------------------------------------------------------------------------
/** Viewports the front ends sent, per slide (views of one model do not share a JS object to hang it on). */
const SENT_VIEWPORTS: string[] = [];

function render({ model, el }: { model: AnyModel; el: HTMLElement }) {
  const info: SlideInfo = model.get("slide_info");
  const root = document.createElement("div");
  root.className = "wsi-viewer";
  root.dataset.source = "";
  root.dataset.tilesLoaded = "0";
  root.dataset.tilesFailed = "0";
  root.style.height = model.get("height") || "500px";
  const osdEl = document.createElement("div");
  osdEl.className = "wsi-osd";
  const statusEl = document.createElement("div");
  statusEl.className = "wsi-status";
  const legendEl = document.createElement("div");
  legendEl.className = "wsi-legend";
  const scaleEl = document.createElement("div");
  scaleEl.className = "wsi-scalebar";
  const toolbar = document.createElement("div");
  toolbar.className = "wsi-toolbar";
  const hintEl = document.createElement("div");
  hintEl.className = "wsi-hint";
  hintEl.textContent = "scroll to zoom · drag to pan · double-click to zoom in";
  const displayEl = document.createElement("div"); // channel picker, contrast, gamma (fluorescence only)
  root.append(osdEl, legendEl, scaleEl, statusEl, toolbar, hintEl, displayEl);
  el.append(root);

  const comm = new CommClient(model);
  const setStatus = (text: string, level = "info") => {
    statusEl.textContent = text;
    statusEl.dataset.level = level;
    model.set("status", text);
    model.save_changes();
  };

  const viewer: any = OpenSeadragon({
    element: osdEl,
    drawer: "canvas",
    showNavigationControl: false, // OpenSeadragon's own buttons load images from a URL: ours are plain HTML
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    navigatorSizeRatio: 0.18,
    navigatorAutoFade: false,
    crossOriginPolicy: false,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    maxZoomPixelRatio: 4,
    imageLoaderLimit: 8,
    timeout: 60000,
    // zoom/pan animations of 0.5 s (OpenSeadragon's default is 1.2 s): tiles of the target view are
    // only requested as the animation approaches it, so a long animation delays settled tiles
    animationTime: 0.5,
  } as any);

  const button = (label: string, title: string, action: () => void) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "wsi-btn";
    b.textContent = label;
    b.title = title;
    b.dataset.action = title;
    b.onclick = (ev) => { ev.preventDefault(); action(); };
    toolbar.append(b);
    return b;
  };
  button("+", "zoom in", () => { userMoved = true; viewer.viewport.zoomBy(1.5); viewer.viewport.applyConstraints(); });
  button("−", "zoom out", () => { userMoved = true; viewer.viewport.zoomBy(1 / 1.5); viewer.viewport.applyConstraints(); });
  button("⌂", "home", () => { userMoved = false; viewer.viewport.goHome(); });
  button("", "full screen", () => viewer.setFullScreen(!viewer.isFullPage())).classList.add("wsi-btn-full");
  const hideHint = () => { hintEl.classList.add("wsi-hint-done"); };

  let target: ServerTarget | null = null;
  let slideItem: any = null;
  let disposed = false;
  let highlight: HTMLElement | null = null;
  const boxes = highlightOverlay(viewer, root, legendEl, () => slideItem, model);
  const onHighlight = () => boxes.set(model.get("highlight"));
  // a linked scatter's lasso in this page: shown now (change:highlight draws it), then saved to the kernel
  const unlink = onLinkedBoxes(() => model.get("link") || "", (b) => {
    model.set("highlight", new DataView(b.buffer, b.byteOffset, b.byteLength));
    model.save_changes();
  });
  let userMoved = false; // until the user pans/zooms (or Python sets a view), keep the whole slide in view
  const homeIfUntouched = () => {
    if (slideItem && !userMoved) viewer.viewport.goHome(true);
  };
  /** Keep the whole slide in view while the user has not moved it (the widget is sized after render). */
  const refit = () => {
    if (!slideItem) return;
    const w = osdEl.clientWidth, h = osdEl.clientHeight;
    if (!(w > 0 && h > 0)) return;
    const cs = viewer.viewport.getContainerSize();
    if (cs.x !== w || cs.y !== h) viewer.viewport.resize(new (OpenSeadragon as any).Point(w, h), true);
    homeIfUntouched();
    viewer.forceRedraw();
    updateScale();
    sendViewport();
  };
  const resizeObs = new ResizeObserver(refit);
  viewer.addHandler("resize", refit);
  resizeObs.observe(root);
  viewer.addHandler("canvas-drag", () => { userMoved = true; root.dataset.moved = "drag"; hideHint(); });
  viewer.addHandler("canvas-scroll", () => { userMoved = true; root.dataset.moved = "scroll"; hideHint(); });

  viewer.addHandler("tile-loaded", () => {
    root.dataset.tilesLoaded = String(Number(root.dataset.tilesLoaded) + 1);
  });
  // settled = no animation running and every item's tiles for the current view drawn (for tests and
  // benchmarks: a zoom into tiles already cached loads none, so counting arrivals cannot tell)
  root.dataset.animating = "0";
  root.dataset.fullyLoaded = "0";
  const updateLoaded = () => {
    const n = viewer.world.getItemCount();
    let all = n > 0;
    for (let i = 0; i < n; i++) all = all && viewer.world.getItemAt(i).getFullyLoaded();
    root.dataset.fullyLoaded = all ? "1" : "0";
  };
  viewer.addHandler("animation-start", () => { root.dataset.animating = "1"; });
  viewer.addHandler("animation-finish", () => { root.dataset.animating = "0"; updateLoaded(); });
  viewer.world.addHandler("add-item", (e: any) => {
    e.item.addHandler("fully-loaded-change", updateLoaded);
    updateLoaded();
  });
  viewer.world.addHandler("remove-item", updateLoaded);
  let lastResync = 0;
  viewer.addHandler("tile-load-failed", (e: any) => {
    root.dataset.tilesFailed = String(Number(root.dataset.tilesFailed) + 1);
    // an overlay tile over HTTP fails when the server forgot the layer (restarted): POST the layers
    // again, at most every 10 s
    if (target && e.tiledImage && e.tiledImage !== slideItem) {
      if (![...layerItems.values()].includes(e.tiledImage)) return; // a layer item already replaced: stale request
      if (Date.now() - lastResync > 10000) {
        lastResync = Date.now();
        root.dataset.layerKeys = "";
        void syncLayers();
        return;
      }
    }
    setStatus(`tile failed: ${e.message ?? "unknown error"}`, "error");
  });

  /** With a token in PageConfig (no login cookie, e.g. some hubs), fetch tiles with an auth header. */
  const ajaxOptions = () =>
    target && target.headers["Authorization"] ? { loadTilesWithAjax: true, ajaxHeaders: target.headers } : {};
  // the slide tiles' display settings (wsi_lab.viewing.display_token; "" = the server's automatic ones)
  let displayToken: string = (model.get("display_state") || {}).token || "";
  const source = (layerKey: string | null) =>
    target ? httpTileSource(info, target, layerKey, layerKey ? "" : displayToken)
      : commTileSource(info, comm, layerKey, layerKey ? "" : displayToken);

  // -- layers -----------------------------------------------------------------------------
  // by layer key: items are added asynchronously, so their order of arrival is not the layers' order
  let layerItems = new Map<string, any>();
  let layerControls = new Map<string, { cb: HTMLInputElement; slider: HTMLInputElement }>();
  let layerGen = 0;
  async function registerLayer(layer: LayerState): Promise<string> {
    if (!target) return layer.key;
    const r = await fetch(`${target.base}layers`, {
      method: "POST", credentials: "same-origin",
      headers: { ...target.headers, "Content-Type": "application/json" },
      body: JSON.stringify(layer.payload),
    });
    if (!r.ok) throw new Error(`layer ${layer.name}: HTTP ${r.status} ${await r.text()}`);
    return (await r.json()).key;
  }
  async function syncLayers() {
    const gen = ++layerGen;
    root.dataset.layerSyncs = String(Number(root.dataset.layerSyncs || 0) + 1);
    const layers: LayerState[] = model.get("layers") || [];
    for (const item of layerItems.values()) viewer.world.removeItem(item);
    layerItems = new Map();
    layerControls = new Map();
    legendEl.innerHTML = "";
    for (const layer of layers) {
      let key: string;
      try {
        key = await registerLayer(layer);
      } catch (err) {
        setStatus(String((err as Error).message), "error");
        continue;
      }
      if (gen !== layerGen || disposed) return;
      viewer.addTiledImage({
        tileSource: source(key), ...ajaxOptions(),
        opacity: layer.visible === false ? 0 : layer.opacity,
        // keep loading a hidden layer's tiles: OpenSeadragon loads none for an opacity-0 item and does not
        // fetch them when it is shown again without a pan or zoom (the layer stayed blank)
        preload: true,
        success: (e: any) => {
          if (gen !== layerGen) { viewer.world.removeItem(e.item); return; }
          layerItems.set(layer.key, e.item);
          root.dataset.layersShown = String(layerItems.size);
        },
      });
      const entry = document.createElement("div");
      entry.className = "wsi-legend-entry";
      entry.dataset.layer = layer.name;
      const head = document.createElement("label");
      head.className = "wsi-legend-head";
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.checked = layer.visible !== false;
      const slider = document.createElement("input");
      slider.type = "range"; slider.min = "0"; slider.max = "1"; slider.step = "0.05";
      slider.value = String(layer.opacity);
      const update = (patch: Partial<LayerState>) => {
        const cur: LayerState[] = (model.get("layers") || []).map((l: LayerState) =>
          l.key === layer.key ? { ...l, ...patch } : l);
        model.set("layers", cur);
        model.save_changes();
      };
      layerControls.set(layer.key, { cb, slider });
      cb.onchange = () => update({ visible: cb.checked });
      slider.oninput = () => update({ opacity: Number(slider.value) });
      head.append(cb);
      if (layer.legend?.type === "color") {
        const sw = document.createElement("span");
        sw.className = "wsi-swatch";
        sw.style.background = layer.legend.color;
        head.append(sw);
      }
      const label = document.createElement("span");
      label.className = "wsi-legend-name";
      label.textContent = layer.name;
      slider.title = "opacity";
      head.append(label, slider);
      entry.append(head, legendHtml(layer));
      legendEl.append(entry);
    }
    legendEl.style.display = layers.length ? "" : "none";
    boxes.appendLegend();
  }
  /** Opacity / visibility changes only: restyle the existing items instead of reloading. */
  function onLayersChange() {
    const layers: LayerState[] = model.get("layers") || [];
    const keys = layers.map((l) => l.key).join(",");
    if (keys === root.dataset.layerKeys && layerItems.size === layers.length) {
      for (const l of layers) {
        layerItems.get(l.key)?.setOpacity(l.visible === false ? 0 : l.opacity);
        const c = layerControls.get(l.key);
        if (c) { c.cb.checked = l.visible !== false; c.slider.value = String(l.opacity); }
      }
      root.dataset.visibleLayers = layers.filter((l) => l.visible !== false).map((l) => l.name).join(",");
      viewer.forceRedraw();
      return;
    }
    root.dataset.layerKeys = keys;
    void syncLayers();
  }

  // -- viewport, scale bar, clicks ----------------------------------------------------------
  let lastSent = "";
  // viewports the front end sent (any view of this model): the kernel echoes each update back (ipywidgets
  // 8), and a view rendered again (a tab shown again) finds the last one in the model; neither is a view
  // Python asked for, so neither may move the view (it left a freshly shown Viewer tab zoomed in)
  const sentKey = `${info.name}|${info.width}x${info.height}|`;
  function sendViewport() {
    if (!slideItem) return;
    const r = slideItem.viewportToImageRectangle(viewer.viewport.getBounds(true));
    const v = [r.x, r.y, r.width, r.height].map((n: number) => Math.round(n * 10) / 10);
    const s = JSON.stringify(v);
    if (s === lastSent) return;
    lastSent = s;
    SENT_VIEWPORTS.push(sentKey + s);
    if (SENT_VIEWPORTS.length > 200) SENT_VIEWPORTS.shift();
    root.dataset.viewport = s;
    model.set("viewport", v);
    model.save_changes();
  }
  function applyViewport() {
    const v = model.get("viewport");
    if (!slideItem || !Array.isArray(v) || v.length !== 4 || SENT_VIEWPORTS.includes(sentKey + JSON.stringify(v))) return;
    userMoved = true;
    root.dataset.moved = "python " + JSON.stringify(v);
    const [x, y, w, h] = v;
    if (!(w > 0 && h > 0)) return;
    lastSent = JSON.stringify(v);
    viewer.viewport.fitBounds(slideItem.imageToViewportRectangle(x, y, w, h), false);
  }
  function updateScale() {
    const mpp = info.mpp;
    if (!mpp || !slideItem) { scaleEl.style.display = "none"; return; }
    const imageZoom = slideItem.viewportToImageZoom(viewer.viewport.getZoom(true)); // screen px per image px
    const umPerPx = mpp[0] / imageZoom;
    const um = niceLength(100 * umPerPx);
    scaleEl.style.display = "";
    scaleEl.style.width = `${Math.round(um / umPerPx)}px`;
    scaleEl.textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
    scaleEl.dataset.um = String(um);
  }
  function showSelected() {
    const sel = model.get("selected_tile");
    if (highlight) { viewer.removeOverlay(highlight); highlight = null; }
    if (!slideItem || !sel || !(sel.width > 0)) return;
    highlight = document.createElement("div");
    highlight.className = "wsi-selected";
    viewer.addOverlay(highlight, slideItem.imageToViewportRectangle(sel.x, sel.y, sel.width, sel.height));
    if (sel.zoom !== false) {
      // full resolution: one screen pixel per level-0 pixel, centred on the tile
      const size = viewer.viewport.getContainerSize();
      const cx = sel.x + sel.width / 2, cy = sel.y + sel.height / 2;
      const w = Math.max(sel.width, size.x), h = Math.max(sel.height, size.y);
      viewer.viewport.fitBounds(slideItem.imageToViewportRectangle(cx - w / 2, cy - h / 2, w, h), false);
    }
  }
  viewer.addHandler("canvas-click", (e: any) => {
    if (!e.quick || !slideItem) return;
    const p = slideItem.viewerElementToImageCoordinates(e.position);
    if (p.x < 0 || p.y < 0 || p.x >= info.width || p.y >= info.height) return;
    model.send({ type: "click", x: Math.floor(p.x), y: Math.floor(p.y) });
  });
  viewer.addHandler("animation-finish", sendViewport);
  viewer.addHandler("update-viewport", updateScale);

  // -- start: choose the tile source, open the slide ------------------------------------------
  async function start() {
    const mode = model.get("tile_source") || "auto";
    if (mode !== "comm") {
      target = await probeServer(info);
      if (!target && mode === "server") {
        setStatus("the wsi_lab.server extension did not answer for this slide (is the slide under the Jupyter " +
          "root, and the extension enabled? `jupyter server extension list`); use tile_source='comm'", "error");
        root.dataset.source = "none";
        return;
      }
    }
    if (disposed) return;
    const active = target ? "server" : "comm";
    root.dataset.source = active;
    model.set("active_source", active);
    model.save_changes();
    viewer.addTiledImage({
      tileSource: source(null), index: 0, ...ajaxOptions(),
      success: (e: any) => {
        slideItem = e.item;
        watchLoaded(e.item);
        root.dataset.displayToken = displayToken;
        root.dataset.ready = "1";
        if (Array.isArray(model.get("viewport")) && model.get("viewport").length === 4) applyViewport();
        refit();
        onLayersChange();
        showSelected();
        onHighlight();
      },
      error: (e: any) => setStatus(`could not open the slide: ${e.message ?? e}`, "error"),
    });
  }
  // -- display: a new token swaps the slide item for one with the new tiles (overlays stay) ------------
  const updatePanel = displayPanel(model, displayEl);
  let displayGen = 0;
  const watchLoaded = (item: any) => {
    root.dataset.slideLoaded = "0";
    item.addHandler("fully-loaded-change", (e: any) => {
      if (item === slideItem) root.dataset.slideLoaded = e.fullyLoaded ? "1" : "0";
    });
  };
  function onDisplayChange() {
    updatePanel();
    const token = (model.get("display_state") || {}).token || "";
    if (token === displayToken) return;
    displayToken = token;
    if (!slideItem) return;
    const gen = ++displayGen;
    viewer.addTiledImage({
      tileSource: source(null), index: 0, ...ajaxOptions(),
      success: (e: any) => {
        if (gen !== displayGen || disposed) { viewer.world.removeItem(e.item); return; }
        const old = slideItem;
        slideItem = e.item;
        watchLoaded(e.item);
        if (old && old !== e.item) viewer.world.removeItem(old);
        root.dataset.displayGen = String(gen);
        root.dataset.displayToken = token;
      },
      error: (e: any) => setStatus(`could not show the display settings: ${e.message ?? e}`, "error"),
    });
  }
  model.on("change:display_state", onDisplayChange);
  model.on("change:layers", onLayersChange);
  model.on("change:viewport", applyViewport);
  model.on("change:selected_tile", showSelected);
  model.on("change:highlight", onHighlight);
  void start();

  return () => {
    disposed = true;
    resizeObs.disconnect();
    model.off("change:display_state", onDisplayChange);
    model.off("change:layers", onLayersChange);
    model.off("change:viewport", applyViewport);
    model.off("change:selected_tile", showSelected);
    model.off("change:highlight", onHighlight);
    unlink();
    boxes.dispose();
    comm.dispose();
    viewer.destroy();
  };
}

export default { render };
