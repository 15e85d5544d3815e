"""Stain variants of H&E fields for tissue-detection tests and benchmarks: IHC-like (Ki67) and faint stains.

An H&E field (a real slide read at level 0, or a synthetic field from :func:`synthetic_he_field`) is
separated into haematoxylin, eosin and DAB concentrations by colour deconvolution (Ruifrok & Johnston's
HED matrix, the one scikit-image uses) in optical density relative to the field's own glass colour, then
re-rendered with other strengths, a DAB stain on a subset of nuclei, another counterstain colour and
another glass colour (:data:`VARIANTS`: ``he``, ``ki67``, ``ki67-pale``, ``faint``, ``trichrome``, ``frozen``).

The reference tissue mask is made from the *original* full-strength H&E (a blurred total stain density
above :data:`REFERENCE_OD`, small specks removed, small holes filled), and the re-rendering puts stain
only inside it, so the variant's tissue is known by construction and independent of any detection method.
Real unstained tissue is not invisible (it scatters and absorbs a little): every variant keeps a faint
neutral ``tissue_od`` inside the reference, as on real IHC slides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.io import atomic_path

__all__ = ["VariantSlide", "source_fields", "make_variant_slides", "tile_scores", "reference_on_grid",
           "StainVariant", "VARIANTS", "RGB_FROM_HED", "REFERENCE_OD", "separate_hed", "reference_tissue",
           "render_variant", "synthetic_he_field", "write_variant_slide", "mask_scores", "CMU_DENSE_BOX"]

#: optical-density colour of haematoxylin, eosin and DAB (rows; Ruifrok & Johnston, as in scikit-image)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: blurred total stain OD (sum over channels, relative to glass) above which the original H&E is tissue
REFERENCE_OD = 0.12


@dataclass(frozen=True)
class StainVariant:
    """How to re-render an H&E field: stain strengths (1 = as scanned), the share of nuclei that turn DAB
    brown, the glass colour, a faint neutral density of all tissue, and the pixel noise (σ, 0..255)."""

    name: str
    haematoxylin: float
    eosin: float
    dab_fraction: float = 0.0
    dab_strength: float = 1.0
    glass: tuple[int, int, int] = (242, 242, 242)
    tissue_od: float = 0.03
    noise: float = 2.0
    eosin_od: tuple[float, float, float] | None = None  # another counterstain colour in eosin's place


#: the variants the tests and ``benchmarks/tissue_stains.py`` use
VARIANTS: dict[str, StainVariant] = {
    "he": StainVariant("he", 1.0, 1.0, tissue_od=0.0),
    "ki67": StainVariant("ki67", 0.3, 0.0, dab_fraction=0.3, dab_strength=1.2, glass=(216, 216, 216)),
    "ki67-pale": StainVariant("ki67-pale", 0.2, 0.0, dab_fraction=0.15, glass=(222, 220, 216)),
    "faint": StainVariant("faint", 0.25, 0.25, glass=(238, 238, 236)),
    # a trichrome-like special stain: collagen in aniline blue where H&E has eosin
    "trichrome": StainVariant("trichrome", 0.8, 0.7, glass=(240, 240, 238), eosin_od=(0.80, 0.55, 0.22)),
    # a frozen section: weaker, uneven staining, bluish glass, more noise
    "frozen": StainVariant("frozen", 0.45, 0.3, glass=(230, 233, 238), tissue_od=0.05, noise=4.0),
}


def _glass_colour(rgb: np.ndarray) -> np.ndarray:
    """The field's glass colour: median of the brightest, least saturated 5% of pixels."""
    px = rgb.reshape(-1, 3)[:: max(1, rgb.shape[0] * rgb.shape[1] // 400_000)].astype(np.float64)
    gray = px.mean(axis=1)
    sat = px.max(axis=1) - px.min(axis=1)
    cand = px[(sat < 20) & (gray >= np.quantile(gray, 0.95))]
    return np.median(cand if len(cand) else px[gray >= np.quantile(gray, 0.99)], axis=0)


def separate_hed(rgb: np.ndarray, glass: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float32 haematoxylin, eosin and DAB concentrations (OD units, ≥ 0) of an RGB uint8 field,
    in optical density relative to its glass colour (estimated when ``glass`` is None)."""
    g = _glass_colour(rgb) if glass is None else np.asarray(glass, np.float64)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / np.maximum(g, 1.0).astype(np.float32))
    od = np.maximum(od, 0.0)
    return np.maximum(od @ _HED_FROM_RGB.astype(np.float32), 0.0)


def reference_tissue(hed: np.ndarray, mpp: float) -> np.ndarray:
    """(H, W) bool tissue of the original full-strength field: total stain density blurred over ~4 µm
    above :data:`REFERENCE_OD`, specks under 400 µm² dropped and holes under 1000 µm² filled."""
    from scipy import ndimage

    total = (hed @ RGB_FROM_HED.astype(np.float32)).sum(axis=2)
    m = ndimage.gaussian_filter(total, 2.0 / mpp) > REFERENCE_OD
    lab, _ = ndimage.label(m)
    m = np.bincount(lab.ravel())[lab] * mpp * mpp >= 400
    m &= lab > 0
    lab, _ = ndimage.label(~m)
    sizes = np.bincount(lab.ravel())
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes * mpp * mpp < 1000
    fill[border] = False
    fill[0] = False
    return m | fill[lab]


def render_variant(rgb: np.ndarray, variant: StainVariant, mpp: float, seed: int = 0,
                   hed: np.ndarray | None = None, reference: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Re-render an H&E RGB uint8 field as ``variant``; returns ``(rgb uint8, reference tissue bool)``."""
    from scipy import ndimage

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidParameterError(f"render_variant needs an (H, W, 3) uint8 RGB field, got {rgb.shape} {rgb.dtype}")
    rng = np.random.default_rng(seed)
    hed = separate_hed(rgb) if hed is None else hed
    ref = reference_tissue(hed, mpp) if reference is None else reference
    h, e = hed[..., 0] * ref, hed[..., 1] * ref
    dab = np.zeros_like(h)
    if variant.dab_fraction > 0:
        nuclei = ndimage.gaussian_filter(h, 0.6 / mpp) > np.quantile(h[ref], 0.85) if ref.any() else h > 1e9
        cut = max(2, int(round(10 / mpp)))  # cut nuclear clusters (an epidermis) into ~10 µm pieces
        yy, xx = np.ogrid[: h.shape[0], : h.shape[1]]
        lab, n = ndimage.label(nuclei & (yy % cut != 0) & (xx % cut != 0))
        chosen = np.concatenate([[False], rng.random(n) < variant.dab_fraction])
        pos = chosen[lab]
        dab = np.where(pos, np.clip(h / max(float(np.quantile(h[nuclei], 0.5)), 1e-3), 0, 2) * 0.5, 0.0)
        dab = ndimage.gaussian_filter(dab.astype(np.float32), 0.3 / mpp) * variant.dab_strength
        h = np.where(pos, h * 0.3, h)
    conc = np.stack([h * variant.haematoxylin, e * variant.eosin, dab], axis=2).astype(np.float32)
    vectors = RGB_FROM_HED.copy()
    if variant.eosin_od is not None:
        vectors[1] = np.asarray(variant.eosin_od) / np.linalg.norm(variant.eosin_od)
    od = conc @ vectors.astype(np.float32) + (variant.tissue_od * ref)[..., None].astype(np.float32)
    out = np.asarray(variant.glass, np.float32) * np.power(10.0, -od, dtype=np.float32)
    out += rng.normal(0, variant.noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), ref


def synthetic_he_field(width: int = 1536, height: int = 1280, seed: int = 0) -> np.ndarray:
    """An H&E-like RGB uint8 field (~40% tissue) painted by :func:`wsi_lab.testing.make_slide`'s procedural
    texture: works without the shared slides."""
    import tempfile

    from wsi_lab.slide import open_slide
    from wsi_lab.testing import make_slide

    with tempfile.TemporaryDirectory() as d:
        p = make_slide(Path(d) / "he.svs", width, height, tile=128, mpp=0.5, source="procedural",
                       tissue_fraction=0.45, seed=seed, associated=False)
        with open_slide(p) as s:
            return s.read_region((0, 0), 0, (width, height))


def _shrink2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_variant_slide(path: str | os.PathLike, rgb: np.ndarray, mpp: float, tile: int = 256,
                        quality: int = 90) -> Path:
    """Write an RGB uint8 field as a tiled, pyramidal (2x steps), JPEG, Aperio-like TIFF with µm/px."""
    import tifffile

    path = Path(path)
    h, w = rgb.shape[:2]
    levels = [rgb]
    while max(levels[-1].shape[:2]) > tile and min(levels[-1].shape[:2]) >= 2 * 16:
        levels.append(_shrink2(levels[-1]))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        for k, lev in enumerate(levels):
            lh, lw = lev.shape[:2]
            if k == 1:  # Aperio: the second page is the (stripped) thumbnail
                tw.write(levels[-1], photometric="rgb", metadata=None, description=f"Aperio Image Library "
                         f"v10.0.0\n{w}x{h} -> {levels[-1].shape[1]}x{levels[-1].shape[0]} - ")
            desc = f"Aperio Image Library v10.0.0\n{w}x{h} ({tile}x{tile})"
            desc += (f" -> {lw}x{lh}" if k else "") + f" JPEG/RGB Q={quality}|AppMag = 20|MPP = {mpp:g}"
            tw.write(lev, tile=(tile, tile), compression="jpeg", compressionargs={"level": quality}, photometric="rgb", metadata=None,
                     description=desc)
    return path


def mask_scores(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(precision, recall)`` of tissue area of a predicted bool mask against a reference of the same shape."""
    if predicted.shape != reference.shape:
        raise InvalidParameterError(f"mask_scores: shapes differ {predicted.shape} vs {reference.shape}")
    tp = float(np.logical_and(predicted, reference).sum())
    return tp / max(float(predicted.sum()), 1.0), tp / max(float(reference.sum()), 1.0)


def reference_on_grid(reference: np.ndarray, downsample: float, shape: tuple[int, int]) -> np.ndarray:
    """A level-0 reference mask on a :class:`~wsi_lab.tissue.TissueMask` grid of ``shape``: a cell is tissue
    when at least half of the level-0 pixels it covers are."""
    H, W = reference.shape
    mh, mw = shape
    ys = np.minimum((np.arange(H) / downsample).astype(np.int64), mh - 1)
    xs = np.minimum((np.arange(W) / downsample).astype(np.int64), mw - 1)
    rows = np.zeros((mh, W), np.float64)
    np.add.at(rows, ys, reference.astype(np.float64))
    cells = np.zeros((mh, mw), np.float64)
    np.add.at(cells.T, xs, rows.T)
    ny = np.bincount(ys, minlength=mh).astype(np.float64)
    nx = np.bincount(xs, minlength=mw).astype(np.float64)
    return cells / np.maximum(np.outer(ny, nx), 1) >= 0.5


#: the dense part of CMU-1-Small-Region.svs (x0, y0, x1, y1): ~77% tissue, like a typical biopsy field
CMU_DENSE_BOX = (500, 1270, 1800, 2820)


def source_fields(include_shared: bool = True) -> dict[str, tuple[np.ndarray, float]]:
    """H&E fields to re-render, ``{name: (rgb uint8, µm/px)}``: ``synthetic`` (always) and, when the shared
    slides are there, ``cmu`` (CMU-1-Small-Region.svs, ~39% tissue), ``cmu-dense`` (its dense part, ~77%)
    and ``os1`` (OS-1-detail.ome.tif, all tissue, set on a 200-px glass margin)."""
    from wsi_lab.locations import shared_slides_dir
    from wsi_lab.slide import open_slide

    out: dict[str, tuple[np.ndarray, float]] = {"synthetic": (synthetic_he_field(), 0.5)}
    folder = shared_slides_dir() if include_shared else None
    if folder is not None and (folder / "CMU-1-Small-Region.svs").is_file():
        with open_slide(folder / "CMU-1-Small-Region.svs") as sl:
            rgb = sl.read_region((0, 0), 0, sl.dimensions)
            mpp = float(sl.mpp[0]) if sl.mpp else 0.499
        x0, y0, x1, y1 = CMU_DENSE_BOX
        out["cmu"] = (rgb, mpp)
        out["cmu-dense"] = (np.ascontiguousarray(rgb[y0:y1, x0:x1]), mpp)
    if folder is not None and (folder / "OS-1-detail.ome.tif").is_file():
        with open_slide(folder / "OS-1-detail.ome.tif") as sl:
            rgb = sl.read_region((0, 0), 0, sl.dimensions)
            mpp = float(sl.mpp[0]) if sl.mpp else 0.227
        canvas = np.full((rgb.shape[0] + 400, rgb.shape[1] + 400, 3), 243, np.uint8)
        canvas[200:-200, 200:-200] = rgb
        out["os1"] = (canvas, mpp)
    return out


@dataclass
class VariantSlide:
    """A written variant slide and its level-0 reference tissue mask."""

    field: str
    variant: str
    path: Path
    reference: np.ndarray
    mpp: float


def make_variant_slides(folder: str | os.PathLike, variants: tuple[str, ...] = tuple(VARIANTS),
                        fields: dict[str, tuple[np.ndarray, float]] | None = None, seed: int = 0
                        ) -> list[VariantSlide]:
    """Write every ``variant`` of every H&E field (default :func:`source_fields`) as a slide in ``folder``
    (``<field>_<variant>.svs``) and return them with their reference masks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fname, (rgb, mpp) in (source_fields() if fields is None else fields).items():
        hed = separate_hed(rgb)
        ref = reference_tissue(hed, mpp)
        for vname in variants:
            img, _ = render_variant(rgb, VARIANTS[vname], mpp, seed=seed, hed=hed, reference=ref)
            path = write_variant_slide(folder / f"{fname}_{vname}.svs", img, mpp)
            out.append(VariantSlide(fname, vname, path, ref, mpp))
    return out


def tile_scores(table, reference: np.ndarray, level_downsamples: tuple[float, ...] = (1.0,)) -> tuple[float, float]:
    """``(purity, coverage)`` of a tile table (level-0 ``x``, ``y``; ``read_size`` pixels of ``level``)
    against a level-0 reference: the tissue share of the kept tiles' area and the share of the reference
    tissue inside kept tiles."""
    covered = np.zeros(reference.shape, bool)
    tissue = area = 0.0
    sizes = [int(round(r * level_downsamples[int(lv)])) for r, lv in zip(table["read_size"], table["level"])]
    for x, y, s in zip(table["x"].astype(int), table["y"].astype(int), sizes):
        tissue += float(reference[y:y + s, x:x + s].sum())
        area += float(s * s)
        covered[y:y + s, x:x + s] = True
    return tissue / max(area, 1.0), float((covered & reference).sum()) / max(float(reference.sum()), 1.0)
