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
    report = run_demo(ok, args.out, tile=not args.no_tiling, workers=args.workers,
                      progress=None if args.no_tiling else TextProgressBar())
    print(report.summary())
    return 0 if not report.failed else 1


def register(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="run the main demo job on the default slides")
    p.add_argument("--slides", help="folder of slides (default: $WSI_LAB_SLIDES, shared/data/slides beside the "
                                    "current folder or a parent, ~/.cache/wsi-lab/slides)")
    p.add_argument("--out", default="demo-out", help="output folder (montage, tile tables, overlays)")
    p.add_argument("--no-tiling", action="store_true", help="only print metadata and write the montage")
    p.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: one per core)")
    p.set_defaults(func=_cmd_demo)
