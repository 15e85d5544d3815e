"""Shared helpers for tests that need a REAL Jupyter server and a REAL browser (import, don't copy).

Server::

    from tests.jupyter_env import jupyter_server, browser_page, open_notebook, run_all_cells, write_notebook

    with jupyter_server(root_dir) as srv:          # `jupyter lab` on 127.0.0.1:<free port>, token auth
        srv.url("api/status")                        # -> "http://127.0.0.1:PORT/api/status" (no token)
        status, headers, body = srv.get("wsi-lab/api/slides")            # token in the Authorization header
        status, _, _ = srv.get("wsi-lab/api/slides", token=None)         # unauthenticated -> 403
        srv.log_text()                               # server + kernel log, for assertion messages

``start_jupyter(root, app="lab"|"server", extensions={...}, base_url="/", token=..., env=...)`` returns a
:class:`JupyterServer` you stop yourself. Each server gets its own temporary JUPYTER_CONFIG_DIR /
RUNTIME_DIR / workspaces (nothing from ``~/.jupyter`` leaks in); ``extensions`` maps server-extension
module names to enabled/disabled (``{"wsi_lab.server": False}`` turns ours off even when installed).
The repository is put on PYTHONPATH, so the kernels it starts import this checkout's ``wsi_lab``.

Browser (Debian ``/usr/bin/chromium`` driven by Playwright, no Playwright browser download)::

    with browser_page() as page:                     # headless Chromium, 1280x900
        open_notebook(page, srv, "nb.ipynb")         # opens /lab/tree/nb.ipynb, waits for an idle kernel
        run_all_cells(page)                          # notebook:run-all-cells, waits until the kernel is idle
        text = run_code(page, "print(1 + 1)")        # appends + runs a cell, returns its output text
        page.wait_for_selector(".my-widget canvas")

JupyterLab runs with ``--LabApp.expose_app_in_browser`` so tests drive it through ``window.jupyterapp``:
``run_command(page, "notebook:restart-kernel")`` executes any Lab command; ``accept_dialogs(page)`` clicks
through dialogs such as "Select Kernel". ``page.console_errors`` collects the browser's console errors.
``write_notebook(path, ["code cell 1", "code cell 2"])`` writes a minimal nbformat-4 notebook.
``lab_notebook(root, "nb.ipynb", cells, viewport)`` is all of that at once (write, serve, open, run all)
and yields ``(server, page)``; ``run_report(page, code)`` runs a cell printing ``REPORT{...json}`` and returns
the JSON; ``kernel_exec(page, code)`` runs code in the kernel without a cell; ``canvas_rgb(page)`` reads a
viewer's canvas; ``save_readme_picture(png, "x.png")`` writes a README picture under ``docs/`` on request.
``CHROMIUM_ARGS`` are the flags that work on this kind of machine (see /work/shared/RECIPES.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("WSI_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                 "--disable-dev-shm-usage"]

__all__ = ["REPO", "CHROMIUM", "CHROMIUM_ARGS", "JupyterServer", "free_port", "start_jupyter", "jupyter_server",
           "browser_available", "browser_marks", "browser_page", "write_notebook", "open_notebook", "run_all_cells", "accept_dialogs",
           "wait_kernel_idle", "run_command", "run_code", "lab_notebook", "kernel_exec", "report_json", "run_report",
           "data_url_rgb", "canvas_rgb", "save_readme_picture"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterServer:
    """A running ``jupyter lab``/``jupyter server`` subprocess (see the module docstring)."""

    root: Path
    port: int
    token: str
    base_url: str
    proc: subprocess.Popen
    workdir: Path
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        """Absolute URL of ``path`` (relative to the base URL), without the token."""
        return self.origin + self.base_url + path.lstrip("/")

    def get(self, path: str, token: str | None = "default", method: str = "GET", body: bytes | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        """HTTP request to ``path``; ``token="default"`` sends this server's token, ``None`` sends none.
        Returns ``(status, headers, body)`` and never raises for HTTP error statuses."""
        hdrs = dict(headers or {})
        if token == "default":
            token = self.token
        if token:
            hdrs["Authorization"] = f"token {token}"
        req = urllib.request.Request(self.url(path), data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str, **kw):
        status, _, body = self.get(path, **kw)
        assert status == 200, (status, body[:500], self.log_text()[-3000:])
        return json.loads(body)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGINT, then SIGTERM/SIGKILL of its process group) and remove its temp dirs."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 8), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                    if sig == signal.SIGINT:  # jupyter asks for confirmation on the first ^C
                        time.sleep(0.2)
                        os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_jupyter(root: str | os.PathLike, app: str = "lab", extensions: dict[str, bool] | None = None,
                  base_url: str = "/", token: str | None = None, env: dict | None = None,
                  timeout: float = 90, extra_args: list[str] | None = None) -> JupyterServer:
    """Start ``jupyter {app}`` serving ``root`` on 127.0.0.1 with token auth and wait until
    ``api/status`` answers; raises RuntimeError (with the log) when it does not start."""
    root = Path(root).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="wsi-lab-jupyter-"))
    config_dir = workdir / "config"
    config_dir.mkdir()
    exts = {"wsi_lab.server": True, **(extensions or {})}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": exts}}))
    token = token or os.urandom(12).hex()
    port = free_port()
    base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    run_env = {**os.environ, **(env or {})}
    run_env.update({
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [run_env.get("PYTHONPATH")])]),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    cmd = [sys.executable, "-m", "jupyterlab" if app == "lab" else "jupyter_server",
           "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", f"--ServerApp.base_url={base_url}",
           "--ServerApp.password=", "--ServerApp.open_browser=False",
           "--ServerApp.shutdown_no_activity_timeout=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    if app == "lab":
        cmd += [f"--LabApp.workspaces_dir={workdir / 'workspaces'}", "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    cmd += extra_args or []
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = JupyterServer(root, port, token, base_url, proc, workdir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = server.log_text()
            server.stop()
            raise RuntimeError(f"jupyter {app} exited with {proc.returncode}:\n{text[-4000:]}")
        with contextlib.suppress(OSError):
            status, _, _ = server.get("api/status", timeout=2)
            if status == 200:
                return server
        time.sleep(0.25)
    text = server.log_text()
    server.stop()
    raise RuntimeError(f"jupyter {app} did not answer within {timeout} s:\n{text[-4000:]}")


@contextlib.contextmanager
def jupyter_server(root: str | os.PathLike, **kw) -> Iterator[JupyterServer]:
    """Context-manager form of :func:`start_jupyter`."""
    server = start_jupyter(root, **kw)
    try:
        yield server
    finally:
        server.stop()


# -- browser ------------------------------------------------------------------------------------
def browser_marks() -> list:
    """pytest marks for a test module that drives a real browser: skip when Chromium/Playwright are
    missing, and mark it ``browser`` and ``slow``."""
    import pytest

    return [pytest.mark.skipif(not browser_available(), reason="playwright or /usr/bin/chromium missing"),
            pytest.mark.browser, pytest.mark.slow]


def browser_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


@contextlib.contextmanager
def browser_page(viewport: tuple[int, int] = (1280, 900), timeout_ms: int = 30_000) -> Iterator:
    """A Playwright ``Page`` in headless Debian Chromium; console errors are collected in
    ``page.console_errors`` (list of str)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            page.console_errors = []
            page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page.console_errors.append(str(e)))
            yield page
        finally:
            browser.close()


