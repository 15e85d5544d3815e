"""Data locations do not depend on where the package is installed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsi_lab
from wsi_lab.demo import demo_slides_dir
from wsi_lab.errors import SlideNotFoundError
from wsi_lab.locations import cache_dir, shared_slides_dir
from wsi_lab.testing import default_source_slide

PACKAGE = Path(wsi_lab.__file__).parent


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("WSI_LAB_SHARED_SLIDES", "WSI_LAB_SLIDES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WSI_LAB_CACHE", str(tmp_path / "cache"))
    return monkeypatch


def test_shared_slides_are_found_from_the_current_folder_and_its_parents(clean_env, tmp_path):
    slides = tmp_path / "project" / "shared" / "data" / "slides"
    slides.mkdir(parents=True)
    (slides / "CMU-1-Small-Region.svs").write_bytes(b"x")
    nested = tmp_path / "project" / "repo" / "notebooks"
    nested.mkdir(parents=True)
    clean_env.chdir(nested)
    assert shared_slides_dir() == slides.resolve()
    assert demo_slides_dir() == slides.resolve()
    assert default_source_slide() == slides.resolve() / "CMU-1-Small-Region.svs"


def test_without_shared_slides_the_cache_is_used_or_a_typed_error(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    assert shared_slides_dir() is None and default_source_slide() is None
    with pytest.raises(SlideNotFoundError, match="WSI_LAB_SLIDES"):
        demo_slides_dir()
    (cache_dir() / "slides").mkdir(parents=True)
    (cache_dir() / "slides" / "a.svs").write_bytes(b"x")
    assert demo_slides_dir() == tmp_path / "cache" / "slides"


def test_environment_variables_win(clean_env, tmp_path):
    clean_env.setenv("WSI_LAB_SHARED_SLIDES", str(tmp_path / "missing"))
    clean_env.chdir(tmp_path)
    assert shared_slides_dir() is None  # pointed away: not searched elsewhere
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "b.svs").write_bytes(b"x")
    clean_env.setenv("WSI_LAB_SLIDES", str(tmp_path / "mine"))
    assert demo_slides_dir() == tmp_path / "mine"


@pytest.mark.parametrize("module", ["demo.py", "testing.py", "locations.py", "doctor.py"])
def test_no_data_is_looked_up_relative_to_the_package(module):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "__file__" not in names, f"wsi_lab/{module} finds files relative to __file__ (breaks once installed)"
