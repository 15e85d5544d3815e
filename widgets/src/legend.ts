/**
 * Legend and scale-bar helpers of the SlideViewer front end: one entry body per layer (a colour bar
 * for continuous layers, swatches for categories; a single-colour layer's swatch sits in its head, so
 * its name is never repeated) and "nice" scale-bar lengths in µm.
 */

export interface LegendLayer { name: string; legend: any }

export function niceLength(um: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  for (const f of [5, 2, 1]) if (f * p <= um) return f * p;
  return p;
}

export function legendHtml(layer: LegendLayer): HTMLElement {
  const box = document.createElement("div");
  box.className = "wsi-legend-body";
  const lg = layer.legend || {};
  if (lg.type === "continuous" && Array.isArray(lg.colors)) {
    const bar = document.createElement("div");
    bar.className = "wsi-legend-bar";
    bar.style.background = `linear-gradient(to right, ${lg.colors.join(",")})`;
    const labels = document.createElement("div");
    labels.className = "wsi-legend-range";
    const fmt = (v: any) => (typeof v === "number" ? Number(v.toPrecision(3)).toString() : String(v ?? ""));
    labels.innerHTML = `<span>${fmt(lg.vmin)}</span><span>${lg.column ?? ""}</span><span>${fmt(lg.vmax)}</span>`;
    box.append(bar, labels);
  } else if (lg.type === "categorical" && Array.isArray(lg.categories)) {
    for (const c of lg.categories.slice(0, 20)) {
      const item = document.createElement("div");
      item.className = "wsi-legend-item";
      item.innerHTML = `<span class="wsi-swatch" style="background:${c.color}"></span>`;
      item.append(document.createTextNode(String(c.value ?? c.label)));
      box.append(item);
    }
  } else if (lg.type === "color" && lg.label && lg.label !== layer.name) {
    // one colour: the swatch sits in the entry's head; a body line only when it says something new
    const item = document.createElement("div");
    item.className = "wsi-legend-item";
    item.append(document.createTextNode(String(lg.label)));
    box.append(item);
  }
  return box;
}

