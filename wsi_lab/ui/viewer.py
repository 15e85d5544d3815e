"""``SlideViewer``: a deep-zoom slide viewer widget (anywidget + OpenSeadragon) with overlay layers.

Tiles reach the browser two ways (``tile_source``):

- ``"server"``: from the ``wsi_lab.server`` Jupyter server extension over HTTP (fast, cached by the
  browser, no kernel round trip). The kernel does not know the server's root directory, so the widget
  lists the root-relative paths its slide could have (``a.svs``, ``cases/a.svs``, ...) with their ids;
  the front end asks the server for each id and keeps the one whose size and dimensions match.
  Overlay layers travel as JSON in the widget state and the front end POSTs them to the server (see
  see :mod:`wsi_lab.viewing.wire` and :mod:`wsi_lab.server.registry` for why).
- ``"comm"``: over the widget's own comm, as binary buffers with request ids (VS Code, hubs without
  the extension): ``{type: "tile", id, level, col, row}`` -> ``{type: "tile", id, ok, error?}`` + JPEG.
- ``"auto"`` (default): server when the probe succeeds, else comm. ``active_source`` tells which.

Both paths use the same :class:`~wsi_lab.viewing.DeepZoom` geometry and encoder, so the bytes match.
Coordinates are level-0 pixels: ``viewport`` is ``[x, y, width, height]``; clicks report ``(x, y)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets
from ipywidgets.widgets.trait_types import bytes_serialization

from wsi_lab.errors import InvalidParameterError, WSILabError
from wsi_lab.ui.display_controls import attach_display, set_display
from wsi_lab.viewing import (
    OVERLAP,
    QUALITY,
    TILE_SIZE,
    DeepZoom,
    layer_payload_key,
    relative_candidates,
    slide_key,
    snapshot_layer,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parents[1] / "static"

__all__ = ["SlideViewer"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SlideViewer(anywidget.AnyWidget):
    """Pan/zoom a slide in the notebook with overlay layers, a legend, a scale bar and tile picking.

    ``slide_or_path``: a :class:`~wsi_lab.slide.Slide` or a path; ``layers``: overlay layers
    (``wsi_lab.overlays`` layers, or any object with ``render_region``/``name``/``opacity``);
    ``table``: the TileTable whose row is reported when a tile is clicked (level-0 ``x``, ``y``);
    ``tile_source``: ``"auto"`` | ``"server"`` | ``"comm"``.
    """

    _esm = STATIC / "viewer.js"
    _css = STATIC / "viewer.css"

    slide_info = traitlets.Dict().tag(sync=True)
    tile_source = traitlets.Unicode("auto").tag(sync=True)
    active_source = traitlets.Unicode("").tag(sync=True)
    layers: traitlets.List[dict] = traitlets.List().tag(sync=True)
    viewport: traitlets.List[float] = traitlets.List().tag(sync=True)
    selected_tile = traitlets.Dict().tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    height = traitlets.Unicode("500px").tag(sync=True)
    display_state = traitlets.Dict().tag(sync=True)  # channel picker, contrast, gamma: ui/display_controls.py
    # float32 level-0 boxes [x, y, w, h]*N drawn in the browser; also set by the page from a linked scatter's
    # lasso (``link``), which is not echoed back
    highlight = traitlets.Bytes(b"").tag(sync=True, echo_update=False, **bytes_serialization)
    link = traitlets.Unicode("").tag(sync=True)  # a token shared with a ScatterPlot in the same page
    highlight_painted = traitlets.Int(0).tag(sync=True)  # counted up by the browser once a highlight is on screen

    def __init__(self, slide_or_path: Any, layers: Any = (), tile_source: str = "auto", table: Any = None,
                 height: str = "500px", **kwargs: Any) -> None:
        if tile_source not in ("auto", "server", "comm"):
            raise InvalidParameterError(f"tile_source must be 'auto', 'server' or 'comm', got {tile_source!r}")
        self._owns_slide = False  # set once a slide is open: close()/__del__ work after a failed open
        if isinstance(slide_or_path, (str, os.PathLike)):
            from wsi_lab.slide import open_slide

            slide = open_slide(slide_or_path)
            self._owns_slide = True
        else:
            slide = slide_or_path
        self.slide = slide
        try:
            self._setup(slide, layers, tile_source, table, height, **kwargs)
        except BaseException:
            self.close()
            raise

    def _setup(self, slide: Any, layers: Any, tile_source: str, table: Any, height: str, **kwargs: Any) -> None:
        self.deepzoom = DeepZoom(slide, TILE_SIZE, OVERLAP, QUALITY, display="auto")
        self.table = table
        self._layer_objects: dict[str, Any] = {}
        self._click_callbacks: list[Callable[[int, int, Any], Any]] = []
        path = Path(slide.path)
        info = self.deepzoom.info()
        info.update(name=path.name, size_bytes=path.stat().st_size if path.exists() else -1,
                    candidates=[{"path": p, "id": slide_key(p)} for p in relative_candidates(path)])
        super().__init__(slide_info=info, tile_source=tile_source, height=height, **kwargs)
        for layer in layers:
            self.add_layer(layer)
        self.on_msg(self._on_msg)
        attach_display(self)  # fluorescence: settings recorded in ./display.json, reloaded here

    def set_display(self, **changes: Any) -> Any:
        """Channels, colours, contrast limits or percentiles, gamma (see :func:`wsi_lab.ui.display_controls.set_display`)."""
        return set_display(self, **changes)

    def close(self) -> None:
        """Close the widget (and the slide, when the viewer opened it from a path)."""
        super().close()
        if getattr(self, "_owns_slide", False) and getattr(self, "slide", None) is not None:
            self._owns_slide = False
            self.slide.close()

    # -- layers -------------------------------------------------------------------------------
    def add_layer(self, layer: Any, opacity: float | None = None, visible: bool = True) -> str:
        """Show ``layer`` over the slide; returns its key. Opacity defaults to the layer's own. A name
        (``"heatmap:tumor"``, ``"clusters"``, ``"pred"``, a column: see
        :func:`wsi_lab.overlays.resolve_layers`) draws from the viewer's ``table``."""
        if isinstance(layer, str):
            from wsi_lab.overlays import resolve_layers, slide_rows

            layer = resolve_layers([layer], table=slide_rows(self.table, self.slide), slide=self.slide)[-1]
        if callable(getattr(layer, "to_json", None)):
            import json

            payload = {"layer": json.loads(layer.to_json())}
            obj = layer
        else:
            snap = snapshot_layer(layer, self.slide.dimensions)
            payload = {"snapshot": {"png_b64": __import__("base64").b64encode(snap.to_png()).decode("ascii"),
                                    "downsample": snap.downsample, "name": snap.name, "opacity": snap.opacity,
                                    "legend": snap.legend}}
            obj = snap
        key = layer_payload_key(payload)
        self._layer_objects[key] = obj
        legend = layer.legend() if callable(getattr(layer, "legend", None)) else {}
        entry = {"key": key, "name": str(getattr(layer, "name", f"layer {len(self.layers)}")),
                 "opacity": float(opacity if opacity is not None else getattr(layer, "opacity", 1.0)),
                 "visible": bool(visible), "legend": legend, "payload": payload}
        self.layers = [entry_ for entry_ in self.layers if entry_["key"] != key] + [entry]
        return key

    def remove_layer(self, name_or_key: str) -> None:
        self.layers = [e for e in self.layers if name_or_key not in (e["name"], e["key"])]

    def set_layer(self, name_or_key: str, opacity: float | None = None, visible: bool | None = None) -> None:
        """Change a layer's opacity (0–1) or visibility."""
        found = False
        out = []
        for e in self.layers:
            if name_or_key in (e["name"], e["key"]):
                found = True
                e = {**e, **({"opacity": float(opacity)} if opacity is not None else {}),
                     **({"visible": bool(visible)} if visible is not None else {})}
            out.append(e)
        if not found:
            raise InvalidParameterError(f"no layer named {name_or_key!r}; layers are {[e['name'] for e in self.layers]}")
        self.layers = out

    # -- view -----------------------------------------------------------------------------------
    def go_to(self, x: float, y: float, width: float, height: float) -> None:
        """Show the level-0 box (x, y, width, height)."""
        if not (width > 0 and height > 0):
            raise InvalidParameterError(f"view size must be positive, got {width!r} x {height!r}")
        self.viewport = [float(x), float(y), float(width), float(height)]

    def on_tile_click(self, callback: Callable[[int, int, Any], Any]) -> None:
        """Call ``callback(x, y, row)`` when the user clicks the slide: level-0 ``(x, y)`` and the
        TileTable row (a pandas Series) of the tile under the click, or ``None``."""
        self._click_callbacks.append(callback)

    def tile_at(self, x: float, y: float) -> Any:
        """The row of ``table`` whose level-0 tile box holds ``(x, y)`` (the last one), or ``None``."""
        if self.table is None or len(self.table) == 0:
            return None
        from wsi_lab.overlays import tile_extent

        tx = self.table["x"].to_numpy(float)
        ty = self.table["y"].to_numpy(float)
        size = tile_extent(self.table, self.slide)
        hit = np.nonzero((tx <= x) & (x < tx + size) & (ty <= y) & (y < ty + size))[0]
        return self.table.iloc[int(hit[-1])] if len(hit) else None

    def select(self, x: float, y: float, zoom: bool = True) -> Any:
        """Select the tile under level-0 ``(x, y)`` (as a click does): sets ``selected_tile`` and, with
        ``zoom``, shows it at full resolution. Returns the row or ``None``."""
        row = self.tile_at(x, y)
        if row is None:
            self.selected_tile = {"x": int(x), "y": int(y), "width": 0, "height": 0, "row": None, "zoom": False}
            return None
        from wsi_lab.overlays import tile_extent

        size = float(tile_extent(self.table.loc[[row.name]], self.slide)[0])
        self.selected_tile = {"x": float(row["x"]), "y": float(row["y"]), "width": size, "height": size,
                              "row": {str(k): _jsonable(v) for k, v in row.items()}, "zoom": zoom,
                              "click": [int(x), int(y)]}
        return row

    def read_selected(self) -> np.ndarray:
        """The selected tile at full resolution (level 0) as (H, W, 3) uint8."""
        sel = self.selected_tile
        if not sel or not sel.get("width"):
            raise InvalidParameterError("no tile is selected; click one or call select(x, y)")
        return self.slide.read_region((int(sel["x"]), int(sel["y"])), 0, (int(sel["width"]), int(sel["height"])))

    # -- comm protocol ----------------------------------------------------------------------------
    def handle_request(self, msg: dict) -> tuple[dict, list[bytes]]:
        """Answer one front-end request (``tile`` / ``overlay``): ``(reply, buffers)``. Errors are
        replies with ``ok: False`` and a message, never exceptions or silence."""
        kind, rid = msg.get("type"), msg.get("id")
        try:
            # values from the front end, unchecked: DeepZoom raises typed errors for bad ones
            level: Any = msg.get("level")
            col: Any = msg.get("col")
            row: Any = msg.get("row")
            if kind == "tile":
                data = self.deepzoom.get_tile_bytes(level, col, row)
            elif kind == "overlay":
                key: Any = msg.get("layer")
                layer = self._layer_objects.get(key)
                if layer is None:
                    raise InvalidParameterError(f"no overlay layer {key!r} in this viewer")
                data = self.deepzoom.get_overlay_bytes(layer, level, col, row, key, apply_opacity=False)
            else:
                raise InvalidParameterError(f"unknown request type {kind!r}")
        except WSILabError as exc:
            return {"type": kind, "id": rid, "ok": False, "error": str(exc)}, []
        except Exception as exc:  # a broken layer or reader must not leave the browser waiting
            log.exception("viewer request %s failed", repr(msg))
            return {"type": kind, "id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}, []
        return {"type": kind, "id": rid, "ok": True}, [data]

    def _on_msg(self, _widget: Any, content: dict, buffers: list) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "click":
            self._handle_click(content)
            return
        reply, bufs = self.handle_request(content)
        self.send(reply, buffers=bufs)

    def _handle_click(self, content: dict) -> None:
        try:
            x, y = int(content["x"]), int(content["y"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring malformed click message %s", repr(content))
            return
        row = self.select(x, y)
        for cb in list(self._click_callbacks):
            try:
                cb(x, y, row)
            except Exception:
                log.exception("tile click callback %r failed", cb)
