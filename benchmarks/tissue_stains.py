"""Tissue detection across stains: precision and recall of tissue area per variant and per method.

Every H&E field (the shared slides and a synthetic one) is re-rendered as IHC-like (Ki67) and faint
variants by ``wsi_lab.testing_stains`` (HED deconvolution and re-rendering; the reference mask comes from
the original full-strength rendering, independently of any method). Measured in the same run: the new
default ``od``, today's ``otsu`` / ``variance`` / ``background`` and a CLAM-style peer (median blur 7 on
HSV saturation, Otsu, closing 4 × 4; CLAM's ``segmentTissue`` on the same low-resolution cells). The
second table tiles the variants with the defaults (``--tile-size 256 --mpp 0.5``, min-tissue 0.5) and
reports the tissue share of the kept tiles (purity) and the share of the tissue they cover, next to an
oracle that tiles with the reference mask itself (the best any mask can do at this tile size).

    python benchmarks/tissue_stains.py [--quick] [--no-shared]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_P, TARGET_R = 0.90, 0.85


def clam_mask(slide, ds: float) -> np.ndarray:
    """CLAM's ``segmentTissue`` (median blur 7 on HSV saturation, Otsu, 4 × 4 closing) on the cell grid."""
    from scipy import ndimage

    from wsi_lab.tissue import cell_features, otsu_threshold

    f = cell_features(slide, ds)
    rgb = f.rgb
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) * 255.0 / np.maximum(mx, 1), 0.0)
    sat = ndimage.median_filter(sat, size=7, mode="nearest")
    m = sat > otsu_threshold(sat)
    return ndimage.binary_closing(np.pad(m, 4, mode="edge"), structure=np.ones((4, 4)))[4:-4, 4:-4]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the ki67 and faint variants")
    ap.add_argument("--no-shared", action="store_true", help="synthetic field only")
    args = ap.parse_args(argv)
    from wsi_lab.errors import NoTissueError
    from wsi_lab.slide import open_slide
    from wsi_lab.testing_stains import (
        VARIANTS,
        make_variant_slides,
        mask_scores,
        reference_on_grid,
        source_fields,
        tile_scores,
    )
    from wsi_lab.tiling import plan_tiles
    from wsi_lab.tissue import DEFAULT_METHOD, METHODS, TissueMask, detect_tissue

    variants = ("ki67", "faint") if args.quick else tuple(VARIANTS)
    methods = [DEFAULT_METHOD, *[m for m in METHODS if m != DEFAULT_METHOD], "clam"]
    with tempfile.TemporaryDirectory() as d:
        slides = make_variant_slides(d, variants, source_fields(include_shared=not args.no_shared))
        print(f"## Tissue area, precision / recall against the rendering's reference (target P ≥ {TARGET_P}, R ≥ {TARGET_R})\n")
        print("| field | variant | " + " | ".join(methods) + " |")
        print("|---|---|" + "---|" * len(methods))
        worst = {m: (1.0, 1.0) for m in methods}
        ms = {m: 0.0 for m in methods}
        tiling = []
        for vs in slides:
            cells = []
            with open_slide(vs.path) as s:
                for m in methods:
                    t0 = time.perf_counter()
                    try:
                        if m == "clam":
                            ds = detect_tissue(s, DEFAULT_METHOD).downsample
                            pred = clam_mask(s, ds)
                        else:
                            mk = detect_tissue(s, m)
                            ds, pred = mk.downsample, mk.mask
                    except NoTissueError:
                        cells.append("none found")
                        worst[m] = (0.0, 0.0)
                        continue
                    ms[m] += (time.perf_counter() - t0) * 1000
                    p, r = mask_scores(pred, reference_on_grid(vs.reference, ds, pred.shape))
                    worst[m] = (min(worst[m][0], p), min(worst[m][1], r))
                    ok = "" if (p >= TARGET_P and r >= TARGET_R) else " ✗"
                    cells.append(f"{p:.3f} / {r:.3f}{ok}")
                if vs.variant in ("ki67", "faint"):
                    lds = tuple(float(x) for x in s.level_downsamples)
                    table = plan_tiles(s, 256, mpp=0.5, mask=DEFAULT_METHOD, min_tissue=0.5)
                    oracle = plan_tiles(s, 256, mpp=0.5, mask=TissueMask(vs.reference, 1.0), min_tissue=0.5)
                    tiling.append((vs, len(table), tile_scores(table, vs.reference, lds), len(oracle),
                                   tile_scores(oracle, vs.reference, lds)))
            print(f"| {vs.field} | {vs.variant} | " + " | ".join(cells) + " |")
        print("| **worst** | | " + " | ".join(f"**{p:.3f} / {r:.3f}**" for p, r in worst.values()) + " |")
        print("| mean ms / slide | | " + " | ".join(f"{ms[m] / len(slides):.0f}" for m in methods) + " |")
        print(f"\n## Tiling with the defaults (tile 256, 0.5 µm/px, min-tissue 0.5, method {DEFAULT_METHOD}): "
              "purity ≥ 0.90 and coverage ≥ 0.85\n")
        print("| field | variant | tiles | purity | coverage | oracle tiles | oracle purity | oracle coverage |")
        print("|---|---|---|---|---|---|---|---|")
        for vs, n, (pu, co), no, (opu, oco) in tiling:
            print(f"| {vs.field} | {vs.variant} | {n} | {pu:.3f} | {co:.3f} | {no} | {opu:.3f} | {oco:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
