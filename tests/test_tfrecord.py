"""TFRecord framing and the hand-written tf.train.Example codec (wsi_lab.data.tfrecord)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from wsi_lab.data.tfrecord import (
    TFRecordWriter,
    count_records,
    encode_example,
    frame_record,
    iter_frames,
    iter_tfrecord,
    masked_crc32c,
    parse_example,
    read_examples,
)
from wsi_lab.errors import DataError, InvalidParameterError


def test_masked_crc32c_known_values():
    # CRC32C("123456789") = 0xE3069283 (RFC 3720 check value); masking per TFRecord spec
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"") != masked_crc32c(b"\0")


def test_example_roundtrip_all_kinds():
    feats = {"image_raw": bytes(range(256)) * 3, "label": 3, "neg": -7, "big": 2**40, "ints": [1, 0, -1, 300],
             "f": 0.5, "fs": np.array([1.5, -2.25], np.float32), "name": "TCGA-AB-0001", "multi": [b"a", b"", b"xyz"]}
    back = parse_example(encode_example(feats))
    assert back["image_raw"] == [feats["image_raw"]]
    assert back["label"] == [3] and back["neg"] == [-7] and back["big"] == [2**40]
    assert back["ints"] == [1, 0, -1, 300]
    assert back["f"] == [0.5] and back["fs"] == [1.5, -2.25]
    assert back["name"] == [b"TCGA-AB-0001"]
    assert back["multi"] == [b"a", b"", b"xyz"]
    # deterministic bytes (sorted keys)
    assert encode_example(dict(reversed(list(feats.items())))) == encode_example(feats)


def test_example_rejects_empty_and_odd_values():
    with pytest.raises(InvalidParameterError):
        encode_example({"x": []})
    with pytest.raises(InvalidParameterError):
        encode_example({"x": [object()]})


def test_writer_reader_roundtrip_and_atomicity(tmp_path):
    path = tmp_path / "a.tfrecord"
    records = [encode_example({"i": i, "b": b"x" * i}) for i in range(20)]
    with TFRecordWriter(path) as w:
        for r in records[:5]:
            w.write(r)
        assert not path.exists()  # only visible once closed
        for r in records[5:]:
            w.write(r)
    assert list(iter_tfrecord(path)) == records
    assert count_records(path) == 20
    assert [e["i"][0] for e in read_examples(path)] == list(range(20))
    # framing: first record length and length-CRC at the expected places
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n == len(records[0]) and struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])


def test_writer_error_leaves_previous_file(tmp_path):
    path = tmp_path / "keep.tfrecord"
    with TFRecordWriter(path) as w:
        w.write(b"old")
    with pytest.raises(RuntimeError):
        with TFRecordWriter(path) as w:
            w.write(b"new")
            raise RuntimeError("boom")
    assert list(iter_tfrecord(path)) == [b"old"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tfrecord"]  # no temp file left


@pytest.mark.parametrize("damage", ["flip_data", "flip_length", "truncate", "trailing"])
def test_corrupt_file_raises_data_error(tmp_path, damage):
    path = tmp_path / "c.tfrecord"
    with TFRecordWriter(path) as w:
        for i in range(3):
            w.write(encode_example({"i": i, "pad": b"p" * 50}))
    raw = bytearray(path.read_bytes())
    if damage == "flip_data":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "flip_length":
        raw[0] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-10]
    else:
        raw += b"\x01\x02\x03"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="c.tfrecord"):
        list(iter_tfrecord(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(iter_tfrecord(tmp_path / "nope.tfrecord"))


def test_corrupt_length_without_verification_is_a_data_error(tmp_path):
    """Regression: with verify=False a garbage length (2**62) was read as-is (MemoryError)."""
    path = tmp_path / "len.tfrecord"
    with TFRecordWriter(path) as w:
        w.write(encode_example({"i": 1}))
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="truncated record 0"):
        count_records(path, verify=False)


class _Trickle:
    """A stream whose ``read`` returns at most 5 bytes, as a pipe may."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + min(n, 5)]
        self.pos += len(chunk)
        return chunk


def test_the_frame_reader_of_files_and_streams_takes_short_reads_and_names_a_cut_record():
    records = [encode_example({"i": i, "pad": b"q" * (40 * i)}) for i in range(4)]
    body = b"".join(b"".join(frame_record(r)) for r in records)
    assert list(iter_frames(_Trickle(body), "pipe")) == records  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"pipe: truncated record 3; the stream is incomplete"):
        list(iter_frames(_Trickle(body[:-2]), "pipe"))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"pipe: record 0 claims 4611686018427387904 bytes"):
        list(iter_frames(_Trickle(struct.pack("<Q", 2**62) + body[8:]), "pipe", verify=False))  # type: ignore[arg-type]
