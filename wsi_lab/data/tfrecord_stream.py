"""TFRecord records from a stream or a request body (no TensorFlow), and the tiles of the export schemas.

SageMaker Pipe mode streams a channel's S3 objects, concatenated, through a FIFO; Batch Transform with
``SplitType="TFRecord"`` sends one framed record per request (several, concatenated, with
``BatchStrategy="MultiRecord"``). Both are framed as in :mod:`wsi_lab.data.tfrecord`; the records are the
``raw`` or ``jpeg`` ``tf.train.Example`` schemas of :mod:`wsi_lab.data.export_tfrecord`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from wsi_lab.data.tfrecord import MAX_RECORD_BYTES, iter_frames, parse_example
from wsi_lab.errors import DataError

__all__ = ["TileRecord", "iter_stream_records", "split_records", "decode_tile_record", "MAX_RECORD_BYTES"]


@dataclass
class TileRecord:
    """One tile of an export record: ``image`` (H, W, 3) uint8, ``label`` (-1 unlabelled), where it is from."""

    image: np.ndarray
    label: int
    slide_id: str
    x: int
    y: int


def iter_stream_records(fh: BinaryIO, name: str = "stream", verify: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord byte stream (a FIFO, a socket, a file object) until it ends,
    checking both CRCs when ``verify``; a truncated or corrupt stream raises :class:`DataError` naming
    ``name`` and the record number."""
    return iter_frames(fh, name, verify)


def split_records(body: bytes, name: str = "body") -> list[bytes]:
    """The records of a body holding one or more framed TFRecord records (:class:`DataError` if malformed)."""
    records = list(iter_stream_records(io.BytesIO(body), name))
    if not records:
        raise DataError(f"{name}: no TFRecord record")
    return records


def _one(ex: dict[str, list], key: str, default=None):
    v = ex.get(key)
    if not v:
        if default is not None:
            return default
        raise DataError(f"the record has no {key!r} feature")
    return v[0]


def decode_tile_record(data: bytes) -> TileRecord:
    """The tile of one serialized ``tf.train.Example`` of the ``raw`` (``image_raw``, ``height``, ``width``,
    ``depth``) or ``jpeg`` (``image/encoded``) schema; :class:`DataError` for anything else."""
    ex = parse_example(data)
    if "image_raw" in ex:
        h, w, d = int(_one(ex, "height")), int(_one(ex, "width")), int(_one(ex, "depth", 3))
        raw = _one(ex, "image_raw")
        if d != 3 or h <= 0 or w <= 0 or len(raw) != h * w * 3:
            raise DataError(f"image_raw holds {len(raw)} bytes, not {h}×{w}×{d} RGB (depth 3)")
        image = np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
    elif "image/encoded" in ex:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(_one(ex, "image/encoded"))) as im:
                image = np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"image/encoded is not a readable image ({exc})") from exc
    else:
        raise DataError(f"not a WSI Lab tile record (features {sorted(ex)}; expected image_raw or image/encoded)")
    slide = _one(ex, "slide_string", b"")
    return TileRecord(image, int(_one(ex, "label", -1)), slide.decode(errors="replace") if isinstance(slide, bytes)
                      else str(slide), int(_one(ex, "x", -1)), int(_one(ex, "y", -1)))
