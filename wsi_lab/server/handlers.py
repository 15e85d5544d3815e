"""Tornado handlers of the ``wsi_lab.server`` extension: thin wrappers over :class:`SlideRegistry`.

Every route sits under ``{base_url}wsi-lab/api/`` and requires an authenticated user who may *read*
``contents`` (the slides are files under the server root). Errors answer JSON ``{"message": ...}``
naming files relative to the root: 400 bad parameters/coordinates (numbers of more than
:data:`MAX_DIGITS` digits, layer JSON nested too deep, opacity outside [0, 1]), 403 paths escaping the
root, 404 unknown slides/layers/tiles, 413 layers too large to keep, 422 files no reader can open (or
that time out opening); never a 500 for bad input. All blocking work (slide I/O, JSON parsing, layer
decoding) runs on the extension's worker threads, never on the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from wsi_lab.errors import (
    InvalidParameterError,
    PathSecurityError,
    RegionTooLargeError,
    SlideNotFoundError,
    SlideOpenError,
    SlideReadError,
    UnsupportedFormatError,
    WSILabError,
)
from wsi_lab.server.registry import SlideRegistry
from wsi_lab.viewing import MAX_LAYER_BYTES

log = logging.getLogger(__name__)

AUTH_RESOURCE = "contents"
#: longest number accepted in a tile address (Python refuses int() of 4,301+ digits; no level or tile
#: index of a real pyramid needs more than a few)
MAX_DIGITS = 9


def _status(exc: Exception) -> int:
    if isinstance(exc, (PathSecurityError, PermissionError)):
        return 403
    if isinstance(exc, (SlideNotFoundError, FileNotFoundError)):
        return 404
    if isinstance(exc, RegionTooLargeError):
        return 413
    if isinstance(exc, InvalidParameterError):
        return 400
    if isinstance(exc, (UnsupportedFormatError, SlideOpenError, SlideReadError)):
        return 422
    return 500


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, registry: SlideRegistry, pool: ThreadPoolExecutor) -> None:
        self.registry = registry
        self.pool = pool

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking ``fn`` in the tile thread pool; map WSI Lab errors to HTTP errors."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except (WSILabError, FileNotFoundError, PermissionError) as exc:  # a file may go between listing and reading
            code = _status(exc)
            if code == 500:
                log.exception("wsi-lab request failed")
            # errors carry their file (WSILabError.file); the browser only learns root-relative names
            if isinstance(exc, WSILabError):
                message = exc.message_for(self.registry.root)
            else:
                message = str(exc).replace(f"{self.registry.root}/", "").replace(str(self.registry.root), ".")
            raise web.HTTPError(code, message) from exc

    def send_bytes(self, data: bytes, content_type: str) -> None:
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "private, max-age=3600")
        self.update_api_activity()
        JupyterHandler.finish(self, data)  # APIHandler.finish would force application/json


def _int(text: str) -> int:
    """A tile address number (the routes only match digits); too many digits answer 400."""
    if len(text) > MAX_DIGITS:
        raise web.HTTPError(400, f"tile address number {text[:12]}... has {len(text)} digits; at most {MAX_DIGITS}")
    return int(text)


class SlidesHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self) -> None:
        """List servable slides: ``[{id, name, path, width, height, mpp, ...}]``."""
        self.finish(json.dumps(await self.call(self.registry.list_slides)))


class SlideInfoHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self, key: str, ext: str | None = None) -> None:
        """``slides/{id}`` (JSON info) or ``slides/{id}.dzi`` (DZI XML)."""
        if ext == ".dzi":
            xml = await self.call(self.registry.dzi_xml, key)
            self.set_header("Content-Type", "application/xml")
            self.finish(xml)
            return
        self.finish(json.dumps(await self.call(self.registry.describe, key)))


class SlideByPathHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self) -> None:
        """``slide?path=<root-relative path>[&path=...]``: the same info as ``slides/{id}`` (validated path)
        for the first given path that is a slide under the root (one request, no 404 per wrong guess)."""
        rels = self.get_query_arguments("path") or [""]
        for rel in rels[:-1]:
            try:
                key = await self.call(self.registry.key_for_path, rel)
            except web.HTTPError as exc:
                if exc.status_code != 404:
                    raise
                continue
            self.finish(json.dumps(await self.call(self.registry.describe, key)))
            return
        key = await self.call(self.registry.key_for_path, rels[-1])
        self.finish(json.dumps(await self.call(self.registry.describe, key)))


class TileHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self, key: str, level: str, col: str, row: str) -> None:
        display = self.get_query_argument("display", None)  # the viewer's display settings (wire.display_token)
        data = await self.call(self.registry.tile_bytes, key, _int(level), _int(col), _int(row), display)
        self.send_bytes(data, "image/jpeg")


class OverlayTileHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self, key: str, layer_key: str, level: str, col: str, row: str) -> None:
        data = await self.call(self.registry.overlay_bytes, key, layer_key, _int(level), _int(col), _int(row))
        self.send_bytes(data, "image/png")


class LayersHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def post(self) -> None:
        """Register an overlay layer (see :mod:`wsi_lab.server.layers`); answers ``{"key": ...}``. The body
        is parsed and decoded on a worker thread (a large snapshot takes a while to decode)."""
        if len(self.request.body) > MAX_LAYER_BYTES:
            raise web.HTTPError(413, f"layer payload larger than {MAX_LAYER_BYTES} bytes")
        key = await self.call(self.registry.add_layer_json, self.request.body)
        self.finish(json.dumps({"key": key}))


def handlers(base_url: str, registry: SlideRegistry, pool: ThreadPoolExecutor) -> list[tuple]:
    """Tornado URL specs of the extension under ``base_url``."""
    api = url_path_join(base_url, "wsi-lab", "api")
    kw = {"registry": registry, "pool": pool}
    tile = r"(\d+)/(\d+)_(\d+)"
    return [
        (api + r"/slides/?", SlidesHandler, kw),
        (api + r"/slides/([0-9a-f]{16})(\.dzi|\.json)?", SlideInfoHandler, kw),
        (api + r"/slide", SlideByPathHandler, kw),
        (api + r"/tiles/([0-9a-f]{16})/" + tile + r"\.jpe?g", TileHandler, kw),
        (api + r"/overlays/([0-9a-f]{16})/([0-9a-f]{8,64})/" + tile + r"\.png", OverlayTileHandler, kw),
        (api + r"/layers", LayersHandler, kw),
    ]
