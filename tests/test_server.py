"""The wsi_lab.server Jupyter extension on a REAL jupyter server: listing, tiles, overlays, auth, paths."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.jupyter_env import jupyter_server
from wsi_lab import open_slide
from wsi_lab.errors import PathSecurityError, SlideNotFoundError
from wsi_lab.server.paths import resolve_slide_path
from wsi_lab.viewing import DeepZoom, relative_candidates, slide_key

pytestmark = pytest.mark.slow
REL = "cases/CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def root(tmp_path_factory, cmu_path) -> Path:
    root = tmp_path_factory.mktemp("root")
    (root / "cases").mkdir()
    shutil.copy(cmu_path, root / REL)
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(cmu_path, outside / "secret.svs")
    (root / "escape.svs").symlink_to(outside / "secret.svs")        # symlink leading outside the root
    (root / "cases" / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "cases" / "inside-link.svs").symlink_to(root / REL)     # symlink staying inside: fine
    (root / ".hidden.svs").write_bytes((root / REL).read_bytes()[:100])
    return root


@pytest.fixture(scope="module")
def server(root):
    with jupyter_server(root, app="server", base_url="/user/x/") as srv:
        yield srv


def _table(x, y, size, value):
    return pd.DataFrame({"slide_id": ["CMU-1-Small-Region"], "patient_id": ["p"], "x": [x], "y": [y], "level": [0],
                         "read_size": [size], "tile_size": [size], "mpp": [0.5], "tissue_fraction": [1.0],
                         "score": [value]})


def test_listing(server):
    slides = server.get_json("wsi-lab/api/slides")
    by_path = {s["path"]: s for s in slides}
    assert set(by_path) == {REL, "cases/inside-link.svs"}  # no escaping symlink, no hidden file
    cmu = by_path[REL]
    assert cmu["id"] == slide_key(REL) and cmu["name"] == "CMU-1-Small-Region.svs"
    assert (cmu["width"], cmu["height"]) == (2220, 2967) and cmu["mpp"] == pytest.approx([0.499, 0.499])
    assert str(server.root) not in json.dumps(slides)  # never leaks absolute paths


@pytest.mark.parametrize("path", ["wsi-lab/api/slides", f"wsi-lab/api/slides/{slide_key(REL)}",
                                  f"wsi-lab/api/tiles/{slide_key(REL)}/12/0_0.jpeg",
                                  f"wsi-lab/api/slide?path={REL}"])
def test_requires_token(server, path):
    assert server.get(path, token=None)[0] == 403
    assert server.get(path, token="wrong-token")[0] == 403
    status, _, _ = server.get("wsi-lab/api/layers", token=None, method="POST", body=b"{}")
    assert status == 403


def test_tiles_match_python_deepzoom(server, root):
    key = slide_key(REL)
    info = server.get_json(f"wsi-lab/api/slides/{key}")
    assert (info["width"], info["height"], info["tile_size"], info["overlap"]) == (2220, 2967, 254, 1)
    status, headers, dzi = server.get(f"wsi-lab/api/slides/{key}.dzi")
    assert status == 200 and b'TileSize="254"' in dzi and b'Width="2220"' in dzi
    with open_slide(root / REL) as slide:
        dz = DeepZoom(slide, 254, 1, 80)
        for level, col, row in [(12, 4, 5), (12, 8, 11), (10, 1, 1), (0, 0, 0)]:
            status, headers, body = server.get(f"wsi-lab/api/tiles/{key}/{level}/{col}_{row}.jpeg")
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            assert body == dz.get_tile_bytes(level, col, row)
    arr = np.asarray(Image.open(io.BytesIO(server.get(f"wsi-lab/api/tiles/{key}/12/4_5.jpeg")[2])))
    assert arr.shape == (256, 256, 3) and arr.std() > 10


@pytest.mark.parametrize("path,code", [
    ("wsi-lab/api/slides/0123456789abcdef", 404),
    ("wsi-lab/api/tiles/0123456789abcdef/12/0_0.jpeg", 404),
    (f"wsi-lab/api/tiles/{slide_key(REL)}/13/0_0.jpeg", 400),
    (f"wsi-lab/api/tiles/{slide_key(REL)}/12/9_0.jpeg", 400),
    (f"wsi-lab/api/tiles/{slide_key(REL)}/12/0_12.jpeg", 400),
    (f"wsi-lab/api/tiles/{slide_key(REL)}/99999999999999999999/0_0.jpeg", 400),
    (f"wsi-lab/api/tiles/{slide_key(REL)}/-1/0_0.jpeg", 404),
    (f"wsi-lab/api/tiles/{slide_key('escape.svs')}/12/0_0.jpeg", 404),
])
def test_bad_addresses(server, path, code):
    status, _, body = server.get(path)
    assert status == code, body
    if code != 404 or "tiles/0123" in path:
        assert json.loads(body)["message"]


@pytest.mark.parametrize("rel,code", [
    ("../outside/secret.svs", 403), ("cases/../../x.svs", 403), ("/etc/passwd", 403), ("//etc/passwd", 403),
    ("escape.svs", 403), ("cases/linkdir/secret.svs", 403), ("cases\\..\\..\\x.svs", 403),
    ("cases/missing.svs", 404), (".hidden.svs", 404), ("", 403), (REL, 200), ("cases/inside-link.svs", 200),
])
def test_path_traversal(server, rel, code):
    status, _, body = server.get("wsi-lab/api/slide?path=" + urllib.parse.quote(rel))
    assert status == code, body
    if code == 200:
        assert json.loads(body)["width"] == 2220


def test_raw_dotdot_in_url_does_not_escape(server):
    for raw in ("wsi-lab/api/slides/../../../etc/passwd", "wsi-lab/api/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd"):
        status, _, body = server.get(raw)
        assert status in (403, 404) and b"root:" not in body


def test_overlay_layers(server, root):
    from wsi_lab.overlays import heatmap_layer

    layer = heatmap_layer(_table(1024, 1536, 512, 0.8), "score", vmin=0, vmax=1)
    status, _, body = server.get("wsi-lab/api/layers", method="POST", body=json.dumps({"layer": json.loads(layer.to_json())}).encode())
    assert status == 200, body
    lkey = json.loads(body)["key"]
    key = slide_key(REL)
    with open_slide(root / REL) as slide:
        dz = DeepZoom(slide, 254, 1, 80)
        status, headers, png = server.get(f"wsi-lab/api/overlays/{key}/{lkey}/12/4_6.png")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert png == dz.get_overlay_bytes(layer, 12, 4, 6, apply_opacity=False)
        rgba = np.asarray(Image.open(io.BytesIO(png)))
        assert rgba.shape == (256, 256, 4) and rgba[..., 3].max() == 255  # opacity is left to the viewer
        empty = np.asarray(Image.open(io.BytesIO(server.get(f"wsi-lab/api/overlays/{key}/{lkey}/12/0_0.png")[2])))
        assert empty[..., 3].max() == 0
    assert server.get(f"wsi-lab/api/overlays/{key}/{'0' * 24}/12/4_6.png")[0] == 404
    assert server.get(f"wsi-lab/api/overlays/{key}/{lkey}/14/0_0.png")[0] == 400
    assert server.get("wsi-lab/api/layers", method="POST", body=b"not json")[0] == 400
    assert server.get("wsi-lab/api/layers", method="POST", body=b'{"layer": {"class": "Nope"}}')[0] == 400
    assert server.get("wsi-lab/api/layers", method="POST", body=b'{"snapshot": {"png_b64": "!!"}}')[0] == 400
    assert "Traceback" not in server.log_text()


def test_path_helpers(root):
    assert resolve_slide_path(root, REL) == (root / REL).resolve()
    with pytest.raises(PathSecurityError):
        resolve_slide_path(root, "escape.svs")
    with pytest.raises(SlideNotFoundError):
        resolve_slide_path(root, "nope.svs")
    assert relative_candidates("/a/b/c.svs")[:2] == ["c.svs", "b/c.svs"]


def test_extension_enabled_by_install():
    """`pip install -e .` put jupyter-config/.../wsi_lab.json into the environment: the extension is enabled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
    out = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"], capture_output=True,
                         text=True, env=env, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # drop colour codes
    assert re.search(r"wsi_lab\.server\s+enabled", text), text
    assert re.search(r"wsi_lab\.server\s+OK", text), text  # and it imports/validates


