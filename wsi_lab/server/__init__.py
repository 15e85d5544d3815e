"""Jupyter server extension serving deep-zoom slide tiles and overlay tiles to ``SlideViewer``.

Enabled on install by ``jupyter-config/jupyter_server_config.d/wsi_lab.json``; check with
``jupyter server extension list``. Routes (all under ``{base_url}wsi-lab/api/``, behind Jupyter
authentication and ``contents:read`` authorization, only for slides inside the server's ``root_dir``):

- ``GET slides``: JSON list ``[{id, name, path, width, height, mpp, ...}]``
- ``GET slides/{id}`` / ``slides/{id}.dzi``: deep-zoom info JSON / DZI XML
- ``GET slide?path=<root-relative path>``: the same info, for a validated relative path
- ``GET tiles/{id}/{level}/{col}_{row}.jpeg[?display=<token>]``: a slide tile, shown with the display
  settings the token names (:func:`wsi_lab.viewing.display_token`; the viewer's channel picker), else the
  slide's automatic ones
- ``POST layers`` (``{"layer": Layer.to_json()}``) -> ``{"key"}``; ``GET overlays/{id}/{key}/{level}/{col}_{row}.png``

Ids are hashes of root-relative paths (:func:`wsi_lab.viewing.slide_key`). This package only
imports tornado/jupyter_server when the server loads it. Settings (environment of the server process):
``WSI_LAB_MAX_OPEN_SLIDES`` (idle slides kept open, 16), ``WSI_LAB_OPEN_TIMEOUT_S`` (limit of one slide
open, 60), ``WSI_LAB_TILE_CACHE_MB`` (encoded tiles per open slide, 64), ``WSI_LAB_LAYER_CACHE_MB``
(decoded overlay layers, 512).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "wsi_lab.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the handlers on ``serverapp.web_app`` for slides under the server's root directory."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from wsi_lab.server.handlers import handlers
    from wsi_lab.server.registry import SlideRegistry

    root = getattr(serverapp.contents_manager, "root_dir", None) or serverapp.root_dir
    registry = SlideRegistry(root, max_open=_env_int("WSI_LAB_MAX_OPEN_SLIDES", 16))
    pool = ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 2)), thread_name_prefix="wsi-lab-tiles")
    web_app = serverapp.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"], registry, pool))
    web_app.settings["wsi_lab_registry"] = registry
    serverapp.log.info("wsi_lab.server: serving slide tiles from %s under %swsi-lab/api/", registry.root,
                       web_app.settings["base_url"])


def _env_int(name: str, default: int) -> int:
    import os

    raw = os.environ.get(name, "")
    if raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    if raw:
        log.warning("%s=%r is not a positive integer; using %d", name, raw, default)
    return default


# the name jupyter_server looks for in older versions
load_jupyter_server_extension = _load_jupyter_server_extension