def write_notebook(path: str | os.PathLike, cells: list[str]) -> Path:
    """Write a minimal nbformat-4 notebook of code ``cells`` (python3 kernel)."""
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": src} for i, src in enumerate(cells)]}
    p = Path(path)
    p.write_text(json.dumps(nb, indent=1))
    return p


def accept_dialogs(page) -> int:
    """Click the default button of any open JupyterLab dialog (e.g. "Select Kernel"); returns how many."""
    n = 0
    while page.locator(".jp-Dialog .jp-mod-accept").count():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
        page.wait_for_timeout(300)
        n += 1
    return n


_KERNEL_READY_JS = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""


def open_notebook(page, server: JupyterServer, nb_relpath: str, timeout_ms: int = 60_000) -> None:
    """Open ``nb_relpath`` (relative to the server root) in JupyterLab and wait until its kernel is
    connected and idle (each server has a fresh workspace, so no ``?reset``, which can start a kernel
    twice). The app is exposed as ``window.jupyterapp`` (``--LabApp.expose_app_in_browser``)."""
    page.goto(server.url(f"lab/tree/{nb_relpath}") + f"?token={server.token}")
    page.wait_for_selector(".jp-Notebook", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        accept_dialogs(page)
        if page.evaluate(_KERNEL_READY_JS):
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"the kernel of {nb_relpath} did not become idle; server log:\n{server.log_text()[-3000:]}")


def run_command(page, command: str, args: dict | None = None):
    """Execute a JupyterLab command (``notebook:run-all-cells``, ...) in the page."""
    return page.evaluate("([c, a]) => window.jupyterapp.commands.execute(c, a)", [command, args or {}])


def wait_kernel_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the current notebook's kernel is connected and idle."""
    page.wait_for_timeout(300)
    page.wait_for_function(_KERNEL_READY_JS, timeout=timeout_ms)


def run_all_cells(page, timeout_ms: int = 90_000) -> None:
    """Run every cell of the current notebook and wait until the kernel is idle again."""
    run_command(page, "notebook:run-all-cells")
    page.wait_for_function("""() => { const w = window.jupyterapp.shell.currentWidget;
        return w && w.content && w.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount); }""",
                           timeout=timeout_ms)
    wait_kernel_idle(page, timeout_ms)


