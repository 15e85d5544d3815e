"""The job's code as SageMaker framework images take it: ``sourcedir.tar.gz`` holding the ``wsi_lab``
package, the entry script (``sagemaker_program``) and a ``requirements.txt`` that the image's training
toolkit installs. The archive is deterministic (sorted names, fixed times and owners), so the same
code has the same SHA-256 and a re-run uploads nothing new."""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import os
import tarfile
from pathlib import Path

from wsi_lab.io import atomic_path

__all__ = ["ENTRY_SCRIPT", "ENTRY_TEXT", "build_source_bundle", "requirements"]

#: the ``sagemaker_program`` of training jobs: the container runs ``python wsi_lab_train.py <hps>``
ENTRY_SCRIPT = "wsi_lab_train.py"
ENTRY_TEXT = '''"""SageMaker entry point: run the job spec of the hyper-parameters with WSI Lab's one training entry
point (python -m wsi_lab.train), reading the SM_* variables of the container."""
import sys

from wsi_lab.cloud.entry import main

if __name__ == "__main__":
    sys.exit(main(["train"]))
'''
_SKIP_DIRS = {"__pycache__", "static", ".mypy_cache", ".ruff_cache"}
_PROVIDED = ("torch", "torchvision")  # the PyTorch framework image brings its own


def requirements() -> list[str]:
    """The package's own dependencies (no extras), minus what the PyTorch image provides."""
    try:
        reqs = importlib.metadata.requires("wsi-lab") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    keep = [r for r in reqs if "extra ==" not in r and not r.split(";")[0].strip().startswith(_PROVIDED)]
    return sorted(set(keep + ["scikit-learn>=1.4", "pyyaml>=6", "timm>=1.0"]))


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), mode, 0, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def build_source_bundle(dest: str | os.PathLike, package_dir: str | os.PathLike | None = None) -> Path:
    """Write ``dest`` (``sourcedir.tar.gz``) from ``package_dir`` (default: this ``wsi_lab`` package):
    ``wsi_lab/**.py`` and its data files (no caches, no bundled front end), the entry script and
    ``requirements.txt``. Atomic; the same sources give the same bytes."""
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(pkg).parts))
                   and p.suffix not in (".pyc", ".part"))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, ENTRY_SCRIPT, ENTRY_TEXT.encode())
        _add(tar, "requirements.txt", ("\n".join(requirements()) + "\n").encode())
        for f in files:
            _add(tar, "wsi_lab/" + f.relative_to(pkg).as_posix(), f.read_bytes())
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(dest)
