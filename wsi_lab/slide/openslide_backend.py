"""Reader backend built on openslide-python (with the openslide-bin library).

Reads every format OpenSlide knows (Aperio SVS, Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN, Ventana
BIF, Philips TIFF, generic tiled TIFF, DICOM). OpenSlide returns premultiplied-free RGBA; areas outside
the scanned region (alpha 0) become white.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from wsi_lab.errors import SlideOpenError, SlideReadError, UnsupportedFormatError
from wsi_lab.slide.backend import ReaderMetadata
from wsi_lab.slide.metadata import first_present, plausible_mpp, to_float
from wsi_lab.slide.pixels import to_rgb


class OpenSlideReader:
    backend_name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self._os = openslide.OpenSlide(str(path))
            props = dict(self._os.properties)
            dims = tuple((int(w), int(h)) for w, h in self._os.level_dimensions)
            downs = tuple(float(d) for d in self._os.level_downsamples)
            assoc = tuple(self._os.associated_images.keys())
        except Exception as exc:
            raise SlideOpenError(f"{path}: OpenSlide could not open it ({type(exc).__name__}: {exc})") from exc
        self.metadata = ReaderMetadata(
            level_dimensions=dims,
            level_downsamples=downs,
            mpp=plausible_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"), str(path)),
            magnification=to_float(first_present(props, "openslide.objective-power")),
            vendor=props.get("openslide.vendor") or None,
            properties={str(k): str(v) for k, v in props.items()},
            associated_names=assoc,
        )

    def read_level(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        ds = self.metadata.level_downsamples[level]
        try:
            img = self._os.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
        except Exception as exc:
            if "Unsupported" in str(exc):  # e.g. "Unsupported TIFF compression: 50001": a codec it lacks
                raise UnsupportedFormatError(f"{self.path}: OpenSlide cannot decode this file ({exc}); "
                                             "use backend='auto' or 'tifffile'") from exc
            raise SlideReadError(f"{self.path}: OpenSlide read failed ({type(exc).__name__}: {exc}); "
                                 "the file may be truncated or corrupt") from exc
        return to_rgb(np.asarray(img))

    def read_associated(self, name: str) -> np.ndarray:
        return to_rgb(np.asarray(self._os.associated_images[name]))

    def close(self) -> None:
        self._os.close()


class OpenSlideBackend:
    name: ClassVar[str] = "openslide"
    extensions: ClassVar[dict[str, int]] = {
        ".ndpi": 100, ".mrxs": 100, ".vms": 100, ".vmu": 100, ".scn": 100, ".bif": 100,
        ".svslide": 100, ".dcm": 100, ".svs": 70, ".tif": 70, ".tiff": 70,
    }
    default_priority: ClassVar[int] = 5

    @classmethod
    def available(cls) -> bool:
        import openslide  # noqa: F401

        return True

    @classmethod
    def can_read(cls, path: Path) -> bool:
        import openslide

        try:
            return openslide.OpenSlide.detect_format(str(path)) is not None
        except Exception:  # noqa: BLE001 - a file OpenSlide cannot probe is not one it reads
            return False

    @classmethod
    def open(cls, path: Path) -> OpenSlideReader:
        return OpenSlideReader(path)
