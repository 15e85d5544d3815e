"""The export's fast record builder (``export_tfrecord._example``) makes exactly the bytes of the generic
``tfrecord.encode_example`` for both schemas, so readers (TensorFlow, the stream) see the same records."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lab.data.export_tfrecord import _example
from wsi_lab.data.tfrecord import FeatureValue, encode_example, parse_example


@pytest.mark.parametrize("label,sid,x,y", [(-1, "s", 0, 0), (0, "", 127, 128), (3, "slide-7" * 30, 40000, 123456789),
                                          (300, "é", -5, 2**40)])
@pytest.mark.parametrize("h,w", [(256, 256), (1, 3)])
def test_example_bytes_match_encode_example(label: int, sid: str, x: int, y: int, h: int, w: int) -> None:
    rng = np.random.default_rng(label + h)
    tile = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    common: dict[str, FeatureValue] = {"label": label, "slide_string": sid.encode(), "x": x, "y": y}
    raw = _example(tile, label, sid, x, y, "raw", 90)
    assert raw == encode_example({"image_raw": tile.tobytes(), "height": h, "width": w, "depth": 3, **common})
    assert parse_example(raw)["image_raw"][0] == tile.tobytes()
    jpeg = bytes(rng.integers(0, 256, 200 * h, dtype=np.uint8))  # any bytes: the builder does not look inside
    built = _example(jpeg, label, sid, x, y, "jpeg", 90, size=(h, w))
    assert built == encode_example({"image/encoded": jpeg, "image/format": b"jpeg", "image/height": h,
                                    "image/width": w, "image/channels": 3, **common})
    assert parse_example(built)["label"] == [label]
