"""Shared test fixtures: the real slides in ../shared/data/slides and scratch folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", REPO.parent / "shared" / "data" / "slides"))
SLIDE_FILES = sorted(p for p in SHARED_SLIDES.glob("*") if p.suffix.lower() in {".svs", ".tif", ".tiff", ".ndpi", ".mrxs"}) \
    if SHARED_SLIDES.is_dir() else []

CMU = SHARED_SLIDES / "CMU-1-Small-Region.svs"
NDPI = SHARED_SLIDES / "test3-DAPI-2-387.ndpi"
OME = SHARED_SLIDES / "OS-1-detail.ome.tif"


def pytest_collection_modifyitems(config, items):
    if not SLIDE_FILES:
        skip = pytest.mark.skip(reason=f"real slides not found in {SHARED_SLIDES}")
        for item in items:
            if "real_slide" in item.fixturenames or "slide_path" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture(params=SLIDE_FILES, ids=lambda p: p.name)
def slide_path(request) -> Path:
    """Each real slide in the shared folder, in turn."""
    return request.param


@pytest.fixture
def cmu_path() -> Path:
    if not CMU.exists():
        pytest.skip("CMU-1-Small-Region.svs not available")
    return CMU
