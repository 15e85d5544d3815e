"""``TileGallery``: a strip of tile pictures (anywidget) that reports clicks and key presses.

Pictures travel as JPEG data URLs in ``images`` with one caption each; a click sets ``index``; a key
pressed while the gallery has focus is sent as ``{type: "key", key}`` to the Python callbacks registered
with :meth:`TileGallery.on_key` (the review panel's shortcuts). The front end is a few lines of plain
ESM, kept here (no bundling needed).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import numpy as np
import traitlets

from wsi_lab.ui.common import encode_image

log = logging.getLogger(__name__)

__all__ = ["TileGallery", "data_url"]

_ESM = r"""
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "wsi-gallery";
  root.tabIndex = 0;
  const title = document.createElement("div");
  title.className = "wsi-gallery-title";
  const strip = document.createElement("div");
  strip.className = "wsi-gallery-strip";
  root.append(title, strip);
  el.append(root);
  const draw = () => {
    title.textContent = model.get("title");
    strip.innerHTML = "";
    const imgs = model.get("images") || [], caps = model.get("captions") || [];
    const sel = model.get("index"), marked = new Set(model.get("marked") || []);
    imgs.forEach((src, i) => {
      const cell = document.createElement("figure");
      cell.className = "wsi-gallery-cell" + (i === sel ? " wsi-gallery-selected" : "") +
        (marked.has(i) ? " wsi-gallery-marked" : "");
      cell.dataset.index = String(i);
      const im = document.createElement("img");
      im.src = src; im.width = model.get("size"); im.height = model.get("size");
      const cap = document.createElement("figcaption");
      cap.textContent = caps[i] || "";
      cell.append(im, cap);
      cell.onclick = () => { model.set("index", i); model.save_changes(); root.focus(); };
      strip.append(cell);
    });
    root.dataset.count = String(imgs.length);
    root.dataset.index = String(sel);
  };
  root.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    ev.preventDefault(); ev.stopPropagation();  // keep JupyterLab's own shortcuts out of the review
    model.send({ type: "key", key: ev.key, t: performance.now() });
  });
  model.on("change:images", draw); model.on("change:captions", draw);
  model.on("change:index", draw); model.on("change:marked", draw); model.on("change:title", draw);
  draw();
  return () => { model.off("change:images", draw); model.off("change:captions", draw);
    model.off("change:index", draw); model.off("change:marked", draw); model.off("change:title", draw); };
}
export default { render };
"""

_CSS = """
.wsi-gallery { outline: none; padding: 2px; border: 1px solid transparent; border-radius: 4px; }
.wsi-gallery:focus { border-color: var(--jp-brand-color1, #1976d2); }
.wsi-gallery-title { font-weight: bold; font-size: 12px; margin: 2px 0; }
.wsi-gallery-strip { display: flex; flex-wrap: wrap; gap: 4px; }
.wsi-gallery-cell { margin: 0; padding: 2px; border: 2px solid transparent; cursor: pointer; font-size: 10px;
  text-align: center; max-width: 110px; overflow: hidden; }
.wsi-gallery-cell img { display: block; }
.wsi-gallery-marked { border-color: #2ca02c; }
.wsi-gallery-selected { border-color: #d62728; }
"""


def data_url(tile: np.ndarray, quality: int = 85) -> str:
    """A JPEG data URL of an (H, W, 3) uint8 tile."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_image(tile, "jpeg", quality)).decode("ascii")


class TileGallery(anywidget.AnyWidget):
    """Tile pictures with captions; ``index`` is the selected one (-1: none); ``marked`` the positions
    drawn with a green frame (e.g. decided tiles). ``set_tiles(pictures, captions)`` replaces them."""

    _esm = _ESM
    _css = _CSS

    images: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    captions: traitlets.List[str] = traitlets.List(traitlets.Unicode()).tag(sync=True)
    marked: traitlets.List[int] = traitlets.List(traitlets.Int()).tag(sync=True)
    index = traitlets.Int(-1).tag(sync=True)
    size = traitlets.Int(96).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, title: str = "", size: int = 96, **kwargs: Any) -> None:
        super().__init__(title=title, size=size, **kwargs)
        self._key_callbacks: list[Callable[[str], Any]] = []
        self.on_msg(self._on_msg)

    def set_tiles(self, pictures: Sequence[np.ndarray], captions: Sequence[str] = (), index: int = -1) -> None:
        """Show ``pictures`` ((H, W, 3) uint8 each) with ``captions``; select ``index``."""
        with self.hold_sync():
            self.images = [data_url(p) for p in pictures]
            self.captions = [str(c) for c in captions] or [""] * len(pictures)
            self.marked = []
            self.index = index if -1 <= index < len(pictures) else -1

    def on_key(self, callback: Callable[[str], Any]) -> None:
        """Call ``callback(key)`` for each key pressed while the gallery has focus (``"a"``, ``"ArrowRight"``)."""
        self._key_callbacks.append(callback)

    def press(self, key: str) -> None:
        """Handle ``key`` as if pressed in the browser (tests, benchmarks, notebooks)."""
        for cb in list(self._key_callbacks):
            try:
                cb(key)
            except Exception:
                log.exception("gallery key callback %r failed", cb)

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "key" and isinstance(content.get("key"), str):
            self.press(content["key"])
