"""Tissue detection beyond H&E (issue 12): IHC-like and faint re-renderings of H&E fields, scored against
a reference mask taken from the rendering (wsi_lab.testing_stains), the ``od`` default, NoTissueError."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from wsi_lab.errors import NoTissueError
from wsi_lab.slide import open_slide
from wsi_lab.testing_stains import (
    VARIANTS,
    make_variant_slides,
    mask_scores,
    reference_on_grid,
    source_fields,
    tile_scores,
    write_variant_slide,
)
from wsi_lab.tissue import DEFAULT_METHOD, METHODS, TISSUE_METHODS, detect_tissue

from .conftest import SHARED_SLIDES as SLIDES

REPO_ENV = {"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])}


def _scores(vs, method):
    with open_slide(vs.path) as s:
        mk = detect_tissue(s, method)
    return mask_scores(mk.mask, reference_on_grid(vs.reference, mk.downsample, mk.shape))


@pytest.fixture(scope="module")
def synthetic_variants(tmp_path_factory):
    fields = source_fields(include_shared=False)
    return make_variant_slides(tmp_path_factory.mktemp("stains"), tuple(VARIANTS), fields)


@pytest.fixture(scope="module")
def shared_variants(tmp_path_factory):
    fields = source_fields()
    if "cmu-dense" not in fields:
        pytest.skip("shared slides not found")
    fields.pop("synthetic")
    return make_variant_slides(tmp_path_factory.mktemp("stains_shared"), ("ki67", "ki67-pale", "faint"), fields)


def test_od_is_the_default_of_the_table():
    assert DEFAULT_METHOD == "od" and METHODS[0] == "od" and {"otsu", "variance", "background"} <= set(METHODS)
    assert TISSUE_METHODS["od"].slider()["default"] is None  # automatic
    from wsi_lab.tiling import TilingParams

    assert TilingParams().method == "od"


def test_variants_render_ihc_and_faint(synthetic_variants):
    by = {v.variant: v for v in synthetic_variants}
    with open_slide(by["ki67"].path) as s:
        px = s.read_region((0, 0), 0, s.dimensions).astype(np.float32)
    ref = by["ki67"].reference
    glass = px[~ref].mean(axis=0)
    assert np.all(np.abs(glass - 216) < 4)  # grey glass
    brownish = (px[..., 0] > px[..., 2] + 25) & ref
    assert 0.002 < brownish.mean() < 0.2  # DAB on a subset of nuclei
    assert 0.2 < ref.mean() < 0.8


def test_od_holds_on_every_synthetic_variant(synthetic_variants):
    for vs in synthetic_variants:
        p, r = _scores(vs, "od")
        assert p >= 0.9 and r >= 0.85, (vs.variant, p, r)


def test_old_methods_fail_on_pale_ihc(synthetic_variants):
    """The benchmark's claim is not vacuous: today's methods miss the pale Ki67 variant."""
    vs = next(v for v in synthetic_variants if v.variant == "ki67-pale")
    fails = [m for m in ("otsu", "variance", "background") if min(_scores(vs, m)) < 0.85 or _scores(vs, m)[0] < 0.9]
    assert fails == ["otsu", "variance", "background"]


def test_od_holds_on_real_he_rerendered(shared_variants):
    for vs in shared_variants:
        p, r = _scores(vs, "od")
        assert p >= 0.9 and r >= 0.85, (vs.field, vs.variant, p, r)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "OS-1-detail.ome.tif", "test3-DAPI-2-387.ndpi"])
def test_no_regression_on_shared_slides(name):
    path = SLIDES / name
    if not path.is_file():
        pytest.skip("shared slides not found")
    with open_slide(path) as s:
        old, new = detect_tissue(s, "otsu"), detect_tissue(s, "od")
    assert old.shape == new.shape
    kept = (old.mask & new.mask).sum() / old.mask.sum()
    assert kept >= 0.95, kept  # what the old default found is still found
    if name.startswith("OS-1"):
        assert new.fraction > 0.98  # all tissue stays whole
    if name.startswith("CMU"):
        assert new.fraction < 0.5  # the glass stays glass


def _tile_cli(slides, out):
    cmd = [sys.executable, "-m", "wsi_lab.cli", "tile", *map(str, slides), "--tile-size", "256", "--mpp", "0.5",
           "--out", str(out), "-q", "--workers", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, **REPO_ENV},
                          timeout=600)


def test_ihc_and_faint_tile_with_the_defaults(shared_variants, synthetic_variants, tmp_path):
    """Done-when of issue 12: tiles ≥ 90% tissue covering ≥ 85% of it, on the ~3/4-tissue field."""
    chosen = [v for v in shared_variants if v.field == "cmu-dense" and v.variant in ("ki67", "faint")]
    chosen += [v for v in synthetic_variants if v.variant in ("ki67", "faint")]
    res = _tile_cli([v.path for v in chosen], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for vs in chosen:
        table = pd.read_parquet(tmp_path / vs.path.stem / "tiles.parquet")
        with open_slide(vs.path) as s:
            purity, coverage = tile_scores(table, vs.reference, tuple(s.level_downsamples))
        assert purity >= 0.9 and coverage >= 0.85, (vs.field, vs.variant, len(table), purity, coverage)


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    rng = np.random.default_rng(0)
    glass = np.clip(216 + rng.normal(0, 2, (768, 1024, 3)), 0, 255).astype(np.uint8)
    return write_variant_slide(tmp_path_factory.mktemp("blank") / "blank.svs", glass, 0.5)


def test_blank_glass_raises_typed_no_tissue(blank):
    with pytest.raises(NoTissueError) as exc:
        detect_tissue(blank)
    e = exc.value
    assert e.method == "od" and e.threshold is not None and "lower the threshold" in str(e)
    import pickle

    back = pickle.loads(pickle.dumps(e))
    assert back.method == "od" and back.threshold == e.threshold


def test_no_tissue_in_cli_and_tiling_run(blank, synthetic_variants, tmp_path):
    res = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "tissue", str(blank), "-o", str(tmp_path / "m.png")],
                         capture_output=True, text=True, env={**__import__("os").environ, **REPO_ENV}, timeout=300)
    assert res.returncode != 0 and "no tissue found" in res.stderr and "method='od'" in res.stderr
    assert not (tmp_path / "m.png").exists()
    good = next(v for v in synthetic_variants if v.variant == "ki67")
    res = _tile_cli([blank, good.path], tmp_path / "run")
    assert res.returncode == 1
    assert "1 failed" in res.stdout and "NoTissueError" in res.stdout and "lower the threshold" in res.stdout
    assert len(pd.read_parquet(tmp_path / "run" / good.path.stem / "tiles.parquet")) > 0
    assert not (tmp_path / "run" / "blank" / "tiles.parquet").exists()  # a failed slide, not an empty table


def test_od_without_mpp(tmp_path):
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "nompp.svs", 2048, 1536, mpp=None, tissue_fraction=0.4, source="procedural")
    m = detect_tissue(p)
    assert m.method == "od" and 0.2 < m.fraction < 0.7 and m.params["min_object_px"] > 0


def test_od_ignores_white_scanner_padding(synthetic_variants, tmp_path):
    """Grey IHC glass next to pure-white unscanned areas: the glass colour is the slide's glass, not 255."""
    vs = next(v for v in synthetic_variants if v.variant == "ki67")
    with open_slide(vs.path) as s:
        img = s.read_region((0, 0), 0, s.dimensions)
    h, w = img.shape[:2]
    padded = np.full((h, w * 2, 3), 255, np.uint8)
    padded[:, w // 2:w // 2 + w] = img
    ref = np.zeros(padded.shape[:2], bool)
    ref[:, w // 2:w // 2 + w] = vs.reference
    m = detect_tissue(write_variant_slide(tmp_path / "padded.svs", padded, vs.mpp))
    assert max(abs(c - 216) for c in m.params["background_colour"]) < 4
    p, r = mask_scores(m.mask, reference_on_grid(ref, m.downsample, m.shape))
    assert p >= 0.9 and r >= 0.85, (p, r)
