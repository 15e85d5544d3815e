"""Reader backend built on cuCIM (NVIDIA's C++ TIFF reader; CPU reads everywhere, GPU decode with CUDA).

cuCIM reads Aperio SVS, Philips TIFF and generic tiled TIFF whose pyramid levels are top-level IFDs.
It trusts tile offsets blindly, so before handing it a file we check with tifffile that every tile of
every level lies inside the file: a truncated slide then fails with a typed error instead of a crash.

cuCIM's native library is loaded through :func:`load_cucim` (deep binding, see there): without it, any
``read_region`` segfaults once ``import horovod.torch`` (or anything else that puts torch's ``libc10`` in the
process's global symbol scope) has run in the same process.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsi_lab.errors import BackendUnavailableError, SlideOpenError, SlideReadError, UnsupportedFormatError
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


#: the constructor of ``std::__detail::_Scanner<char>``, one of the libstdc++ ``std::regex`` template functions
#: that libcucim (GCC 14) and torch's libc10/libtorch_cpu (GCC 13) both export, with incompatible layouts
_REGEX_SYMBOL = "_ZNSt8__detail8_ScannerIcEC1EPKcS3_NSt15regex_constants18syntax_option_typeESt6locale"
#: "deep_bound": whether this module loaded libcucim with RTLD_DEEPBIND (decided once per process)
_STATE: dict[str, bool] = {}
#: "provider": the foreign std::regex provider once found (see _check_safe)
_FOREIGN: dict[str, str] = {}


def _cucim_native_libraries() -> list[Path]:
    """The libcucim shared libraries of the installed ``cucim`` wheel (the one ``_cucim`` links and the
    auditwheel copy the slide plugins link), without importing cucim."""
    spec = importlib.util.find_spec("cucim")
    if spec is None or not spec.submodule_search_locations:
        return []
    pkg = Path(next(iter(spec.submodule_search_locations)))
    return sorted((pkg / "clara").glob("libcucim.so*")) + sorted(pkg.parent.glob("cucim*.libs/libcucim*.so*"))


def _libcucim_mapped() -> bool:
    """True when a libcucim is already loaded in this process (by ``import cucim`` before :func:`load_cucim`)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libcucim" in line for line in maps)
    except OSError:
        return "cucim.clara._cucim" in sys.modules


def preload_cucim() -> bool:
    """Load libcucim with ``RTLD_DEEPBIND`` before ``cucim.clara`` imports it; True when that was done.

    Why: libcucim calls the ``std::regex`` template functions it carries (they parse the ``device`` of every
    ``read_region``) through the dynamic linker, which binds them lazily and looks in the process's global
    scope first. ``import horovod.torch`` loads its ``mpi_lib`` with ``RTLD_GLOBAL``, which puts torch's
    ``libc10``/``libtorch_cpu`` into that scope; they export the same ``std::__detail::_Scanner<char>``
    functions built by another GCC, cuCIM's regex compiler runs half its own code and half torch's, and frees
    a stack address: SIGSEGV in ``read_region`` (seen in a long pytest run after test_pipe_multiprocess; a
    Jupyter kernel that imported horovod.torch would die the same way). Deep binding makes libcucim take its
    own definitions first, whatever was loaded before or after. Too late once libcucim is loaded (someone
    imported cucim first): then :func:`foreign_regex_provider` tells whether reads are safe."""
    if "deep_bound" not in _STATE:
        done = False
        flag = getattr(os, "RTLD_DEEPBIND", 0)
        libs = _cucim_native_libraries()
        if flag and libs and not _libcucim_mapped():
            try:
                for lib in libs:
                    ctypes.CDLL(str(lib), mode=os.RTLD_NOW | os.RTLD_LOCAL | flag)
                done = True
            except OSError as exc:
                log.warning("could not preload %s with deep binding (%s); cuCIM is not protected against "
                            "foreign std::regex symbols", lib, exc)
        elif flag and libs:
            log.info("libcucim was loaded before wsi_lab (import cucim came first): cuCIM reads are refused once "
                     "foreign std::regex symbols enter the global scope (e.g. import horovod.torch)")
        _STATE["deep_bound"] = done
    return _STATE["deep_bound"]


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def foreign_regex_provider() -> str | None:
    """The library outside cuCIM whose ``std::regex`` scanner a libcucim without deep binding would call (it is
    in the process's global symbol scope), or None when there is none."""
    try:
        scope = ctypes.CDLL(None)
        addr = ctypes.cast(scope[_REGEX_SYMBOL], ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None
    info = _DlInfo()
    dladdr = scope["dladdr"]
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
        return "an unknown library"
    name = os.fsdecode(info.dli_fname)
    return None if "libcucim" in Path(name).name else name


def load_cucim() -> Any:
    """``cucim.clara.CuImage``, with libcucim loaded by :func:`preload_cucim` first (call this, never
    ``import cucim`` directly, anywhere in wsi_lab)."""
    preload_cucim()
    from cucim.clara import CuImage

    return CuImage


def _check_safe(path: Path) -> None:
    """Raise :class:`BackendUnavailableError` when cuCIM would read with torch's std::regex (see preload_cucim)."""
    if _STATE.get("deep_bound"):
        return
    other = _FOREIGN.get("provider") or foreign_regex_provider()
    if other is not None:
        _FOREIGN["provider"] = other  # a library in the global scope stays there: not looked up per read again
        raise BackendUnavailableError(
            f"{path}: cuCIM cannot read safely in this process: cucim was imported before wsi_lab and {other} "
            "(put in the global symbol scope by e.g. `import horovod.torch`) exports std::regex code cuCIM would "
            "call and crash in; use backend='auto' or 'tifffile', or restart and import wsi_lab before cucim")


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
        CuImage = load_cucim()
        _check_safe(path)
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
        _check_safe(self.path)
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
        load_cucim()
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
