"""``wsi-lab tile``: plan (and optionally extract) tissue tiles of slides on Dask."""

from __future__ import annotations

import argparse
import logging

from wsi_lab.cli._base import Subparsers
from wsi_lab.tissue import DEFAULT_METHOD, METHODS, threshold_params

ORDER = 30


def _cmd_tile(args: argparse.Namespace) -> int:
    from wsi_lab.runs.progress import TextProgressBar
    from wsi_lab.tiling import TilingParams, TwoStage, run_tiling

    if args.params:
        with open(args.params) as f:
            params = TilingParams.from_json(f.read())
    else:
        method = None if args.method == "none" else args.method
        two = None
        if args.two_stage:
            two = TwoStage.parse(args.two_stage, fine_method=args.fine_method, fine_threshold=args.fine_threshold,
                                 coarse_source=args.coarse_source)
            args.tile_size = two.coarse
        params = TilingParams(
            tile_size=args.tile_size, mpp=args.mpp, level=args.level, overlap=args.overlap, method=method,
            method_params=threshold_params(method, args.threshold), min_tissue=args.min_tissue, two_stage=two,
            jpeg_quality=args.jpeg_quality, slide_mpp=args.slide_mpp).validate()
    if args.sagemaker:
        from wsi_lab.cli.cloud import tile_on_sagemaker

        return tile_on_sagemaker(args, params)
    if not args.verbose:  # Dask logs cluster start/stop at INFO on its own handlers
        logging.getLogger("distributed").setLevel(logging.WARNING)
    result = run_tiling(args.slides, params, client=args.scheduler, out=args.out, materialize=args.materialize,
                        progress=None if args.quiet else TextProgressBar(), n_workers=args.workers, force=args.force)
    print(result.summary())
    return 0 if result.ok else 1


def register(sub: Subparsers) -> None:
    p = sub.add_parser("tile", help="plan (and optionally extract) tissue tiles of slides on Dask")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders")
    p.add_argument("--out", required=True, help="output folder: <out>/<slide_id>/tiles.parquet (+ tiles/)")
    p.add_argument("--tile-size", type=int, default=256, help="output tile side in pixels (default 256)")
    p.add_argument("--mpp", type=float, help="output µm/px (default: the slide's level 0)")
    p.add_argument("--level", type=int, help="read this level instead of choosing by µm/px")
    p.add_argument("--overlap", type=int, default=0, help="overlap between tiles in output pixels")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=[*METHODS, "none"])
    p.add_argument("--threshold", type=float, help="tissue method threshold (see `wsi-lab tissue`)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="keep tiles with at least this tissue fraction")
    p.add_argument("--two-stage", metavar="COARSE:FINE", help="two-stage filter at full resolution, e.g. 256:64")
    p.add_argument("--coarse-source", default="mask", choices=["mask", "pixels"])
    p.add_argument("--fine-method", default="variance",
                   help="fine-pass statistic: variance (default), background, saturation or brightness")
    p.add_argument("--fine-threshold", type=float)
    p.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--materialize", choices=["jpeg", "tfrecord"], help="also write the tiles")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--slide-mpp", type=float, help="µm/px for slides whose metadata has none")
    p.add_argument("--params", help="TilingParams JSON file (overrides the tiling options above)")
    p.add_argument("--force", action="store_true", help="redo slides whose outputs are already complete")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from wsi_lab.cli.cloud import add_sagemaker_options

    add_sagemaker_options(p)
    p.set_defaults(func=_cmd_tile)
