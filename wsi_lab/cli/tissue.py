"""``wsi-lab tissue``: detect tissue and write the mask."""

from __future__ import annotations

import argparse

from wsi_lab.cli._base import Subparsers
from wsi_lab.tissue import METHODS, threshold_params

ORDER = 20


def _cmd_tissue(args: argparse.Namespace) -> int:
    from wsi_lab.slide import open_slide
    from wsi_lab.tissue import detect_tissue

    with open_slide(args.path, mpp=args.slide_mpp) as s:
        params = {k: v for k, v in {"modality": args.modality, "max_background": args.max_background}.items()
                  if v is not None}
        params.update(threshold_params(args.method, args.threshold))
        mask = detect_tissue(s, args.method, downsample=args.downsample, **params)
    mask.save(args.output)
    if args.overlay:
        from wsi_lab.io import save_image

        save_image(mask.to_rgba(), args.overlay)
    print(f"{args.output}: {mask.fraction:.1%} tissue ({args.method}, {mask.params.get('modality')}, "
          f"mask {mask.shape[1]}x{mask.shape[0]} at downsample {mask.downsample:.4g})")
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("tissue", help="detect tissue and write the mask as a PNG")
    p.add_argument("path", metavar="SLIDE")
    p.add_argument("-o", "--output", required=True, help="mask PNG (metadata in a text chunk)")
    p.add_argument("--method", default="otsu", choices=list(METHODS))
    p.add_argument("--threshold", type=float,
                   help="otsu/variance cut, or the near-white/black intensity for background")
    p.add_argument("--max-background", type=float,
                   help="background: largest background fraction kept (default 0.5)")
    p.add_argument("--modality", choices=["auto", "brightfield", "fluorescence"], default=None)
    p.add_argument("--downsample", type=float, help="level-0 pixels per mask pixel (default: ~8 µm/px)")
    p.add_argument("--overlay", help="also write an RGBA overlay image (.png)")
    p.add_argument("--slide-mpp", type=float, help="µm/px of the slide when its metadata has none")
    p.set_defaults(func=_cmd_tissue)
