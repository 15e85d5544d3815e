"""Generate environment.yml (conda-forge) from pyproject.toml so the two never drift.

Usage: python scripts/sync_environment.py [--check]. With --check, exit 1 when environment.yml is stale.
Packages conda-forge ships are listed as conda dependencies (names mapped below); the rest go under pip.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: PyPI name -> conda-forge name (None: install with pip inside the conda env)
CONDA_NAMES = {
    "openslide-python": "openslide-python", "openslide-bin": "openslide", "dask": "dask", "torch": "pytorch",
    "tensorflow-cpu": "tensorflow", "google-crc32c": "google-crc32c", "cucim-cu12": None, "horovod": None,
    "sagemaker": None, "playwright": None, "pytest-timeout": "pytest-timeout", "npe2": "npe2", "napari": "napari",
}
#: extras that go into the conda environment (GPU-only and cluster-only ones stay pip extras)
EXTRAS = ("openslide", "ui", "torch", "train", "napari", "tf", "keras2", "dev")


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req)
    assert m, req
    return m.group(1).lower(), m.group(3).strip()


def render() -> str:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in EXTRAS:
        reqs += [r for r in meta["optional-dependencies"].get(extra, []) if not r.startswith("wsi-lab")]
    conda, pip = [], []
    seen = set()
    for req in reqs:
        name, spec = _split(req)
        if name in seen:
            continue
        seen.add(name)
        mapped = CONDA_NAMES.get(name, name)
        if mapped is None:
            pip.append(f"{name}{spec}")
        else:
            conda.append(f"{mapped}{spec}".replace("==", "="))
    lines = ["# Generated from pyproject.toml by scripts/sync_environment.py; do not edit by hand.",
             "name: wsi-lab", "channels:", "  - conda-forge", "dependencies:", "  - python>=3.11", "  - pip"]
    lines += [f"  - {c}" for c in sorted(conda)]
    lines += ["  - pip:", "    - -e .  # wsi-lab itself"] + [f"    - {p}" for p in sorted(pip)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    target = ROOT / "environment.yml"
    if "--check" in sys.argv:
        sys.exit(0 if target.exists() and target.read_text() == text else 1)
    target.write_text(text)
    print(f"wrote {target}")
