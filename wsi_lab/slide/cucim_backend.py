"""Reader backend built on cuCIM (NVIDIA's C++ TIFF reader; CPU reads everywhere, GPU decode with CUDA).

cuCIM reads Aperio SVS, Philips TIFF and generic tiled TIFF whose pyramid levels are top-level IFDs.
It trusts tile offsets blindly, so before handing it a file we check with tifffile that every tile of
every level lies inside the file: a truncated slide then fails with a typed error instead of a crash.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsi_lab.errors import SlideOpenError, SlideReadError, UnsupportedFormatError
from wsi_lab.slide.backend import ReaderMetadata
from wsi_lab.slide.metadata import plausible_mpp, to_float
from wsi_lab.slide.pixels import is_tiff, to_rgb

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    """True when cuCIM can decode on a CUDA device (cupy importable and a device present)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CUDA runtime or device fails in many ways: no GPU
        return False


def tiff_tiles_inside_file(path: Path) -> bool:
    """True when every tile/strip of every page of the TIFF lies inside the file."""
    import tifffile

    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(str(path)) as tf:
            for page in tf.pages:
                offs, counts = page.dataoffsets, page.databytecounts
                if offs and max(o + c for o, c in zip(offs, counts)) > size:
                    return False
    except Exception:  # noqa: BLE001 - an unreadable TIFF is not one cuCIM reads
        return False
    return True


def _flatten(md: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(md, dict):
        for k, v in md.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(md)
    return out


class CuCIMReader:
    backend_name = "cucim"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from cucim.clara import CuImage

        self.path = path
        self.device = device
        try:
            self._img = CuImage(str(path))
            res = self._img.resolutions
            md = self._img.metadata
            md = json.loads(md) if isinstance(md, str) else dict(md)
            assoc = tuple(sorted(self._img.associated_images))
        except Exception as exc:
            raise SlideOpenError(f"{path}: cuCIM could not open it ({type(exc).__name__}: {exc})") from exc
        aperio = md.get("aperio") or {}
        tiff = md.get("tiff") or {}
        mpp = None
        if aperio.get("MPP"):
            mpp = plausible_mpp(aperio.get("MPP"), aperio.get("MPP"), str(path))
        elif str(tiff.get("resolution_unit", "")).lower() in ("centimeter", "3", "inch", "2"):
            # µm per resolution unit: 1 cm = 1e4 µm, 1 inch = 25400 µm (a 72-dpi default is then rejected)
            per_unit = 1e4 if str(tiff.get("resolution_unit")).lower() in ("centimeter", "3") else 25400.0
            xr, yr = to_float(tiff.get("x_resolution")), to_float(tiff.get("y_resolution"))
            if xr and yr:
                mpp = plausible_mpp(per_unit / xr, per_unit / yr, str(path))
        vendor = "aperio" if aperio else ("philips" if "philips" in md else "generic-tiff")
        props = _flatten({k: v for k, v in md.items() if k != "cucim"})
        self.metadata = ReaderMetadata(
            level_dimensions=tuple((int(w), int(h)) for w, h in res["level_dimensions"]),
            level_downsamples=tuple(float(d) for d in res["level_downsamples"]),
            mpp=mpp,
            magnification=to_float(aperio.get("AppMag")),
            vendor=vendor,
            properties=props,
            associated_names=assoc,
        )

    def read_level(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        ds = self.metadata.level_downsamples[level]
        try:
            region = self._img.read_region((int(round(x * ds)), int(round(y * ds))), (width, height),
                                           level=level, device=self.device)
            if self.device != "cpu":
                import cupy

                arr = cupy.asnumpy(cupy.asarray(region))
            else:
                arr = np.asarray(region)
        except Exception as exc:
            if "not supported" in str(exc) or "not configured" in str(exc):  # a codec/layout cuCIM lacks
                raise UnsupportedFormatError(f"{self.path}: cuCIM cannot decode this file ({exc}); "
                                             "use backend='auto' or 'tifffile'") from exc
            raise SlideReadError(f"{self.path}: cuCIM read failed ({type(exc).__name__}: {exc})") from exc
        return to_rgb(arr)

    def read_associated(self, name: str) -> np.ndarray:
        return to_rgb(np.asarray(self._img.associated_image(name)))

    def close(self) -> None:
        self._img.close() if hasattr(self._img, "close") else None


class CuCIMBackend:
    name: ClassVar[str] = "cucim"
    extensions: ClassVar[dict[str, int]] = {".svs": 90, ".tif": 90, ".tiff": 90}
    default_priority: ClassVar[int] = 0

    @classmethod
    def available(cls) -> bool:
        from cucim.clara import CuImage  # noqa: F401

        return True

    @classmethod
    def can_read(cls, path: Path) -> bool:
        name = path.name.lower()
        if name.endswith((".ome.tif", ".ome.tiff")) or not is_tiff(path):
            return False
        return tiff_tiles_inside_file(path)

    @classmethod
    def open(cls, path: Path) -> CuCIMReader:
        return CuCIMReader(path, device="cuda" if gpu_available() else "cpu")
