/**
 * Where the SlideViewer's tiles come from: the wsi_lab.server Jupyter extension over HTTP (found with one
 * probe request for every root-relative path the slide could have), or the kernel over the widget comm
 * (request ids, errors as messages). Shared types of the model state live here too.
 */
import OpenSeadragon from "openseadragon";

export type AnyModel = {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[]): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event: string, cb?: (...args: any[]) => void): void;
};

export interface SlideInfo {
  name: string; width: number; height: number; mpp: [number, number] | null;
  tile_size: number; overlap: number; level_count: number; size_bytes: number;
  candidates: { path: string; id: string }[];
}
export interface LayerState {
  key: string; name: string; opacity: number; visible: boolean; legend: any; payload: unknown;
}
export interface ServerTarget { base: string; id: string; headers: Record<string, string> }

export function pageConfig(): { baseUrl: string; token: string } {
  let baseUrl = "/";
  let token = "";
  const el = document.getElementById("jupyter-config-data");
  if (el?.textContent) {
    try {
      const cfg = JSON.parse(el.textContent);
      baseUrl = cfg.baseUrl || baseUrl;
      token = cfg.token || "";
    } catch { /* not JSON: keep defaults */ }
  } else if (document.body?.dataset?.baseUrl) {
    baseUrl = document.body.dataset.baseUrl; // classic notebook / nbclassic
  }
  if (!baseUrl.endsWith("/")) baseUrl += "/";
  return { baseUrl, token };
}

export function authHeaders(token: string): Record<string, string> {
  const h: Record<string, string> = {};
  if (token) h["Authorization"] = `token ${token}`;
  const xsrf = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  if (xsrf) h["X-XSRFToken"] = decodeURIComponent(xsrf[1]);
  return h;
}

/** Find this slide on the Jupyter server extension: one request lists every root-relative path it could
 * have there (shortest first); the server answers for the first that exists, so wrong guesses log no
 * 404s. Keep it when size and dimensions match. */
export async function probeServer(info: SlideInfo): Promise<ServerTarget | null> {
  const { baseUrl, token } = pageConfig();
  const headers = authHeaders(token);
  if (!info.candidates.length) return null;
  const query = info.candidates.map((c) => `path=${encodeURIComponent(c.path)}`).join("&");
  try {
    // by validated root-relative path: O(1) per candidate on the server (no folder scan), registers the id
    const r = await fetch(`${baseUrl}wsi-lab/api/slide?${query}`, { headers, credentials: "same-origin" });
    if (!r.ok) return null;
    const got = await r.json();
    if (got.width === info.width && got.height === info.height && got.size_bytes === info.size_bytes) {
      return { base: `${baseUrl}wsi-lab/api/`, id: got.id, headers };
    }
  } catch { /* network error: extension absent */ }
  return null;
}

/** Request/response over the widget comm with ids; errors come back as messages. */
export class CommClient {
  private pending = new Map<string, { resolve: (b: DataView) => void; reject: (e: Error) => void }>();
  private prefix = Math.random().toString(36).slice(2, 8);
  private next = 0;
  private handler = (msg: any, buffers: DataView[]) => {
    if (!msg || typeof msg.id !== "string" || !this.pending.has(msg.id)) return;
    const p = this.pending.get(msg.id)!;
    this.pending.delete(msg.id);
    if (msg.ok && buffers && buffers.length) p.resolve(buffers[0]);
    else p.reject(new Error(msg.error || "no data"));
  };
  constructor(private model: AnyModel) { model.on("msg:custom", this.handler); }
  request(content: Record<string, unknown>): Promise<DataView> {
    const id = `${this.prefix}-${this.next++}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.model.send({ ...content, id });
    });
  }
  dispose() {
    this.model.off("msg:custom", this.handler);
    for (const p of this.pending.values()) p.reject(new Error("viewer closed"));
    this.pending.clear();
  }
}

export function commTileSource(info: SlideInfo, comm: CommClient, layerKey: string | null, display = ""): any {
  const ts: any = new (OpenSeadragon as any).TileSource({
    width: info.width, height: info.height, tileSize: info.tile_size, tileOverlap: info.overlap,
    minLevel: 0, maxLevel: info.level_count - 1,
  });
  const kind = layerKey ? "overlay" : "tile";
  // the display token only names the URL (tiles of other settings are other tiles to OpenSeadragon's
  // cache); the kernel already shows its viewer's current settings
  ts.getTileUrl = (level: number, x: number, y: number) =>
    `comm:${kind}/${layerKey ?? "slide"}${display ? "~" + display : ""}/${level}/${x}_${y}.${layerKey ? "png" : "jpeg"}`;
  ts.downloadTileStart = (context: any) => {
    const m = /(\d+)\/(\d+)_(\d+)\.\w+$/.exec(context.src);
    if (!m) { context.finish(null, null, `bad tile address ${context.src}`); return; }
    const [level, col, row] = [Number(m[1]), Number(m[2]), Number(m[3])];
    const req: Record<string, unknown> = { type: kind, level, col, row };
    if (layerKey) req.layer = layerKey;
    context.userData.aborted = false;
    comm.request(req).then((buf) => {
      if (context.userData.aborted) return;
      const blob = new Blob([buf as unknown as BlobPart], { type: layerKey ? "image/png" : "image/jpeg" });
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.onload = () => { URL.revokeObjectURL(url); context.finish(img, null); };
      img.onerror = () => { URL.revokeObjectURL(url); context.finish(null, null, "tile image could not be decoded"); };
      img.src = url;
    }, (err: Error) => {
      if (!context.userData.aborted) context.finish(null, null, err.message);
    });
  };
  ts.downloadTileAbort = (context: any) => { context.userData.aborted = true; };
  return ts;
}

export function httpTileSource(info: SlideInfo, target: ServerTarget, layerKey: string | null, display = ""): any {
  const ts: any = new (OpenSeadragon as any).TileSource({
    width: info.width, height: info.height, tileSize: info.tile_size, tileOverlap: info.overlap,
    minLevel: 0, maxLevel: info.level_count - 1,
  });
  ts.getTileUrl = layerKey
    ? (l: number, x: number, y: number) => `${target.base}overlays/${target.id}/${layerKey}/${l}/${x}_${y}.png`
    : (l: number, x: number, y: number) =>
      `${target.base}tiles/${target.id}/${l}/${x}_${y}.jpeg${display ? `?display=${display}` : ""}`;
  return ts;
}

