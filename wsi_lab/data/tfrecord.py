"""TFRecord files without TensorFlow: the record framing and the ``tf.train.Example`` message.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

and ``data`` is usually a serialized ``tf.train.Example``. That protobuf is small enough to encode
and decode by hand (field numbers from ``tensorflow/core/example/{example,feature}.proto``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }      # entries: { string key = 1; Feature value = 2; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Files written here are read by ``tf.data.TFRecordDataset`` + ``tf.io.parse_single_example`` (tested).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.io import atomic_path

__all__ = [
    "masked_crc32c",
    "encode_example",
    "frame_record",
    "parse_example",
    "TFRecordWriter",
    "iter_frames",
    "iter_tfrecord",
    "MAX_RECORD_BYTES",
    "read_examples",
    "count_records",
]

FeatureValue = bytes | str | int | float | Sequence[bytes] | Sequence[int] | Sequence[float] | np.ndarray

_MASK_DELTA = 0xA282EAD8


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2**32."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------
# protobuf encoding
# ------------------------------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    if value < 0:  # int64 two's complement: always 10 bytes
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _wrap(field: int, parts: list, size: int) -> tuple[list, int]:
    """``parts`` (``size`` bytes in all) as a length-delimited field: a new head, the parts not copied."""
    head = _varint((field << 3) | 2) + _varint(size)
    return [head, *parts], len(head) + size


def _feature_parts(value: FeatureValue) -> tuple[list, int]:
    """One ``Feature`` as a list of byte strings (large payloads are referenced, not copied) and its size:
    bytes/str -> BytesList, int -> Int64List, float -> FloatList; lists and 1-D arrays keep their kind."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        values: list = [value]
    elif isinstance(value, np.ndarray):
        values = value.ravel().tolist() if value.dtype != object else list(value.ravel())
    elif isinstance(value, (bool, int, float, np.integer, np.floating)):
        values = [value]
    else:
        values = list(value)
    if not values:
        raise InvalidParameterError("an Example feature needs at least one value (got an empty list)")
    first = values[0]
    if isinstance(first, (bytes, bytearray, memoryview, str)):
        parts: list = []
        size = 0
        for v in values:
            b = v.encode() if isinstance(v, str) else v
            n = b.nbytes if isinstance(b, memoryview) else len(b)
            head = b"\x0a" + _varint(n)
            parts += [head, b]
            size += len(head) + n
        return _wrap(1, parts, size)
    if isinstance(first, (bool, int, np.integer)):
        packed = _len_field(1, b"".join(_varint(int(v)) for v in values))
        return _wrap(3, [packed], len(packed))
    if isinstance(first, (float, np.floating)):
        packed = _len_field(1, struct.pack(f"<{len(values)}f", *values))
        return _wrap(2, [packed], len(packed))
    raise InvalidParameterError(f"unsupported Example feature value type {type(first).__name__}")


def _feature(value: FeatureValue) -> bytes:
    """Serialize one ``Feature`` (see :func:`_feature_parts`)."""
    return b"".join(_feature_parts(value)[0])


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialize a ``tf.train.Example`` from ``{name: value}`` (bytes/str, int, float or lists of one kind).
    Keys are written sorted, so the bytes are deterministic. Large byte values are copied once."""
    parts: list = []
    size = 0
    for key in sorted(features):
        fparts, fsize = _wrap(2, *_feature_parts(features[key]))
        kb = _len_field(1, key.encode())
        eparts, esize = _wrap(1, [kb, *fparts], len(kb) + fsize)
        parts += eparts
        size += esize
    return b"".join(_wrap(1, parts, size)[0])


def frame_record(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """One TFRecord frame of ``data`` as its four parts (length, length CRC, data, data CRC), for
    :meth:`TFRecordWriter.write_framed`; computing it on worker threads keeps the writer's thread free."""
    header = struct.pack("<Q", len(data))
    return header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data))


# ------------------------------------------------------------------------------------------------
# protobuf decoding (enough for Example; unknown fields are skipped)
# ------------------------------------------------------------------------------------------------
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DataError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DataError("malformed protobuf varint")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of a protobuf message; length-delimited values are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise DataError("truncated protobuf field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise DataError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes) -> list:
    for kind, _wire, body in _fields(buf):
        values: list = []
        for _f, wire, v in _fields(body):  # type: ignore[arg-type]
            if kind == 1:
                values.append(bytes(v))
            elif kind == 2:
                values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))  # type: ignore[arg-type]
            elif kind == 3:
                if wire == 2:
                    pos = 0
                    while pos < len(v):  # type: ignore[arg-type]
                        n, pos = _read_varint(v, pos)  # type: ignore[arg-type]
                        values.append(_signed64(n))
                else:
                    values.append(_signed64(v))  # type: ignore[arg-type]
        return values
    return []


