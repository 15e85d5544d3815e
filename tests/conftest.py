"""Shared test fixtures: the real slides in ../shared/data/slides and scratch folders.

Tests that need the real slides ask for them through a fixture (``shared_slides``, ``cmu_path``,
``ndpi_path``, ``ome_path``, ``slide_path``); without the slides (a clone outside this project's workspace)
exactly those tests skip with a reason and every other test runs. Set ``WSI_LAB_SHARED_SLIDES`` to point
at another folder. The module constants (``CMU``, ``NDPI``, ``OME``) name the files for parametrisation
and messages; a test that opens them asks for the fixture, not the constant.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", REPO.parent / "shared" / "data" / "slides"))
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs"}
SLIDE_FILES = sorted(p for p in SHARED_SLIDES.glob("*") if p.suffix.lower() in SLIDE_SUFFIXES) \
    if SHARED_SLIDES.is_dir() else []

CMU = SHARED_SLIDES / "CMU-1-Small-Region.svs"
NDPI = SHARED_SLIDES / "test3-DAPI-2-387.ndpi"
OME = SHARED_SLIDES / "OS-1-detail.ome.tif"

MISSING = f"real slides not found in {SHARED_SLIDES} (set WSI_LAB_SHARED_SLIDES)"
#: a skip mark for module-level ``pytestmark`` of files whose every test needs the real CMU slide
needs_cmu = pytest.mark.skipif(not CMU.exists(), reason=MISSING)


def real_slide(path: Path) -> Path:
    """``path`` when the real slide exists, else skip the calling test (with the reason)."""
    if not path.exists():
        pytest.skip(f"{path.name}: {MISSING}")
    return path


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    """The folder of real slides (skips the test when it is missing or empty)."""
    if not SLIDE_FILES:
        pytest.skip(MISSING)
    return SHARED_SLIDES


@pytest.fixture(params=SLIDE_FILES or [None], ids=lambda p: p.name if p else "no-real-slides")
def slide_path(request: pytest.FixtureRequest) -> Path:
    """Each real slide in the shared folder, in turn (one skipped test when there are none)."""
    if request.param is None:
        pytest.skip(MISSING)
    return request.param


@pytest.fixture(scope="session")
def cmu_path() -> Path:
    """CMU-1-Small-Region.svs (Aperio, brightfield, µm/px 0.499)."""
    return real_slide(CMU)


@pytest.fixture(scope="session")
def ndpi_path() -> Path:
    """test3-DAPI-2-387.ndpi (Hamamatsu, fluorescence)."""
    return real_slide(NDPI)


@pytest.fixture(scope="session")
def ome_path() -> Path:
    """OS-1-detail.ome.tif (OME-TIFF)."""
    return real_slide(OME)


@pytest.fixture(scope="module")
def client():
    """A real Dask LocalCluster on 127.0.0.1 (two one-thread worker processes), one per test module."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()

