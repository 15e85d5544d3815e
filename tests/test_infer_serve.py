"""The model endpoint: a real HTTP server on 127.0.0.1 and real clients (urllib), SageMaker's contract."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from wsi_lab.infer.serve import ModelServer  # noqa: E402
from wsi_lab.models import TileClassifier, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model = TileClassifier("small_cnn", classes=["a", "b", "c"], input_size=32).eval()
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve") / "m.pt", model)
    with ModelServer(ckpt, max_body=200_000) as srv:
        srv.reference = model
        yield srv


def _post(srv, body: bytes, ctype: str):
    req = urllib.request.Request(srv.url + "/invocations", data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _tiles(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_ping_and_loopback(server):
    assert server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(server.url + "/ping", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["classes"] == ["a", "b", "c"]


def test_png_jpeg_and_json_batches_match_the_model(server):
    tiles = _tiles(3)
    with torch.no_grad():
        ref = torch.softmax(server.reference(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255), 1).numpy()
    status, out = _post(server, _png(tiles[0]), "image/png")
    assert status == 200 and np.allclose(out["predictions"][0], ref[0], atol=1e-5)
    status, out = _post(server, _png(tiles[1], "JPEG"), "image/jpeg")
    assert status == 200 and len(out["predictions"][0]) == 3 and abs(sum(out["predictions"][0]) - 1) < 1e-5
    status, out = _post(server, json.dumps({"instances": tiles.tolist()}).encode(), "application/json")
    assert status == 200 and np.allclose(out["predictions"], ref, atol=1e-5)


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"\x89PNG not really", "image/png", 400, "readable"),
    (b"{", "application/json", 400, "JSON"),
    (b'{"inputs": []}', "application/json", 400, "instances"),
    (json.dumps({"instances": [[[1, 2]]]}).encode(), "application/json", 400, "H×W×3"),
    (json.dumps({"instances": _tiles(1, 40).tolist()}).encode(), "application/json", 400, "32×32"),
    (json.dumps({"instances": (_tiles(1).astype(int) + 300).tolist()}).encode(), "application/json", 400, "0..255"),
    (b"x", "text/plain", 415, "Content-Type"),
    (b"x" * 300_000, "application/json", 413, "limit"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, body, ctype, status, words):
    code, out = _post(server, body, ctype)
    assert code == status and words in out["error"]
    ok, _ = _post(server, _png(_tiles(1)[0]), "image/png")
    assert ok == 200


def test_resize_mode_accepts_other_tile_sizes(server):
    server.resize = True
    try:
        code, out = _post(server, _png(_tiles(1, 48)[0]), "image/png")
        assert code == 200 and len(out["predictions"][0]) == 3
    finally:
        server.resize = False


def test_concurrent_clients_get_no_errors(server):
    body = _png(_tiles(1)[0])
    codes: list[int] = []

    def client() -> None:
        for _ in range(15):
            codes.append(_post(server, body, "image/png")[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [200] * 120