def parse_example(data: bytes) -> dict[str, list]:
    """Decode a serialized ``tf.train.Example`` into ``{name: [values]}`` (bytes, int or float lists)."""
    out: dict[str, list] = {}
    try:
        for f, _w, features in _fields(data):
            if f != 1:
                continue
            for f2, _w2, entry in _fields(features):  # type: ignore[arg-type]
                if f2 != 1:
                    continue
                key, value = "", b""
                for f3, _w3, v in _fields(entry):  # type: ignore[arg-type]
                    if f3 == 1:
                        key = bytes(v).decode()
                    elif f3 == 2:
                        value = v  # type: ignore[assignment]
                out[key] = _parse_feature(value)
    except (UnicodeDecodeError, struct.error) as exc:
        raise DataError(f"malformed tf.train.Example: {exc}") from exc
    return out


# ------------------------------------------------------------------------------------------------
# record framing
# ------------------------------------------------------------------------------------------------
class TFRecordWriter:
    """Write records to a TFRecord file atomically: the file appears at ``path`` only when the
    writer is closed without error (use it as a context manager)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "wb")
        self._sha = hashlib.sha256()
        self.count = 0
        self.bytes_written = 0

    def write(self, record: bytes) -> None:
        """Append one record (usually :func:`encode_example` output)."""
        self.write_framed(frame_record(record))

    def write_framed(self, frame: tuple[bytes, bytes, bytes, bytes]) -> None:
        """Append one record already framed by :func:`frame_record`."""
        for part in frame:
            self._fh.write(part)
            self._sha.update(part)
        self.count += 1
        self.bytes_written += len(frame[2]) + 16

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far (the whole file once closed)."""
        return self._sha.hexdigest()

    def write_example(self, features: Mapping[str, FeatureValue]) -> None:
        self.write(encode_example(features))

    def close(self, error: BaseException | None = None) -> None:
        """Finish the file (rename into place), or discard it when ``error`` is given."""
        if self._fh.closed:
            return
        self._fh.close()
        if error is None:
            self._ctx.__exit__(None, None, None)
        else:
            try:
                self._ctx.__exit__(type(error), error, error.__traceback__)
            except BaseException as exc:  # atomic_path re-raises the error it was handed
                if exc is not error:
                    raise

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


#: a record longer than this is taken for a corrupt length where the stream's size is unknown (a 4096² RGB
#: tile is 48 MiB); a file's records are bounded by the bytes left in it instead
MAX_RECORD_BYTES = 256 << 20


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of the stream (a pipe's ``read`` may return short)."""
    data = fh.read(n)
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def iter_frames(fh: BinaryIO, name: str, verify: bool = True, size: int | None = None,
                hint: str = "the stream is {}") -> Iterator[bytes]:
    """Yield the data of each framed record read from ``fh`` (a file, a FIFO, a socket) until it ends,
    checking both CRCs when ``verify``. ``size``: the bytes left in ``fh`` when known (a file), so a corrupt
    length never allocates past them; otherwise a length over :data:`MAX_RECORD_BYTES` is corrupt. A
    truncated or corrupt record raises :class:`DataError` naming ``name``, the record number and ``hint``
    (formatted with "incomplete", "corrupt" or "incomplete or corrupt")."""
    index = 0
    left = 0 if size is None else size
    while True:
        header = _read_exact(fh, 12)
        if not header:
            return
        if len(header) < 12:
            raise DataError(f"{name}: truncated record header at record {index}; {hint.format('incomplete')}")
        length_bytes = header[:8]
        (length,) = struct.unpack("<Q", length_bytes)
        if verify and masked_crc32c(length_bytes) != struct.unpack("<I", header[8:])[0]:
            raise DataError(f"{name}: length CRC mismatch at record {index}; {hint.format('corrupt')}")
        if size is None:
            if length > MAX_RECORD_BYTES:
                raise DataError(f"{name}: record {index} claims {length} bytes; {hint.format('corrupt')}")
        else:
            left -= 12
            if length + 4 > left:  # never allocate what a corrupt length claims
                raise DataError(f"{name}: truncated record {index} (its header claims {length} bytes); "
                                f"{hint.format('incomplete or corrupt')}")
            left -= length + 4
        data = _read_exact(fh, length)
        footer = _read_exact(fh, 4)
        if len(data) < length or len(footer) < 4:
            raise DataError(f"{name}: truncated record {index}; {hint.format('incomplete')}")
        if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise DataError(f"{name}: data CRC mismatch at record {index}; {hint.format('corrupt')}")
        yield data
        index += 1


def iter_tfrecord(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord file, checking both CRCs of each one when ``verify``.
    A truncated or corrupt file raises :class:`DataError` naming the file and the record number."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: TFRecord file not found")
    with open(p, "rb") as fh:
        yield from iter_frames(fh, str(p), verify, size=os.fstat(fh.fileno()).st_size,
                               hint="the file is {}, re-export it")


def read_examples(path: str | os.PathLike) -> Iterator[dict[str, list]]:
    """Yield every record of a TFRecord file decoded with :func:`parse_example`."""
    for record in iter_tfrecord(path):
        try:
            yield parse_example(record)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc


def count_records(path: str | os.PathLike, verify: bool = False) -> int:
    """Number of records in a TFRecord file (CRCs checked only when ``verify``)."""
    return sum(1 for _ in iter_tfrecord(path, verify=verify))
