"""The model endpoint over TFRecord records (Batch Transform with SplitType TFRecord): real HTTP requests to a
real server on 127.0.0.1 carrying one framed export record (SingleRecord) or several concatenated (MultiRecord)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_lab.data.export_tfrecord import _example  # noqa: E402 - the export's own record builder
from wsi_lab.data.tfrecord import frame_record  # noqa: E402
from wsi_lab.infer.serve import TFRECORD_TYPE, ModelServer  # noqa: E402
from wsi_lab.models import TileClassifier, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model = TileClassifier("small_cnn", classes=["a", "b"], input_size=32).eval()
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve-tfr") / "m.pt", model)
    with ModelServer(ckpt, max_body=1 << 20) as srv:
        yield srv, model


def _post(srv, body: bytes, ctype: str = TFRECORD_TYPE):
    req = urllib.request.Request(srv.url + "/invocations", data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _records(tiles: np.ndarray, variant: str) -> bytes:
    return b"".join(b"".join(frame_record(_example(t, i % 2, f"s{i}", 64 * i, 128, variant, 95)))
                    for i, t in enumerate(tiles))


def test_single_and_multi_record_requests_answer_each_record_with_its_key(server):
    server, reference = server
    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = torch.softmax(reference(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255), 1).numpy()
    status, doc = _post(server, _records(tiles[:1], "raw"))  # SingleRecord
    assert status == 200 and np.allclose(doc["predictions"], ref[:1], atol=1e-5)
    assert doc["records"] == [{"slide_id": "s0", "x": 0, "y": 128, "label": 0}]
    status, doc = _post(server, _records(tiles, "raw"))  # MultiRecord: records concatenated
    assert status == 200 and np.allclose(doc["predictions"], ref, atol=1e-5)
    assert [(r["slide_id"], r["x"]) for r in doc["records"]] == [("s0", 0), ("s1", 64), ("s2", 128)]
    status, doc = _post(server, _records(tiles, "jpeg"))  # the JPEG schema (lossy: close, not equal)
    assert status == 200 and len(doc["predictions"]) == 3 and np.abs(np.array(doc["predictions"]) - ref).max() < 0.2


@pytest.mark.parametrize("body, words", [
    (b"garbage that is no record", "not application/x-tfrecord records"),
    (b"".join(frame_record(b"\x0a\x00")), "not a WSI Lab tile record"),  # a framed Example with no image
])
def test_malformed_records_get_400_and_the_server_keeps_serving(server, body, words):
    server = server[0]
    status, doc = _post(server, body)
    assert status == 400 and words in doc["error"]
    good = _records(np.zeros((1, 32, 32, 3), np.uint8), "raw")
    assert _post(server, good[:-3])[0] == 400  # a truncated record
    assert _post(server, good)[0] == 200


def test_a_multi_record_body_over_the_instance_cap_is_answered_in_chunks(server):
    """MultiRecord fills MaxPayloadInMB: more records than one model batch (256) still get one answer each."""
    server = server[0]
    body = _records(np.zeros((300, 32, 32, 3), np.uint8), "raw")
    status, doc = _post(server, body)
    assert status == 200 and len(doc["predictions"]) == len(doc["records"]) == 300
    assert doc["records"][299]["slide_id"] == "s299"
