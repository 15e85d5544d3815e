"""The peer tile server the viewer benchmarks measure against: OpenSlide's ``DeepZoomGenerator`` behind a
threading ``http.server`` (no cache), in a process of its own. Serves ``/tiles/<name>/<level>/<col>_<row>.jpeg``
(254 px tiles, overlap 1, JPEG quality 80) for the slide files ``names`` in ``root``."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tests.jupyter_env import free_port

SCRIPT = textwrap.dedent('''
    import io, re, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import openslide
    from openslide.deepzoom import DeepZoomGenerator
    root, port = sys.argv[1], int(sys.argv[2])
    names = sys.argv[3:]
    gens = {n: DeepZoomGenerator(openslide.OpenSlide(f"{root}/{n}"), 254, 1, limit_bounds=False) for n in names}
    pat = re.compile(r"^/tiles/([^/]+)/(\\d+)/(\\d+)_(\\d+)\\.jpeg$")
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            m = pat.match(self.path)
            try:
                tile = gens[m.group(1)].get_tile(int(m.group(2)), (int(m.group(3)), int(m.group(4))))
                buf = io.BytesIO(); tile.save(buf, "jpeg", quality=80); body = buf.getvalue(); code = 200
            except Exception as exc:
                body, code = str(exc).encode(), 404
            self.send_response(code); self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
''')


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


@contextmanager
def openslide_peer(root: str | os.PathLike, names: Sequence[str]) -> Iterator[tuple[int, subprocess.Popen]]:
    """Run the peer server over ``names`` in ``root``; yields ``(port, process)`` once it listens and
    stops it on exit."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), str(port), *names])
    try:
        wait_port(port)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)
