"""Slides we have not seen: codecs, layouts, dtypes and metadata other scanners write.

Every variant is generated here (``tests/_slide_variants.py``, tifffile, ≤ 4000x3000) together with the
pixels written, and the first part of the pipeline is checked against that truth: ``open_slide`` (auto) ->
metadata (dimensions, levels, µm/px never invented) -> ``read_region`` inside and across the edge of every
level (white outside) -> ``get_thumbnail`` -> ``detect_tissue`` (otsu / variance / background, and
NoTissueError only on a blank slide) -> ``plan_tiles`` by µm/px or by level -> ``wsi-lab info --json``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._slide_variants import Variant, all_variants, he_image
from wsi_lab import open_slide
from wsi_lab.errors import MissingMPPError, NoTissueError, SlideOpenError, SlideReadError, UnsupportedFormatError
from wsi_lab.slide import available_backends
from wsi_lab.slide.backend import _LOADED, _REGISTRY, ReaderMetadata, register_backend
from wsi_lab.tiling import plan_tiles
from wsi_lab.tissue import detect_tissue

REPO = Path(__file__).resolve().parents[1]
NAMES = list(all_variants(Path("/nonexistent")))


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Variant]:
    folder = tmp_path_factory.mktemp("variants")
    return {name: make() for name, make in all_variants(folder).items()}


def truth_rgb(v: Variant, level: int) -> np.ndarray | None:
    """What a reader must return for ``level`` as (H, W, 3) uint8, or None (fluorescence: no fixed mapping)."""
    a = v.levels[level]
    if v.fluorescence:
        return None
    if "planar" in v.extra:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.dtype == np.uint16:
        a = np.round(a / 257.0).astype(np.uint8)
    if a.shape[2] == 4:  # straight alpha over white
        rgb, alpha = a[:, :, :3].astype(np.uint16), a[:, :, 3:4].astype(np.uint16)
        a = ((rgb * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
    return a


def _box_diff(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.int16) - want.astype(np.int16)).mean()) if want.size else 0.0


def check_metadata(s, v: Variant) -> None:
    W, H = v.dims
    assert s.dimensions == (W, H)
    assert s.level_count == len(v.levels), (s.level_dimensions, [lv.shape for lv in v.levels])
    for i in range(len(v.levels)):
        lw, lh = v.level_dims(i)
        assert s.level_dimensions[i] == (lw, lh)
        assert s.level_downsamples[i] == pytest.approx((W / lw + H / lh) / 2, rel=1e-3)
    if v.mpp is None:
        assert s.mpp is None, f"µm/px invented: {s.mpp}"
        with pytest.raises(MissingMPPError, match=s.path.name):
            s.require_mpp()
    else:
        assert s.mpp == pytest.approx(v.mpp, rel=1e-4)
    if v.vendor is not None:
        assert s.vendor == v.vendor
        assert s.magnification == v.magnification  # None when the file has no AppMag
    assert set(v.associated) <= set(s.associated_images)
    for name in s.associated_images:
        img = s.associated_images[name]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.size > 0


def check_pixels(s, v: Variant) -> None:
    rng = np.random.default_rng(0)
    for level in range(s.level_count):
        (lw, lh), ds = s.level_dimensions[level], s.level_downsamples[level]
        want = truth_rgb(v, level)
        # a box inside the level, at a random place that holds tissue when there is some
        w, h = min(173, lw), min(131, lh)
        x, y = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
        loc = (int(math.ceil(x * ds)), int(math.ceil(y * ds)))
        lx, ly = int(math.floor(loc[0] / ds)), int(math.floor(loc[1] / ds))  # the Slide's own rounding
        got = s.read_region(loc, level, (w, h))
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        if want is not None:
            inner = want[ly:ly + h, lx:lx + w]
            assert _box_diff(got[:inner.shape[0], :inner.shape[1]], inner) <= v.tol + 0.6, (level, (x, y))
        # a box across the bottom-right corner: the part outside the level is white
        loc = (int((lw - 40) * ds), int((lh - 30) * ds))
        lx, ly = int(math.floor(loc[0] / ds)), int(math.floor(loc[1] / ds))
        got = s.read_region(loc, level, (100, 90))
        iw, ih = lw - lx, lh - ly
        assert (got[ih:] == 255).all() and (got[:, iw:] == 255).all(), level
        if want is not None:
            assert _box_diff(got[:ih, :iw], want[ly:, lx:]) <= v.tol + 0.6, level
        # and a box wholly outside, above-left
        assert (s.read_region((-500, -500), level, (20, 20)) == 255).all()


def check_thumbnail(s, v: Variant) -> None:
    th = s.get_thumbnail(256)
    W, H = v.dims
    assert th.dtype == np.uint8 and th.ndim == 3 and th.shape[2] == 3
    assert max(th.shape[:2]) == 256 and abs(th.shape[1] / th.shape[0] - W / H) < 0.02
    want = truth_rgb(v, 0)
    if want is not None:
        small = np.asarray(Image.fromarray(want).resize((th.shape[1], th.shape[0]), Image.Resampling.BOX))
        assert _box_diff(th, small) <= v.tol + 4.0
    else:  # fluorescence: dark background, bright tissue
        truth = np.asarray(Image.fromarray(v.tissue).resize((th.shape[1], th.shape[0]), Image.Resampling.NEAREST))
        gray = th.astype(np.float32).max(axis=2)
        assert gray[~truth].mean() < 40 and gray[truth].mean() > gray[~truth].mean() + 60


def _truth_on_mask(v: Variant, mask) -> np.ndarray:
    """The level-0 tissue truth sampled at the centre of every mask cell."""
    h, w = mask.mask.shape
    W, H = v.dims
    ys = np.minimum(((np.arange(h) + 0.5) * mask.downsample).astype(int), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * mask.downsample).astype(int), W - 1)
    return v.tissue[ys][:, xs]


def check_tissue_and_tiles(s, v: Variant) -> None:
    masks = {}
    for method in ("otsu", "variance", "background"):
        if v.tissue is None:
            with pytest.raises(NoTissueError, match=s.path.name):
                detect_tissue(s, method)
            continue
        m = detect_tissue(s, method)
        masks[method] = m
        assert m.params["modality"] == ("fluorescence" if v.fluorescence else "brightfield")
        truth = _truth_on_mask(v, m)
        inter, union = (m.mask & truth).sum(), (m.mask | truth).sum()
        precision = inter / max(m.mask.sum(), 1)
        if method == "variance" and v.levels[0].ndim == 2:
            # grayscale: no colour spread, so variance keeps only the textured parts; what it keeps is tissue
            assert precision > 0.9
        else:
            assert inter / union > 0.85, (method, inter / union, m.fraction, v.tissue.mean())
    if v.tissue is None:
        table = plan_tiles(s, 128, level=0)  # no mask: every tile
        assert len(table) == (v.dims[0] // 128) * (v.dims[1] // 128)
        return
    mask = masks["otsu"]
    W, H = s.dimensions
    if s.mpp is None:
        with pytest.raises(MissingMPPError, match=s.path.name):
            plan_tiles(s, 128, mpp=0.5, mask=mask)
        level = s.level_count - 1 if min(s.level_dimensions[-1]) >= 256 else 0
        table = plan_tiles(s, 128, level=level, mask=mask)
        assert (table["level"] == level).all() and table["mpp"].isna().all()
    else:
        target = 2 * s.mpp[0]
        table = plan_tiles(s, 128, mpp=target, mask=mask)
        assert np.allclose(table["mpp"], target)
        level = int(table["level"].iloc[0])
        assert level == s.level_for_mpp(target)[0]
    assert len(table) > 0
    extent = table["read_size"].iloc[0] * s.level_downsamples[level]
    assert (table["x"] >= 0).all() and (table["y"] >= 0).all()
    assert (table["x"] + extent <= W + 1e-6).all() and (table["y"] + extent <= H + 1e-6).all()
    assert (table["tissue_fraction"] >= 0.5).all()
    # the planned tiles really hold tissue (truth), and read back at their size
    truth_frac = [v.tissue[int(y):int(y + extent), int(x):int(x + extent)].mean()
                  for x, y in zip(table["x"], table["y"])]
    assert min(truth_frac) > 0.3 and np.abs(np.asarray(truth_frac) - table["tissue_fraction"]).mean() < 0.15
    row = table.iloc[len(table) // 2]
    tile = s.read_region((int(row.x), int(row.y)), int(row.level), (int(row.read_size),) * 2)
    assert tile.shape == (int(row.read_size), int(row.read_size), 3)


@pytest.mark.parametrize("name", NAMES)
def test_variant_pipeline(variants, name):
    v = variants[name]
    with open_slide(v.path) as s:
        assert s.backend in available_backends()
        check_metadata(s, v)
        check_pixels(s, v)
        check_thumbnail(s, v)
        check_tissue_and_tiles(s, v)


def test_info_json_for_every_variant(variants):
    """``wsi-lab info --json`` on all variants at once: one record per file with the truth's geometry/µm/px."""
    paths = [str(v.path) for v in variants.values()]
    proc = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "info", "--json", *paths], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {r["path"]: r for r in json.loads(proc.stdout)}
    for v in variants.values():
        r = records[str(v.path)]
        assert (r["width"], r["height"]) == v.dims and r["level_count"] == len(v.levels)
        if v.mpp is None:
            assert r["mpp_x"] is None and r["mpp_y"] is None
        else:
            assert (r["mpp_x"], r["mpp_y"]) == pytest.approx(v.mpp, rel=1e-4)
        assert r["backend"] in available_backends()


