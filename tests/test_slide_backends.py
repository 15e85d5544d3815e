"""Every slide (the real ones in ../shared and a synthetic pyramid) through every backend that opens it:
metadata, pixels agreeing across backends, white padding, µm/px reads, thumbnails, levels, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tests.conftest import CMU, NDPI, OME, SLIDE_FILES
from wsi_lab import open_slide
from wsi_lab.errors import InvalidParameterError, MissingMPPError, SlideOpenError, UnsupportedFormatError
from wsi_lab.slide import available_backends
from wsi_lab.testing import make_slide, plain_tiff

BACKENDS = ["tifffile", "openslide", "cucim"]
SYN = "synthetic.svs"
#: what each slide's metadata must say, whichever backend reads it
EXPECTED = {
    CMU.name: dict(size=(2220, 2967), mpp=0.499, mag=20.0, assoc={"thumbnail", "label", "macro"},
                   opens={"tifffile", "openslide", "cucim"}, at=(1100, 1500)),
    NDPI.name: dict(size=(3968, 4864), mpp=0.22818, mag=40.0, assoc={"macro"}, opens={"tifffile", "openslide"},
                    at=(1984, 2432)),
    OME.name: dict(size=(1101, 1101), mpp=0.2271, mag=None, assoc=set(), opens={"tifffile"}, at=(400, 400)),
    SYN: dict(size=(3000, 2000), mpp=0.25, mag=20.0, assoc={"thumbnail", "label", "macro"},
              opens={"tifffile", "openslide", "cucim"}, at=None),
}
NAMES = [p.name for p in SLIDE_FILES if p.name in EXPECTED] + [SYN]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("syn") / SYN, 3000, 2000, seed=2, tissue_fraction=0.6)


@pytest.fixture(params=NAMES)
def any_slide(request, synthetic):
    return synthetic if request.param == SYN else next(p for p in SLIDE_FILES if p.name == request.param)


def _open(path, backend):
    """Open with ``backend``; skip when it is not installed; return None when it can't read the format."""
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    try:
        return open_slide(path, backend=backend)
    except (UnsupportedFormatError, SlideOpenError) as exc:
        assert str(path) in str(exc)
        return None


