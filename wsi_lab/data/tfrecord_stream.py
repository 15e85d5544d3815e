"""TFRecord records from a stream or a request body (no TensorFlow), and the tiles of the export schemas.

SageMaker Pipe mode streams a channel's S3 objects, concatenated, through a FIFO; Batch Transform with
``SplitType="TFRecord"`` sends one framed record per request (several, concatenated, with
``BatchStrategy="MultiRecord"``). Both are framed as in :mod:`wsi_lab.data.tfrecord`; the records are the
``raw`` or ``jpeg`` ``tf.train.Example`` schemas of :mod:`wsi_lab.data.export_tfrecord`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from wsi_lab.data.tfrecord import masked_crc32c, parse_example
from wsi_lab.errors import DataError

__all__ = ["TileRecord", "iter_stream_records", "split_records", "decode_tile_record", "MAX_RECORD_BYTES"]

#: a record longer than this is taken for a corrupt length (a 4096² RGB tile is 48 MiB)
MAX_RECORD_BYTES = 256 << 20


@dataclass
class TileRecord:
    """One tile of an export record: ``image`` (H, W, 3) uint8, ``label`` (-1 unlabelled), where it is from."""

    image: np.ndarray
    label: int
    slide_id: str
    x: int
    y: int


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the stream (a pipe's ``read`` may return short)."""
    parts, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def iter_stream_records(fh: BinaryIO, name: str = "stream", verify: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord byte stream (a FIFO, a socket, a file object) until it ends,
    checking both CRCs when ``verify``; a truncated or corrupt stream raises :class:`DataError` naming
    ``name`` and the record number."""
    index = 0
    while True:
        header = _read_exact(fh, 12)
        if not header:
            return
        if len(header) < 12:
            raise DataError(f"{name}: the stream ends inside the header of record {index}")
        (length,) = struct.unpack("<Q", header[:8])
        if verify and masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
            raise DataError(f"{name}: length CRC mismatch at record {index}; not a TFRecord stream, or corrupt")
        if length > MAX_RECORD_BYTES:
            raise DataError(f"{name}: record {index} claims {length} bytes; corrupt")
        data = _read_exact(fh, length)
        footer = _read_exact(fh, 4)
        if len(data) < length or len(footer) < 4:
            raise DataError(f"{name}: the stream ends inside record {index}")
        if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise DataError(f"{name}: data CRC mismatch at record {index}; corrupt")
        yield data
        index += 1


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