def test_non_uint8_pixels_scale_the_same_in_every_read(variants):
    """16-bit pixels map to 8 bits with one scale per slide: a background-only box stays dark/white instead
    of being stretched to its own range, and a pixel reads the same in a small and a large box."""
    for name in ("ome-fluo-3ch", "ome-fluo-5ch-pyr", "tif-rgb16"):
        v = variants[name]
        with open_slide(v.path) as s:
            big = s.read_region((0, 0), 0, s.dimensions)
            small = s.read_region((0, 0), 0, (64, 64))  # background only (the blobs are inside)
            assert np.abs(small.astype(int) - big[:64, :64]).max() <= 1, name
            if v.fluorescence:
                assert small.max() < 40, name  # not stretched to full brightness
            for w, h in ((10, 3), (5, 1), (4, 4), (1, 5)):  # thin boxes: channels never mistaken for rows
                assert s.read_region((300, 400), 0, (w, h)).shape == (h, w, 3), (name, w, h)
            mid = (v.dims[0] // 3, v.dims[1] // 2)
            assert np.abs(s.read_region(mid, 0, (8, 8)).astype(int) - big[mid[1]:mid[1] + 8, mid[0]:mid[0] + 8]).max() <= 1


def test_aperio_ycbcr_jpeg2000_colours_match_every_backend(variants):
    """Aperio 33003 tiles hold YCbCr: auto and every backend that opens the file give the same RGB."""
    v = variants["svs-aperio33003"]
    want = truth_rgb(v, 0)[300:500, 400:700]
    for backend in ["auto", *available_backends()]:
        try:
            s = open_slide(v.path, backend=backend)
        except (UnsupportedFormatError, SlideOpenError):
            assert backend != "auto"
            continue
        with s:
            assert _box_diff(s.read_region((400, 300), 0, (300, 200)), want) <= v.tol + 0.6, s.backend


def test_associated_images_of_a_generic_tiff_have_distinct_names(variants):
    v = variants["tif-label-macro"]
    with open_slide(v.path, backend="tifffile") as s:
        names = list(s.associated_images)
        assert len(names) == 2 and all(names)
        shapes = sorted(s.associated_images[n].shape for n in names)
        assert shapes == [(200, 300, 3), (300, 800, 3)]


def test_thumbnail_of_large_single_level_is_memory_bounded(variants):
    """A 4000x3000 single-level (strips) image: the thumbnail reads bands and never holds more than a
    couple of copies of the level (no float64 or whole-file intermediates)."""
    v = variants["tif-large-single"]
    level_bytes = v.dims[0] * v.dims[1] * 3
    with open_slide(v.path) as s:
        tracemalloc.start()
        try:
            th = s.get_thumbnail(512)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert max(th.shape[:2]) == 512
    assert peak < 2.5 * level_bytes, f"thumbnail peak {peak / 2**20:.0f} MiB for a {level_bytes / 2**20:.0f} MiB level"


def test_auto_skips_a_backend_that_opens_but_cannot_decode(variants):
    """Planar RGB: tifffile refuses the layout, cuCIM opens it but lacks the decoder, auto ends on one that
    decodes; naming the backend that cannot decode gives a typed error naming the file."""
    v = variants["tif-planar-separate"]
    with open_slide(v.path) as s:
        assert _box_diff(s.read_region((0, 0), 0, v.dims), truth_rgb(v, 0)) == 0
    for backend in available_backends():
        if backend == s.backend:
            continue
        with pytest.raises((UnsupportedFormatError, SlideOpenError), match=v.path.name):
            open_slide(v.path, backend=backend)


class _Broken:
    """A reader that opens anything and fails on its first read, the way a missing codec does."""

    backend_name = "broken"

    def __init__(self, path, error):
        self.path, self.error = path, error
        self.metadata = ReaderMetadata(((64, 64),), (1.0,), None, None, None, {}, ())
        self.closed = False

    def read_level(self, *args):
        raise self.error

    def read_associated(self, name):
        raise KeyError(name)

    def close(self):
        self.closed = True


def _broken_backend(error):
    class BrokenBackend:
        name = "broken"
        extensions = {".tif": 10_000, ".svs": 10_000}
        default_priority = 0
        opened: list = []

        @classmethod
        def available(cls):
            return True

        @classmethod
        def can_read(cls, path):
            return True

        @classmethod
        def open(cls, path):
            cls.opened.append(_Broken(path, error))
            return cls.opened[-1]

    return BrokenBackend


@pytest.mark.parametrize("error,skipped", [(RuntimeError("codec 50001 not available"), True),
                                           (UnsupportedFormatError("no such codec"), True),
                                           (SlideReadError("tile 0 is corrupt"), False)])
def test_auto_probe_policy(variants, error, skipped):
    """A first backend whose probe read fails for lack of a codec (or with an untyped error) is skipped and
    closed; one that fails on the data (a corrupt tile) is kept, so reads raise typed errors."""
    cls = _broken_backend(error)
    register_backend("broken", lambda: cls)
    try:
        v = variants["tif-zstd"]
        s = open_slide(v.path)
        assert cls.opened, "the broken backend was not tried first"
        if skipped:
            assert s.backend != "broken" and cls.opened[0].closed
            assert _box_diff(s.read_region((0, 0), 0, (64, 64)), truth_rgb(v, 0)[:64, :64]) == 0
        else:
            assert s.backend == "broken"
            with pytest.raises(SlideReadError):
                s.read_region((0, 0), 0, (8, 8))
        s.close()
        if skipped:
            with pytest.raises(UnsupportedFormatError, match=v.path.name):
                open_slide(v.path, backend="broken")
    finally:
        _REGISTRY.pop("broken", None)
        _LOADED.pop("broken", None)


def test_unsupported_everywhere_gives_a_typed_error_naming_the_file(tmp_path):
    """Stripped planar RGB: tifffile's reader refuses the layout, OpenSlide needs tiles, cuCIM lacks it."""
    import tifffile

    img, _ = he_image(600, 400)
    p = tmp_path / "planar-strips.tif"
    tifffile.imwrite(p, np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="rgb", planarconfig="separate",
                     compression="zlib", rowsperstrip=32, metadata=None)
    try:
        s = open_slide(p)
    except (UnsupportedFormatError, SlideOpenError) as exc:
        assert p.name in str(exc)
    else:  # a backend learned to read it: then it must read it right
        with s:
            assert _box_diff(s.read_region((0, 0), 0, (600, 400)), img) == 0


@pytest.mark.parametrize("backend", ["tifffile", "openslide", "cucim"])
def test_every_backend_reads_right_or_refuses_with_a_typed_error(variants, backend):
    """Forcing a backend on each variant: it either refuses with a typed error naming the file, or returns
    the written pixels; its µm/px, when it reports one, is the true one (never invented)."""
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    opened = 0
    for v in variants.values():
        try:
            s = open_slide(v.path, backend=backend)
        except (UnsupportedFormatError, SlideOpenError) as exc:
            assert v.path.name in str(exc), (backend, v.name)
            continue
        opened += 1
        with s:
            assert s.dimensions == v.dims, (backend, v.name)
            if s.mpp is not None:
                assert v.mpp is not None and s.mpp == pytest.approx(v.mpp, rel=1e-3), (backend, v.name, s.mpp)
            want = truth_rgb(v, 0)
            W, H = v.dims
            x, y, w, h = W // 4, H // 4, min(768, W // 2), min(768, H // 2)
            got = s.read_region((x, y), 0, (w, h))
            if want is not None:
                assert _box_diff(got, want[y:y + h, x:x + w]) <= v.tol + 0.6, (backend, v.name)
    assert opened > len(variants) // 3, f"{backend} opened only {opened} of {len(variants)} variants"
