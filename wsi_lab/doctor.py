"""``wsi-lab doctor``: which backends and extras are importable here, with the exact install hint for
each missing one. Imports are attempted in a way that never raises."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import shutil
from dataclasses import asdict, dataclass


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    version: str | None
    detail: str
    hint: str

    def as_dict(self) -> dict:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


#: modules that take seconds to import; without ``deep`` only their presence is checked
HEAVY = {"tensorflow", "napari", "sagemaker", "horovod.torch"}


def _import(module: str, deep: bool = False) -> tuple[bool, str]:
    try:
        if module in HEAVY and not deep:
            spec = importlib.util.find_spec(module.split(".")[0])
            return (spec is not None), ("" if spec else f"No module named {module!r}")
        importlib.import_module(module)
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any import failure (missing lib, ABI mismatch) is reported
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


def _module_check(name: str, module: str, dist: str, hint: str, detail_fn=None, deep: bool = False) -> Check:
    ok, err = _import(module, deep)
    detail = err
    if ok and detail_fn is not None:
        try:
            detail = detail_fn()
        except Exception as exc:  # noqa: BLE001 - a probe that fails is part of the report
            detail = f"imported, but {type(exc).__name__}: {exc}"
    version = (_version(dist) or _version(dist.replace("-cpu", ""))) if ok else None
    return Check(name, ok, version, detail, "" if ok else hint)


def _openslide_detail() -> str:
    import openslide

    return f"OpenSlide library {openslide.__library_version__}"


def _sagemaker_detail() -> str:
    """Where SageMaker requests would go (never the credentials themselves, only whether boto3 finds some)."""
    import os

    import boto3

    session = boto3.session.Session()
    found = session.get_credentials() is not None
    where = os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    return f"region {session.region_name or 'not set'}, endpoint {where}, credentials {'found' if found else 'not found'}"


def _codecs_detail() -> str:
    import imagecodecs

    names = {"JPEG": "jpeg8", "JPEG 2000": "jpeg2k", "JPEG XL": "jpegxl", "WebP": "webp", "LZW": "lzw", "Deflate": "zlib"}
    have = [label for label, codec in names.items() if getattr(imagecodecs, codec.upper(), None) is not None
            and getattr(imagecodecs, codec.upper()).available]
    return "codecs: " + ", ".join(have)


def _cucim_detail() -> str:
    from wsi_lab.slide.cucim_backend import gpu_available

    return "GPU decode available" if gpu_available() else "CPU reads only (no CUDA device)"


def _torch_detail() -> str:
    import torch

    return f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "CPU only"


def check_environment(deep: bool = False) -> list[Check]:
    """Probe every optional part of WSI Lab and return one :class:`Check` per part. Heavy frameworks
    (TensorFlow, napari, SageMaker, Horovod) are only located unless ``deep`` imports them too."""
    from wsi_lab.slide.cucim_backend import preload_cucim

    preload_cucim()  # before the `import cucim` below: cuCIM must be loaded this way (see preload_cucim)
    checks = [
        _module_check("tifffile reader", "tiffslide", "tiffslide", "pip install wsi-lab"),
        _module_check("imagecodecs", "imagecodecs", "imagecodecs", "pip install imagecodecs", _codecs_detail),
        _module_check("OpenSlide", "openslide", "openslide-python", "pip install 'wsi-lab[openslide]'", _openslide_detail),
        _module_check("cuCIM", "cucim", "cucim-cu12",
                      "GPU: pip install 'wsi-lab[cucim]'; CPU-only: pip install --no-deps cucim-cu12 && pip install lazy-loader",
                      _cucim_detail),
        _module_check("Dask distributed", "distributed", "distributed", "pip install 'dask[distributed]' bokeh"),
        _module_check("torch", "torch", "torch", "pip install 'wsi-lab[torch]' (CPU machines: pip install torch==<local CPU wheel>)",
                      _torch_detail),
        _module_check("TensorFlow", "tensorflow", "tensorflow-cpu", "pip install 'wsi-lab[tf]'", deep=deep),
        _module_check("Dask dashboard (bokeh)", "bokeh", "bokeh", "pip install 'bokeh>=3.1'"),
        _module_check("Horovod", "horovod.torch", "horovod",
                      "bash scripts/install_horovod.sh (builds Horovod with its C++20 build patch; see README)", deep=deep),
        _module_check("SageMaker (boto3)", "boto3", "boto3", "pip install 'wsi-lab[sagemaker]'", _sagemaker_detail),
        _module_check("napari", "napari", "napari", "pip install 'wsi-lab[napari]'", deep=deep),
        _module_check("JupyterLab", "jupyterlab", "jupyterlab", "pip install 'wsi-lab[ui]'"),
        _module_check("anywidget", "anywidget", "anywidget", "pip install 'wsi-lab[ui]'"),
        _module_check("jupyter-server-proxy (Dask dashboard link)", "jupyter_server_proxy", "jupyter-server-proxy",
                      "pip install jupyter-server-proxy"),
    ]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    checks.append(Check("Chromium (browser tests)", chromium is not None, None, chromium or "",
                        "" if chromium else "apt-get install -y chromium"))
    return checks


def format_report(checks: list[Check]) -> str:
    """Human-readable table of :func:`check_environment` results."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok     " if c.ok else "MISSING"
        info = " ".join(x for x in (c.version or "", c.detail) if x)
        lines.append(f"{mark}  {c.name.ljust(width)}  {info}" + (f"\n         {'':{width}}  install: {c.hint}" if not c.ok else ""))
    return "\n".join(lines)
