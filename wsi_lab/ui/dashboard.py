"""The Dask dashboard link, served through the Jupyter server where that works.

Where JupyterLab itself is remote (a cloud notebook instance), ``http://127.0.0.1:8787/status`` points at
the user's own machine. With jupyter-server-proxy installed the Jupyter server forwards
``<base_url>proxy/<port>/status`` to the dashboard on its own host, behind the server's login: that is
the link shown first. The base URL is the one of the server that started this kernel
(``JUPYTERHUB_SERVICE_PREFIX`` on JupyterHub/SageMaker, else the running server whose process is the
kernel's parent, else ``/``). With dask-labextension installed its panes are offered too.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DashboardLinks", "dashboard_links", "server_base_url", "proxied_url", "dashboard_html"]


def server_base_url() -> str:
    """The base URL of the Jupyter server this kernel runs under (always ends with ``/``)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or os.environ.get("WSI_LAB_SERVER_BASE_URL")
    if prefix:
        return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return "/"
    parent = os.getppid()
    try:
        for info in list_running_servers():
            if info.get("pid") == parent:
                base = str(info.get("base_url") or "/")
                return base if base.endswith("/") else base + "/"
    except OSError:  # an unreadable runtime folder
        return "/"
    return "/"


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[str]:
    """This host's names and addresses: a dashboard link may name the host's own IP (Dask writes it for an
    in-process cluster) while the server reaches it on localhost."""
    names = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}
    try:
        host = socket.gethostname()
        names |= {host, socket.getfqdn()}
        names |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:  # no resolvable host name: loopback names only
        pass
    try:
        from distributed.utils import get_ip  # the address Dask writes into its links (no packet is sent)

        names.add(str(get_ip()))
    except (ImportError, OSError, ValueError):
        pass
    return frozenset(names)


def proxied_url(link: str, base_url: str | None = None) -> str | None:
    """``<base_url>proxy/<port><path>`` for a dashboard on this host (loopback, or this host's own name or
    address), or None for a remote host or a link without a port."""
    parts = urlsplit(link)
    if parts.hostname not in _own_addresses() or parts.port is None:
        return None
    base = base_url if base_url is not None else server_base_url()
    path = parts.path or "/status"
    return f"{base}proxy/{parts.port}{path}"


@dataclass(frozen=True)
class DashboardLinks:
    """``direct``: the dashboard's own URL; ``proxied``: through the Jupyter server (None without
    jupyter-server-proxy); ``labextension``: dask-labextension is installed (its panes take ``direct``)."""

    direct: str
    proxied: str | None
    labextension: bool


def dashboard_links(link: str, base_url: str | None = None) -> DashboardLinks:
    """The links to show for a Dask dashboard at ``link`` (see :class:`DashboardLinks`)."""
    has_proxy = importlib.util.find_spec("jupyter_server_proxy") is not None
    has_ext = importlib.util.find_spec("dask_labextension") is not None
    return DashboardLinks(link, proxied_url(link, base_url) if has_proxy else None, has_ext)


def dashboard_html(link: str, base_url: str | None = None) -> str:
    """The dashboard line of a job: the proxied link first, the direct one, and the labextension hint."""
    links = dashboard_links(link, base_url)
    direct = html.escape(links.direct)
    parts = []
    if links.proxied:
        prox = html.escape(links.proxied)
        parts.append(f"Dask dashboard: <a href='{prox}' target='_blank' class='wsi-lab-dashboard-proxied'>{prox}</a>"
                     f" (through this Jupyter server) &middot; direct: "
                     f"<a href='{direct}' target='_blank' class='wsi-lab-dashboard'>{direct}</a>")
    else:
        parts.append(f"Dask dashboard: <a href='{direct}' target='_blank' class='wsi-lab-dashboard'>{direct}</a>"
                     " <small>(on a remote JupyterLab: <code>pip install jupyter-server-proxy</code> serves it"
                     " through the Jupyter server)</small>")
    if links.labextension:
        parts.append(f"<small>dask-labextension: open the Dask tab in the left sidebar and paste <code>{direct}"
                     "</code> to dock its panes</small>")
    return "<br>".join(parts)