def _tissue_location(slide) -> tuple[int, int]:
    """Level-0 (x, y) of a 256x256 box with the most tissue (from a thumbnail)."""
    thumb = slide.get_thumbnail(64).mean(axis=2)
    iy, ix = np.unravel_index(np.argmin(thumb), thumb.shape)
    W, H = slide.dimensions
    return (min(int(ix * W / thumb.shape[1]), W - 256), min(int(iy * H / thumb.shape[0]), H - 256))


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Same pixels up to JPEG decoder differences (IDCT / chroma upsampling)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.mean() < 2.0 and (d > 24).mean() < 0.01, (d.mean(), d.max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata(any_slide, backend, record_property):
    exp = EXPECTED[any_slide.name]
    s = _open(any_slide, backend)
    if s is None:  # this backend can't read the format: auto must still open it through another
        assert backend not in exp["opens"], f"{backend} should open {any_slide.name}"
        with open_slide(any_slide) as auto:
            record_property("auto_backend", auto.backend)
            assert auto.backend != backend and auto.backend in exp["opens"]
        return
    with s:
        assert backend in exp["opens"]
        assert s.backend == backend
        assert s.dimensions == exp["size"] == s.level_dimensions[0]
        assert s.level_downsamples[0] == 1.0
        assert all(a < b for a, b in zip(s.level_downsamples, s.level_downsamples[1:]))
        for (w, _h), ds in zip(s.level_dimensions, s.level_downsamples):
            assert abs(exp["size"][0] / w - ds) / ds < 0.02
        assert s.mpp is not None and s.mpp == pytest.approx((exp["mpp"], exp["mpp"]), rel=1e-3)
        if exp["mag"] is None:
            assert s.magnification is None
        else:
            assert s.magnification == exp["mag"]
        assert exp["assoc"] <= set(s.associated_images)
        for name in exp["assoc"]:
            img = s.associated_images[name]
            assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.size > 0
        assert s.slide_id == any_slide.name.split(".")[0]
        assert any_slide.name in repr(s)


def test_synthetic_levels_agree_across_backends(synthetic):
    dims = {b: open_slide(synthetic, backend=b).level_dimensions for b in BACKENDS if b in available_backends()}
    assert len(set(dims.values())) == 1 and len(dims[BACKENDS[0]]) == 3


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_pixels_agree_with_tifffile(any_slide, backend):
    other = _open(any_slide, backend)
    if other is None:
        pytest.skip(f"{backend} does not read {any_slide.name} (checked in test_metadata)")
    with open_slide(any_slide, backend="tifffile") as ref, other:
        at = EXPECTED[any_slide.name]["at"] or _tissue_location(ref)
        a = ref.read_region(at, 0, (256, 256))
        assert a.std() > 3  # not a blank box
        _close(a, other.read_region(at, 0, (256, 256)))
        # odd offsets and sizes, and the lower levels both backends have
        _close(ref.read_region((at[0] + 7, at[1] + 13), 0, (301, 77)),
               other.read_region((at[0] + 7, at[1] + 13), 0, (301, 77)))
        for level in range(1, min(ref.level_count, other.level_count)):
            ds = ref.level_downsamples[level]
            if abs(ds - round(ds)) > 1e-6:
                continue  # a non-integer downsample is rounded differently by each reader
            loc = (int(at[0] // ds * ds), int(at[1] // ds * ds))
            _close(ref.read_region(loc, level, (128, 96)), other.read_region(loc, level, (128, 96)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_padding_is_white(any_slide, backend):
    s = _open(any_slide, backend)
    if s is None:
        pytest.skip(f"{backend} does not read {any_slide.name}")
    with s:
        W, H = s.dimensions
        out = s.read_region((W - 100, H - 50), 0, (256, 256))
        assert out.shape == (256, 256, 3)
        assert (out[50:] == 255).all() and (out[:, 100:] == 255).all()
        assert (s.read_region((W + 10, H + 10), 0, (64, 32)) == 255).all()
        left = s.read_region((-30, -20), 0, (64, 64))
        assert (left[:20] == 255).all() and (left[:, :30] == 255).all()
        inner = s.read_region((0, 0), 0, (34, 44))
        np.testing.assert_array_equal(left[20:, 30:], inner)
        last = s.level_count - 1
        lw, lh = s.level_dimensions[last]
        out = s.read_region((0, 0), last, (lw + 20, lh + 10))
        assert (out[lh:] == 255).all() and (out[:, lw:] == 255).all()


def test_read_at_mpp_and_level_for_mpp(synthetic):
    with open_slide(synthetic) as s:
        assert s.level_for_mpp(0.25) == (0, pytest.approx(1.0))
        assert s.level_for_mpp(1.0) == (1, pytest.approx(1.0))
        assert s.level_for_mpp(0.5) == (0, pytest.approx(2.0))
        assert s.level_for_mpp(0.1) == (0, pytest.approx(0.4))
        loc = _tissue_location(s)
        np.testing.assert_array_equal(s.read_at_mpp(loc, (128, 96), 1.0), s.read_region(loc, 1, (128, 96)))
        half = s.read_at_mpp(loc, (128, 128), 0.5)
        full = s.read_region(loc, 0, (256, 256)).astype(float)
        assert half.shape == (128, 128, 3)
        assert np.abs(full.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3)) - half).mean() < 1.0
        assert s.read_at_mpp(loc, (64, 64), 0.1).shape == (64, 64, 3)  # upsampling
        for bad in (0, -1, float("nan"), float("inf"), "1"):
            with pytest.raises(InvalidParameterError):
                s.read_at_mpp(loc, (8, 8), bad)
        with pytest.raises(InvalidParameterError):
            s.read_at_mpp(loc, (0, 8), 1.0)


def test_read_at_mpp_on_real_slide(cmu_path):
    with open_slide(cmu_path) as s:
        arr = s.read_at_mpp((1000, 1000), (200, 100), 2 * 0.499)
        assert arr.shape == (100, 200, 3)
        full = s.read_region((1000, 1000), 0, (400, 200)).astype(float)
        assert np.abs(full.reshape(100, 2, 200, 2, 3).mean(axis=(1, 3)) - arr).mean() < 1.5


def test_no_mpp_is_never_invented(tmp_path):
    p = make_slide(tmp_path / "nompp.svs", 1500, 1000, mpp=None, magnification=None)
    dpi = plain_tiff(tmp_path / "dpi72.tif")  # 72 dpi would read as 352.8 µm/px
    for backend in available_backends():
        for path in (p, dpi):
            with open_slide(path, backend=backend) as s:
                assert s.mpp is None, (backend, path.name)
                assert s.magnification is None
                with pytest.raises(MissingMPPError, match=path.name):
                    s.require_mpp()
                with pytest.raises(MissingMPPError):
                    s.read_at_mpp((0, 0), (8, 8), 1.0)
    cm = plain_tiff(tmp_path / "cm.tif", resolution=(40000.0, 40000.0), unit="CENTIMETER")
    inch = plain_tiff(tmp_path / "inch.tif", resolution=(101600.0, 101600.0), unit="INCH")
    for backend in available_backends():
        for path in (cm, inch):  # a plausible TIFF resolution is used, by every backend
            with open_slide(path, backend=backend) as s:
                assert s.mpp == pytest.approx((0.25, 0.25)), (backend, path.name)


def test_mpp_override(tmp_path, cmu_path):
    p = make_slide(tmp_path / "nompp.svs", 1500, 1000, mpp=None)
    for backend in available_backends():
        with open_slide(p, backend=backend, mpp=0.5) as s:
            assert s.mpp == (0.5, 0.5) and s.mpp_from_metadata is None
            assert s.level_for_mpp(2.0) == (1, pytest.approx(1.0))
    with open_slide(cmu_path, mpp=(0.25, 0.26)) as s:
        assert s.mpp == (0.25, 0.26) and s.mpp_from_metadata == pytest.approx((0.499, 0.499))
    for bad in (0, -1, 72 * 1000, (0.25, 0), (0.25, float("nan")), (0.25,)):
        with pytest.raises(InvalidParameterError, match="mpp"):
            open_slide(cmu_path, mpp=bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_thumbnail(any_slide, backend):
    s = _open(any_slide, backend)
    if s is None:
        pytest.skip(f"{backend} does not read {any_slide.name}")
    with s, open_slide(any_slide, backend="tifffile") as ref:
        W, H = s.dimensions
        t = s.get_thumbnail(256)
        assert max(t.shape[:2]) == 256 and t.dtype == np.uint8
        assert abs(t.shape[1] / t.shape[0] - W / H) < 0.02
        assert s.get_thumbnail((300, 100)).shape[0] == 100
        # backends may shrink from different levels (OpenSlide has 7 NDPI levels, tifffile 4)
        assert np.abs(t.astype(float) - ref.get_thumbnail(256)).mean() < 5.0
        with pytest.raises(InvalidParameterError):
            s.get_thumbnail(0)


def test_best_level_for_downsample(synthetic):
    with open_slide(synthetic) as s:
        assert s.level_downsamples[:2] == (1.0, 4.0)
        assert s.get_best_level_for_downsample(1) == 0
        assert s.get_best_level_for_downsample(3.9) == 0
        assert s.get_best_level_for_downsample(4) == 1
        assert s.get_best_level_for_downsample(15) == 1
        assert s.get_best_level_for_downsample(17) == 2
        assert s.get_best_level_for_downsample(1e6) == s.level_count - 1
        assert s.get_best_level_for_downsample(0.5) == 0
        for bad in (0, -2, float("nan")):
            with pytest.raises(InvalidParameterError):
                s.get_best_level_for_downsample(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_reopens_same_backend_and_override(any_slide, backend):
    s = _open(any_slide, backend)
    if s is None:
        pytest.skip(f"{backend} does not read {any_slide.name}")
    s.close()
    with open_slide(any_slide, backend=backend, mpp=0.3) as s:
        t = pickle.loads(pickle.dumps(s))
        with t:
            assert t.backend == backend and t.mpp == (0.3, 0.3) and t.path == s.path
            np.testing.assert_array_equal(t.read_region((64, 64), 0, (96, 80)), s.read_region((64, 64), 0, (96, 80)))


def _read_in_worker(slide, loc):
    import os

    return os.getpid(), slide.backend, slide.mpp, slide.read_region(loc, 0, (128, 128))


@pytest.mark.slow
def test_slide_read_in_dask_worker_process(synthetic, cmu_path):
    import os

    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for path in (cmu_path, synthetic):
            for backend in available_backends():
                s = open_slide(path, backend=backend, mpp=0.4)
                pid, name, mpp, arr = client.submit(_read_in_worker, s, (500, 400), pure=False).result(timeout=60)
                assert pid != os.getpid() and name == backend and mpp == (0.4, 0.4)
                np.testing.assert_array_equal(arr, s.read_region((500, 400), 0, (128, 128)))
                s.close()