def test_error_messages_do_not_leak_the_server_root(server):
    for path in ("wsi-lab/api/slide?path=cases/missing.svs", f"wsi-lab/api/tiles/{slide_key(REL)}/99/0_0.jpeg"):
        status, _, body = server.get(path)
        assert status in (400, 404), (path, status)
        assert str(server.root) not in body.decode("utf-8", "replace")


def test_bad_client_input_is_4xx_not_500(server):
    """Regression: an over-long path (OSError ENAMETOOLONG), a snapshot with a non-numeric opacity and a
    mask layer claiming a huge shape (MemoryError) each answered 500."""
    import base64

    from wsi_lab.overlays import MaskLayer

    status, _, body = server.get("wsi-lab/api/slide?path=" + "a" * 5000 + ".svs")
    assert status == 404, body
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    for snap in ({"png_b64": png, "downsample": 4, "opacity": "x"}, {"png_b64": png, "downsample": 4, "legend": 5}):
        status, _, body = server.get("wsi-lab/api/layers", method="POST", body=json.dumps({"snapshot": snap}).encode())
        assert status == 400, body
    good = json.loads(MaskLayer(np.ones((4, 4), bool), 8).to_json())
    for shape in ([10**6, 10**6], [-1, 4], "ab"):
        status, _, body = server.get("wsi-lab/api/layers", method="POST",
                                     body=json.dumps({"layer": {**good, "shape": shape}}).encode())
        assert status == 400, (shape, body)
    status, _, body = server.get("wsi-lab/api/layers", method="POST", body=json.dumps({"layer": good}).encode())
    assert status == 200, body
    assert "Traceback" not in server.log_text()
