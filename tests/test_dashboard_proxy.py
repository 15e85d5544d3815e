"""The Dask dashboard through a REAL Jupyter server with jupyter-server-proxy: the link a job row shows
(``<base_url>proxy/<port>/status``) serves the dashboard of a real LocalCluster with the server's token,
and is refused without it."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from tests.jupyter_env import jupyter_server

pytest.importorskip("jupyter_server_proxy")
pytest.importorskip("bokeh")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect (to the login page) is the answer itself
        return None


def _fetch(url: str, token: str | None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=60) as resp:
            return resp.status, resp.headers.get("Location", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read()


def test_the_dashboard_link_of_a_job_row_serves_the_dashboard_through_the_server(tmp_path):
    from distributed import LocalCluster

    from wsi_lab.ui.dashboard import dashboard_html

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, \
            jupyter_server(tmp_path, app="server", base_url="/user/ann/",
                           extensions={"jupyter_server_proxy": True}) as srv:
        shown = dashboard_html(cluster.dashboard_link, srv.base_url)  # what the console's job row shows
        href = re.search(r"href='([^']+)'[^>]*class='wsi-lab-dashboard-proxied'", shown)
        assert href, shown
        path = href.group(1)
        assert path.startswith("/user/ann/proxy/") and path.endswith("/status")
        status, _, body = _fetch(srv.origin + path, srv.token)
        assert status == 200, (status, body[:300], srv.log_text()[-2000:])
        text = body.decode(errors="replace")
        assert "bokeh" in text.lower() and "dask" in text.lower()
        status, where, body = _fetch(srv.origin + path, None)  # no token: the login page, never the dashboard
        assert status in (302, 401, 403) and b"bokeh" not in body.lower(), (status, body[:300])
        assert status != 302 or "login" in where
        status, _, _ = _fetch(srv.origin + path, "not-the-token")
        assert status in (302, 401, 403)