def run_code(page, code: str, timeout_ms: int = 60_000) -> str:
    """Append a code cell with ``code`` to the current notebook, run it, and return its output text."""
    page.evaluate("""(code) => { const w = window.jupyterapp.shell.currentWidget;
        const nb = w.content; nb.activeCellIndex = nb.widgets.length - 1; }""", code)
    run_command(page, "notebook:insert-cell-below")
    page.evaluate("""(code) => { const nb = window.jupyterapp.shell.currentWidget.content;
        nb.activeCell.model.sharedModel.setSource(code); }""", code)
    run_command(page, "notebook:run-cell")
    page.wait_for_function("""() => { const nb = window.jupyterapp.shell.currentWidget.content;
        const c = nb.widgets[nb.widgets.length - 1]; return !!c.model.executionCount; }""", timeout=timeout_ms)
    wait_kernel_idle(page, timeout_ms)
    return page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget.content;
        const c = nb.widgets[nb.widgets.length - 1]; return c.node.querySelector('.jp-OutputArea').innerText; }""")


# -- a notebook in the Lab, and what the tests read back from it ----------------------------------
@contextlib.contextmanager
def lab_notebook(root: str | os.PathLike, name: str, cells: list[str], viewport: tuple[int, int] = (1280, 900),
                 on: dict[str, Any] | None = None, **server_kw) -> Iterator[tuple[JupyterServer, Any]]:
    """Write notebook ``name`` (relative to ``root``) of code ``cells``, start JupyterLab on ``root``
    (``server_kw`` as for :func:`start_jupyter`), open the notebook in a headless page of ``viewport``
    (``on``: ``{event: handler}`` for ``page.on``, registered before it opens) and run all its cells;
    yields ``(server, page)``."""
    write_notebook(Path(root) / name, cells)
    with jupyter_server(root, app="lab", **server_kw) as srv, browser_page(viewport) as page:
        for event, handler in (on or {}).items():
            page.on(event, handler)
        open_notebook(page, srv, name)
        run_all_cells(page)
        yield srv, page


def kernel_exec(page, code: str) -> str:
    """Run ``code`` in the current notebook's kernel without adding a cell (a new cell would scroll a widget
    out of view, where the browser does not repaint it); returns what it printed."""
    return page.evaluate("""async (code) => {
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        let out = "";
        const future = kernel.requestExecute({ code });
        future.onIOPub = (msg) => { if (msg.header.msg_type === "stream") out += msg.content.text; };
        await future.done;
        return out; }""", code)


def report_json(text: str, marker: str = "REPORT") -> dict:
    """The JSON a cell printed right after ``marker`` (on the same line) in its output ``text``."""
    return json.loads(text[text.index(marker) + len(marker):].strip().splitlines()[0])


def run_report(page, code: str, marker: str = "REPORT") -> dict:
    """:func:`run_code` a cell that prints ``marker`` + JSON; return that JSON."""
    return report_json(run_code(page, code.strip()), marker)


def data_url_rgb(url: str):
    """The pixels of a ``data:image/png;base64,...`` URL as an ``(H, W, 3)`` int16 array (room for differences)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(np.int16)


def canvas_rgb(page, container: str = ".wsi-viewer", index: int = 0):
    """The first canvas of the ``index``-th element matching ``container`` (a viewer's drawing canvas: slide
    and layers, without the controls drawn over it) as RGB, see :func:`data_url_rgb`."""
    url = page.evaluate("([sel, i]) => document.querySelectorAll(sel)[i].querySelector('canvas')"
                        ".toDataURL('image/png')", [container, index])
    return data_url_rgb(url)


def save_readme_picture(png: bytes, name: str, size: tuple[int, int] = (1100, 1400),
                        full_colour_under: int = 0, max_bytes: int = 0) -> bytes:
    """``png`` (a screenshot) shrunk to fit ``size`` and saved small: as a full-colour PNG when that is under
    ``full_colour_under`` bytes, else with a 256-colour palette (asserted under ``max_bytes`` when given).
    Written to ``docs/<name>`` (the README picture) only when that file is missing or
    ``WSI_LAB_UPDATE_SCREENSHOT`` is set; returns the bytes."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail(size)
    buf = io.BytesIO()
    if full_colour_under:
        img.save(buf, format="PNG", optimize=True)
    if not full_colour_under or buf.tell() > full_colour_under:
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG", optimize=True)
    assert not max_bytes or len(buf.getvalue()) < max_bytes
    shot = REPO / "docs" / name
    shot.parent.mkdir(exist_ok=True)
    if os.environ.get("WSI_LAB_UPDATE_SCREENSHOT") or not shot.exists():
        shot.write_bytes(buf.getvalue())
    return buf.getvalue()
