"""Small file helpers shared by the whole package: atomic writes and image saving."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from wsi_lab.errors import InvalidParameterError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on
    POSIX), on error it is removed, so readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """PNG or JPEG bytes of an (H, W), (H, W, 3) or (H, W, 4) uint8 array. PNG uses fast compression
    (overlays and masks are mostly flat); JPEG drops an alpha channel."""
    import io

    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    if fmt.lower() in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    elif fmt.lower() == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise InvalidParameterError(f"image format {fmt!r}: use 'png' or 'jpeg'")
    return buf.getvalue()


def save_image(array: np.ndarray, path: str | os.PathLike, quality: int = 90) -> None:
    """Save an (H, W, 3|4) uint8 array as PNG/JPEG/TIFF (chosen by extension), atomically."""
    from PIL import Image

    target = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(target.suffix.lower())
    if fmt is None:
        raise InvalidParameterError(f"{target}: unsupported image extension; use .png, .jpg or .tif")
    img = Image.fromarray(np.asarray(array))
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    with atomic_path(target) as tmp:
        img.save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
