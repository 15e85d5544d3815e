/**
 * The SlideViewer's channel picker and contrast/gamma controls (fluorescence slides only; brightfield
 * slides get none). Kernel side: wsi_lab/ui/display_controls.py; the model's `display_state` is
 * {options: {channels: [{index, name, color, limits, shown}], percentile_choices}, settings, token, error}.
 * The panel writes `settings` (automatic limits as `percentiles`, or `limits` by hand); the kernel
 * resolves, records and echoes them back. Tiles carry the settings as `token` (wsi_lab.viewing.display_token).
 */
import type { AnyModel } from "./sources";

export interface ChannelOption { index: number; name: string; color: number[]; limits: number[]; shown: boolean }
export interface DisplaySettingsState {
  channels: number[]; colors: number[][]; limits: number[][]; gamma: number;
  percentiles: number[] | null; modality?: string; source?: unknown;
}
export interface DisplayState {
  options?: { channels: ChannelOption[]; percentile_choices: number[][] };
  settings?: DisplaySettingsState | null; token?: string; error?: string;
}

/** The same token as wsi_lab.viewing.display_token (URL-safe base64 of compact JSON, no padding). */
export function displayToken(s: DisplaySettingsState | null | undefined): string {
  if (!s) return "raw";
  const out: Record<string, unknown> = { channels: s.channels, colors: s.colors };
  if (s.percentiles && s.percentiles.length === 2) out.percentiles = s.percentiles;
  else out.limits = s.limits;
  out.gamma = s.gamma;
  return btoa(JSON.stringify(out)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const hex = (c: number[]) => "#" + c.map((v) => Math.max(0, Math.min(255, Math.round(v))).toString(16).padStart(2, "0")).join("");
const unhex = (h: string) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));

/** Build the panel into `el`; returns an updater to call when `display_state` changes. */
export function displayPanel(model: AnyModel, el: HTMLElement): () => void {
  el.className = "wsi-display";
  const update = () => {
    const state: DisplayState = model.get("display_state") || {};
    const opts = state.options?.channels || [];
    el.innerHTML = "";
    el.style.display = opts.length ? "" : "none";
    el.dataset.token = state.token || "";
    if (!opts.length) return;
    const s = state.settings;
    const cur: DisplaySettingsState = s
      ? { ...s, percentiles: s.percentiles ?? null }
      : { channels: [], colors: [], limits: [], gamma: 1, percentiles: null };
    const send = (next: DisplaySettingsState) => {
      el.dataset.sent = String(Number(el.dataset.sent || 0) + 1);
      model.set("display_state", { ...state, settings: next, token: displayToken(next) });
      model.save_changes();
    };
    const head = document.createElement("div");
    head.className = "wsi-display-head";
    head.textContent = "channels";
    el.append(head);
    for (const o of opts) {
      const pos = cur.channels.indexOf(o.index);
      const row = document.createElement("label");
      row.className = "wsi-display-channel";
      row.dataset.channel = String(o.index);
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.checked = pos >= 0;
      cb.title = `show ${o.name}`;
      const color = document.createElement("input");
      color.type = "color";
      color.value = hex(pos >= 0 ? cur.colors[pos] : o.color);
      color.title = `colour of ${o.name}`;
      const name = document.createElement("span");
      name.className = "wsi-display-name";
      name.textContent = o.name;
      const lim = pos >= 0 ? cur.limits[pos] : o.limits;
      const lo = document.createElement("input"), hi = document.createElement("input");
      for (const [inp, v, t] of [[lo, lim[0], "low"], [hi, lim[1], "high"]] as const) {
        inp.type = "number"; inp.min = "0"; inp.max = "255"; inp.step = "1";
        inp.value = String(Math.round(v * 10) / 10);
        inp.title = `${t} contrast limit of ${o.name}`;
        inp.className = `wsi-display-${t}`;
      }
      cb.onchange = () => {
        const chans = opts.filter((c) => (c.index === o.index ? cb.checked : cur.channels.includes(c.index)));
        if (!chans.length) { cb.checked = true; return; } // one channel at least
        send({ ...cur,
          channels: chans.map((c) => c.index),
          colors: chans.map((c) => (cur.channels.includes(c.index) ? cur.colors[cur.channels.indexOf(c.index)] : c.color)),
          limits: chans.map((c) => (cur.channels.includes(c.index) ? cur.limits[cur.channels.indexOf(c.index)] : c.limits)) });
      };
      color.onchange = () => {
        if (pos < 0) return;
        send({ ...cur, colors: cur.colors.map((c, i) => (i === pos ? unhex(color.value) : c)) });
      };
      const setLimits = () => {
        const a = Number(lo.value), b = Number(hi.value);
        if (pos < 0 || !(b > a)) return;
        send({ ...cur, percentiles: null, limits: cur.limits.map((l, i) => (i === pos ? [a, b] : l)) });
      };
      lo.onchange = setLimits;
      hi.onchange = setLimits;
      row.append(cb, color, name, lo, hi);
      el.append(row);
    }
    const contrast = document.createElement("label");
    contrast.className = "wsi-display-row";
    contrast.append("contrast ");
    const sel = document.createElement("select");
    sel.className = "wsi-display-percentiles";
    const choices = state.options?.percentile_choices || [];
    for (const p of choices) {
      const opt = document.createElement("option");
      opt.value = p.join(",");
      opt.textContent = `auto ${p[0]}–${p[1]}%`;
      sel.append(opt);
    }
    const manual = document.createElement("option");
    manual.value = "manual";
    manual.textContent = "manual";
    sel.append(manual);
    sel.value = cur.percentiles ? cur.percentiles.join(",") : "manual";
    if (sel.value === "") sel.value = "manual";
    sel.onchange = () => {
      if (sel.value === "manual") return; // edit a channel's limits to set them by hand
      send({ ...cur, percentiles: sel.value.split(",").map(Number) });
    };
    contrast.append(sel);
    const gammaRow = document.createElement("label");
    gammaRow.className = "wsi-display-row";
    gammaRow.append("gamma ");
    const gamma = document.createElement("input");
    gamma.type = "range"; gamma.className = "wsi-display-gamma";
    // log scale: slider -1..1 -> gamma 0.1..10
    gamma.min = "-1"; gamma.max = "1"; gamma.step = "0.01";
    gamma.value = String(Math.log10(cur.gamma || 1));
    const gv = document.createElement("span");
    gv.className = "wsi-display-gamma-value";
    gv.textContent = (cur.gamma || 1).toFixed(2);
    gamma.oninput = () => { gv.textContent = Math.pow(10, Number(gamma.value)).toFixed(2); };
    gamma.onchange = () => send({ ...cur, gamma: Math.round(Math.pow(10, Number(gamma.value)) * 100) / 100 });
    gammaRow.append(gamma, gv);
    el.append(contrast, gammaRow);
    if (state.error) {
      const err = document.createElement("div");
      err.className = "wsi-display-error";
      err.textContent = state.error;
      el.append(err);
    }
  };
  update();
  return update;
}
