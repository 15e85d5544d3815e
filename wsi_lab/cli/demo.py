"""``wsi-lab demo``: the main demo job on the default slides."""

from __future__ import annotations

import argparse

from wsi_lab.cli._base import Subparsers, print_warning

ORDER = 90


def _cmd_demo(args: argparse.Namespace) -> int:
    from wsi_lab.cli.slides import summarise_slides
    from wsi_lab.demo import demo_slides_dir, run_demo
    from wsi_lab.runs.progress import TextProgressBar
    from wsi_lab.slide import find_slides

    root = args.slides or demo_slides_dir()
    infos = find_slides(root)
    print(f"{len(infos)} slide(s) in {root}")
    for info in infos:
        if info.error:
            print_warning(f"{info.path}: {info.error}")
    ok = [i.path for i in infos if i.error is None]
    if ok:
        summarise_slides(ok)
    from wsi_lab.demo_ml import MLSettings

    settings = MLSettings(epochs=args.epochs, classifier=not args.no_classifier, max_tiles_per_slide=args.max_tiles)
    report = run_demo(ok, args.out, tile=not args.no_tiling, workers=args.workers,
                      progress=None if args.no_tiling else TextProgressBar(), train=not args.no_train,
                      settings=settings, say=lambda line: print(line, flush=True))
    print(report.summary())
    return 0 if not report.failed else 1


def register(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="run the main demo job on the default slides")
    p.add_argument("--slides", help="folder of slides (default: $WSI_LAB_SLIDES, shared/data/slides beside the "
                                    "current folder or a parent, ~/.cache/wsi-lab/slides)")
    p.add_argument("--out", default="demo-out", help="output folder (montage, tiles, checkpoints, predictions, overlays, GeoJSON, metrics)")
    p.add_argument("--no-tiling", action="store_true", help="only print metadata and write the montage")
    p.add_argument("--no-train", action="store_true", help="stop after tiling (no VAE, latents, classifier)")
    p.add_argument("--no-classifier", action="store_true", help="train the VAE but not the slide classifier")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each demo model (default 3)")
    p.add_argument("--max-tiles", type=int, default=200, help="tiles per slide the models use (default 200)")
    p.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: one per core)")
    p.set_defaults(func=_cmd_demo)
