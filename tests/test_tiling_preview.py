"""wsi_lab.tiling.preview: the rules the tuner used to hold (min-object keyword, detect -> plan)."""

from __future__ import annotations

import pytest

from wsi_lab import detect_tissue, open_slide, plan_tiles
from wsi_lab.errors import InvalidParameterError
from wsi_lab.testing import make_slide
from wsi_lab.tiling import TilingParams
from wsi_lab.tiling.preview import min_object_params, preview_tiling


def test_min_object_keyword_follows_the_slides_scale(tmp_path):
    with_mpp = make_slide(tmp_path / "a.svs", 1024, 768, mpp=0.5, seed=1)
    without = make_slide(tmp_path / "b.svs", 1024, 768, mpp=None, seed=1)
    with open_slide(with_mpp) as a, open_slide(without) as b:
        assert min_object_params(a, 500.0) == {"min_object_um2": 500.0}
        assert min_object_params(b, 500.0) == {"min_object_px": 500.0}
        assert min_object_params(a, 0) == {} and min_object_params(a, None) == {}
        with pytest.raises(InvalidParameterError, match="0 = off"):
            min_object_params(a, -1.0)


def test_preview_matches_the_core_path(tmp_path):
    path = make_slide(tmp_path / "a.svs", 2048, 1536, mpp=0.5, seed=2)
    params = TilingParams(tile_size=128, method="variance", method_params={"threshold": 100.0}).validate()
    with open_slide(path) as s:
        p = preview_tiling(s, params)
        mask = detect_tissue(s, "variance", threshold=100.0)
        assert p.n_tiles == len(plan_tiles(s, 128, mask=mask, min_tissue=0.5)) > 0
        assert p.mask.method == "variance"
