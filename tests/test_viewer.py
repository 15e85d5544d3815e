"""SlideViewer's Python side: the comm protocol gives the same bytes as the HTTP extension (real server),
errors come back as messages, clicks find the TileTable row, layers and view state."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests._bundles import assert_bundle_matches
from tests.jupyter_env import jupyter_server
from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays import category_layer, grid_layer, heatmap_layer, mask_layer
from wsi_lab.ui.viewer import SlideViewer


def _table(step: int = 256) -> pd.DataFrame:
    xs, ys = np.meshgrid(np.arange(0, 2220 - step, step), np.arange(0, 2967 - step, step))
    t = pd.DataFrame({"slide_id": "CMU", "patient_id": "p", "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                      "read_size": step, "tile_size": step, "mpp": 0.5, "tissue_fraction": 1.0})
    t["score"] = np.linspace(0, 1, len(t))
    t["label"] = np.where(t.index % 3 == 0, "tumour", "stroma")
    return t


class Checker:
    """A plain layer that is not a wsi_lab.overlays layer (travels as a raster snapshot)."""

    name, opacity = "checker", 0.8

    def render_region(self, box, out_size):
        x, y, w, h = box
        ow, oh = out_size
        cx = (x + (np.arange(ow) + 0.5) * w / ow) // 500
        cy = (y + (np.arange(oh) + 0.5) * h / oh) // 500
        on = ((cx[None, :] + cy[:, None]) % 2 == 0)
        out = np.zeros((oh, ow, 4), np.uint8)
        out[on] = (0, 0, 255, 255)
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory, cmu_path):
    root = tmp_path_factory.mktemp("root")
    (root / "slides").mkdir()
    shutil.copy(cmu_path, root / "slides" / cmu_path.name)
    with jupyter_server(root, app="server") as srv:
        yield srv, root / "slides" / cmu_path.name


def test_comm_and_http_give_the_same_bytes(served):
    srv, path = served
    table = _table()
    mask = np.zeros((93, 70), bool)  # a tissue mask at 32 level-0 px per mask px
    mask[20:60, 10:50] = True
    layers = [heatmap_layer(table, "score"), category_layer(table, "label"), grid_layer(table), Checker(),
              mask_layer(mask, downsample=32)]
    v = SlideViewer(path, layers=layers, table=table)
    # the kernel-side candidates include the server's id for this slide (root-relative path)
    listing = {s["path"]: s["id"] for s in srv.get_json("wsi-lab/api/slides")}
    cand = {c["path"]: c["id"] for c in v.slide_info["candidates"]}
    assert cand["slides/CMU-1-Small-Region.svs"] == listing["slides/CMU-1-Small-Region.svs"]
    sid = listing["slides/CMU-1-Small-Region.svs"]
    info = srv.get_json(f"wsi-lab/api/slides/{sid}")
    for k in ("width", "height", "tile_size", "overlap", "level_count", "size_bytes"):
        assert info[k] == v.slide_info[k], k
    for level, col, row in [(12, 2, 3), (11, 1, 1), (9, 0, 0), (12, 8, 11)]:
        reply, bufs = v.handle_request({"type": "tile", "id": "r1", "level": level, "col": col, "row": row})
        assert reply == {"type": "tile", "id": "r1", "ok": True}
        status, _, body = srv.get(f"wsi-lab/api/tiles/{sid}/{level}/{col}_{row}.jpeg")
        assert status == 200 and body == bufs[0]
    for entry in v.layers:  # the front end POSTs entry["payload"]; the server answers the same key
        status, _, body = srv.get("wsi-lab/api/layers", method="POST", body=json.dumps(entry["payload"]).encode())
        assert status == 200 and json.loads(body)["key"] == entry["key"]
        for level, col, row in [(12, 2, 3), (10, 1, 1), (9, 0, 0)]:
            reply, bufs = v.handle_request({"type": "overlay", "id": "o", "layer": entry["key"], "level": level,
                                            "col": col, "row": row})
            assert reply["ok"], reply
            status, _, png = srv.get(f"wsi-lab/api/overlays/{sid}/{entry['key']}/{level}/{col}_{row}.png")
            assert status == 200
            a = np.asarray(Image.open(io.BytesIO(png)))
            b = np.asarray(Image.open(io.BytesIO(bufs[0])))
            assert np.array_equal(a, b), entry["name"]
            if (level, col, row) != (12, 2, 3) or entry["name"] != "tissue":
                assert a[..., 3].max() > 0  # something drawn in these tiles
    assert [e["name"] for e in v.layers] == ["score", "label", "tiles", "checker", "tissue"]
    assert v.layers[0]["legend"]["type"] == "continuous" and v.layers[1]["legend"]["type"] == "categorical"
    assert "snapshot" in v.layers[3]["payload"] and "layer" in v.layers[0]["payload"]


@pytest.mark.parametrize("msg,needle", [
    ({"type": "tile", "id": "x", "level": 13, "col": 0, "row": 0}, "level 13"),
    ({"type": "tile", "id": "x", "level": 12, "col": 99, "row": 0}, "outside level 12"),
    ({"type": "tile", "id": "x", "level": "12", "col": 0, "row": 0}, "integer"),
    ({"type": "overlay", "id": "x", "layer": "nope", "level": 12, "col": 0, "row": 0}, "no overlay layer"),
    ({"type": "frobnicate", "id": "x"}, "unknown request"),
])
def test_errors_come_back_as_messages(msg, needle, cmu_path):
    v = SlideViewer(cmu_path)
    reply, bufs = v.handle_request(msg)
    assert reply["ok"] is False and reply["id"] == "x" and needle in reply["error"] and bufs == []


def test_click_selects_the_table_row_and_calls_back(cmu_path):
    table = _table()
    v = SlideViewer(cmu_path, table=table, tile_source="comm")
    got = []
    v.on_tile_click(lambda x, y, row: got.append((x, y, row)))
    v._on_msg(v, {"type": "click", "x": 600, "y": 300}, [])
    x, y, row = got[0]
    assert (x, y) == (600, 300) and (row["x"], row["y"]) == (512, 256)
    sel = v.selected_tile
    assert (sel["x"], sel["y"], sel["width"], sel["height"]) == (512, 256, 256, 256) and sel["row"]["label"] in ("tumour", "stroma")
    json.dumps(sel)  # JSON-able for the front end
    full = v.read_selected()
    assert full.shape == (256, 256, 3)
    with v.slide as s:
        assert np.array_equal(full, s.read_region((512, 256), 0, (256, 256)))
    v._on_msg(v, {"type": "click", "x": 2200, "y": 2960}, [])  # outside every tile
    assert got[-1][2] is None and v.selected_tile["width"] == 0
    v._on_msg(v, {"type": "click", "x": "nan?"}, [])  # malformed: ignored, no exception
    assert len(got) == 2


def test_layers_and_view_state(cmu_path):
    table = _table()
    v = SlideViewer(cmu_path, layers=[heatmap_layer(table, "score", opacity=0.3)])
    assert v.layers[0]["opacity"] == 0.3 and v.layers[0]["visible"] is True
    v.set_layer("score", opacity=0.9, visible=False)
    assert v.layers[0]["opacity"] == 0.9 and v.layers[0]["visible"] is False
    v.add_layer(category_layer(table, "label"))
    v.remove_layer("score")
    assert [e["name"] for e in v.layers] == ["label"]
    with pytest.raises(InvalidParameterError):
        v.set_layer("missing", opacity=1)
    v.go_to(100, 200, 300, 400)
    assert v.viewport == [100.0, 200.0, 300.0, 400.0]
    with pytest.raises(InvalidParameterError):
        v.go_to(0, 0, 0, 10)
    with pytest.raises(InvalidParameterError):
        SlideViewer(cmu_path, tile_source="ftp")
    from wsi_lab.ui.viewer import STATIC

    assert (STATIC / "viewer.js").stat().st_size > 10_000  # the committed bundle ships with the package
    assert "OpenSeadragon" in v._esm or "openseadragon" in v._esm.lower()


def test_multilevel_slide(ndpi_path):
    """NDPI: 7 OpenSlide levels, deep levels read from downsampled slide levels; tiles still real pixels."""
    if not ndpi_path.exists():
        pytest.skip("NDPI missing")
    v = SlideViewer(ndpi_path, tile_source="comm")
    assert v.slide_info["mpp"] is not None and v.slide_info["level_count"] == 14
    reply, bufs = v.handle_request({"type": "tile", "id": "n", "level": 9, "col": 0, "row": 0})
    arr = np.asarray(Image.open(io.BytesIO(bufs[0])))
    assert reply["ok"] and arr.shape[:2] == (255, 248)  # level 9 = 1/16: 248 x 304 px, first row of tiles
    assert v.deepzoom.tile_spec(9, 0, 0).slide_level == 4 and arr.std() > 1


def test_committed_bundle_matches_the_typescript_sources(tmp_path):
    """wsi_lab/static/viewer.js is what `npm run build` makes from widgets/src (skipped without node_modules)."""
    assert_bundle_matches("viewer", tmp_path, css="viewer.css")


def test_close_releases_the_slide_it_opened(cmu_path):
    v = SlideViewer(cmu_path)
    v.close()
    v.close()  # idempotent
    from wsi_lab import open_slide

    with open_slide(cmu_path) as s:
        w = SlideViewer(s)
        w.close()
        assert s.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)  # a caller's slide stays open
