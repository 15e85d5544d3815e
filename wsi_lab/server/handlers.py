"""Tornado handlers of the ``wsi_lab.server`` extension: thin wrappers over :class:`SlideRegistry`.

Every route sits under ``{base_url}wsi-lab/api/`` and requires an authenticated user who may *read*
``contents`` (the slides are files under the server root). Errors answer JSON ``{"message": ...}``:
400 bad parameters/coordinates, 403 paths escaping the root, 404 unknown slides/layers/tiles,
422 files no reader can open; never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from wsi_lab.errors import (InvalidParameterError, PathSecurityError, SlideNotFoundError, SlideOpenError,
                            SlideReadError, UnsupportedFormatError, WSILabError)
from wsi_lab.server.registry import SlideRegistry
from wsi_lab.viewing import MAX_LAYER_BYTES

log = logging.getLogger(__name__)

AUTH_RESOURCE = "contents"


def _status(exc: Exception) -> int:
    if isinstance(exc, (PathSecurityError, PermissionError)):
        return 403
    if isinstance(exc, (SlideNotFoundError, FileNotFoundError)):
        return 404
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
            # messages name files by absolute path; the browser only learns root-relative ones
            message = str(exc).replace(f"{self.registry.root}/", "").replace(str(self.registry.root), ".")
            raise web.HTTPError(code, message) from exc

    def send_bytes(self, data: bytes, content_type: str) -> None:
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "private, max-age=3600")
        self.update_api_activity()
        JupyterHandler.finish(self, data)  # APIHandler.finish would force application/json


def _int(text: str) -> int:
    return int(text)  # the routes only match digits


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
            dz = await self.call(self.registry.deepzoom, key)
            self.set_header("Content-Type", "application/xml")
            self.finish(dz.dzi_xml())
            return
        self.finish(json.dumps(await self.call(self.registry.describe, key)))


class SlideByPathHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self) -> None:
        """``slide?path=<root-relative path>``: the same info as ``slides/{id}`` (validated path)."""
        rel = self.get_query_argument("path", "")
        key = await self.call(self.registry.key_for_path, rel)
        self.finish(json.dumps(await self.call(self.registry.describe, key)))


class TileHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self, key: str, level: str, col: str, row: str) -> None:
        dz = await self.call(self.registry.deepzoom, key)
        data = await self.call(dz.get_tile_bytes, _int(level), _int(col), _int(row))
        self.send_bytes(data, "image/jpeg")


class OverlayTileHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def get(self, key: str, layer_key: str, level: str, col: str, row: str) -> None:
        dz = await self.call(self.registry.deepzoom, key)
        layer = await self.call(self.registry.layer, layer_key)
        data = await self.call(dz.get_overlay_bytes, layer, _int(level), _int(col), _int(row), layer_key, False)
        self.send_bytes(data, "image/png")


class LayersHandler(BaseHandler):
    @web.authenticated
    @authorized(action="read", resource=AUTH_RESOURCE)
    async def post(self) -> None:
        """Register an overlay layer (see :mod:`wsi_lab.server.registry`); answers ``{"key": ...}``."""
        if len(self.request.body) > MAX_LAYER_BYTES:
            raise web.HTTPError(413, f"layer payload larger than {MAX_LAYER_BYTES} bytes")
        try:
            payload = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise web.HTTPError(400, f"layer payload is not JSON: {exc}") from exc
        key = await self.call(self.registry.add_layer, payload)
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
