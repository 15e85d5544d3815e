"""The ``wsi-lab`` command.

Each subcommand is registered by a ``_add_<name>(subparsers)`` function below and runs a core
function. Errors from :mod:`wsi_lab.errors` print as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from wsi_lab.errors import WSILabError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------------------------
# info / thumbnail / doctor (slides)
# ----------------------------------------------------------------------------------------------
INFO_KEYS = ("path", "vendor", "backend", "width", "height", "level_count", "level_dimensions",
             "level_downsamples", "mpp_x", "mpp_y", "magnification", "associated_images")


def slide_summary(path: str, backend: str = "auto") -> dict:
    """The ``wsi-lab info --json`` record of one slide (exactly :data:`INFO_KEYS`)."""
    from wsi_lab.slide import open_slide

    with open_slide(path, backend=backend) as s:
        mpp = s.mpp or (None, None)
        return {
            "path": str(s.path), "vendor": s.vendor, "backend": s.backend,
            "width": s.dimensions[0], "height": s.dimensions[1], "level_count": s.level_count,
            "level_dimensions": [list(d) for d in s.level_dimensions],
            "level_downsamples": list(s.level_downsamples),
            "mpp_x": mpp[0], "mpp_y": mpp[1], "magnification": s.magnification,
            "associated_images": sorted(s.associated_images),
        }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cmd_info(args: argparse.Namespace) -> int:
    records, failed = [], 0
    for path in args.paths:
        try:
            records.append(slide_summary(path, args.backend))
        except WSILabError as exc:
            if len(args.paths) == 1:
                raise
            print(f"wsi-lab: error: {exc}", file=sys.stderr)
            failed += 1
    if args.json:
        print(json.dumps(records if len(args.paths) > 1 else (records[0] if records else None), indent=2))
    else:
        cols = ["file", "vendor", "backend", "dimensions", "levels", "µm/px", "mag", "associated"]
        rows = [[r["path"].rsplit("/", 1)[-1], _fmt(r["vendor"]), r["backend"], f"{r['width']}x{r['height']}",
                 str(r["level_count"]),
                 "-" if r["mpp_x"] is None else (f"{r['mpp_x']:.4f}" if abs(r["mpp_x"] - r["mpp_y"]) < 1e-4
                                                 else f"{r['mpp_x']:.4f}x{r['mpp_y']:.4f}"),
                 _fmt(r["magnification"]), ",".join(r["associated_images"]) or "-"] for r in records]
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 2 if failed else 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print slide metadata as a table or JSON")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON with fixed keys")
    p.add_argument("--backend", default="auto", help="auto (default), tifffile, openslide or cucim")
    p.set_defaults(func=_cmd_info)


def _cmd_thumbnail(args: argparse.Namespace) -> int:
    from wsi_lab.io import save_image
    from wsi_lab.slide import open_slide

    with open_slide(args.path, backend=args.backend) as s:
        save_image(s.get_thumbnail(args.max_size), args.output)
    print(args.output)
    return 0


def _add_thumbnail(sub) -> None:
    p = sub.add_parser("thumbnail", help="write a thumbnail of a slide")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--max-size", type=int, default=1024, help="longest side in pixels (default 1024)")
    p.add_argument("--backend", default="auto")
    p.set_defaults(func=_cmd_thumbnail)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from wsi_lab.doctor import check_environment, format_report

    checks = check_environment(deep=args.deep)
    print(json.dumps([c.as_dict() for c in checks], indent=2) if args.json else format_report(checks))
    return 0


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="list which backends and extras are installed, with install hints")
    p.add_argument("--json", action="store_true")
    p.add_argument("--deep", action="store_true", help="also import heavy frameworks (TensorFlow, napari, ...)")
    p.set_defaults(func=_cmd_doctor)


def _cmd_demo(args: argparse.Namespace) -> int:
    from wsi_lab.demo import demo_slides_dir, thumbnail_montage
    from wsi_lab.slide import find_slides

    root = args.slides or demo_slides_dir()
    infos = find_slides(root)
    print(f"{len(infos)} slide(s) in {root}")
    ok = [i.path for i in infos if i.error is None]
    for info in infos:
        if info.error:
            print(f"wsi-lab: warning: {info.error}", file=sys.stderr)
    if ok:
        _cmd_info(argparse.Namespace(paths=ok, json=False, backend="auto"))
        out = thumbnail_montage(ok, args.montage)
        print(f"thumbnail montage: {out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the main demo job on the default slides")
    p.add_argument("--slides", help="folder of slides (default: $WSI_LAB_SLIDES, ../shared/data/slides, ~/.cache/wsi-lab/slides)")
    p.add_argument("--montage", default="demo-out/montage.png", help="where to write the thumbnail montage")
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------------------------
# Subcommands registered by other parts of the package add an _add_<name> function here and list
# it in REGISTRARS. Keep each handler a thin call into the core.
# ----------------------------------------------------------------------------------------------

REGISTRARS: list[Callable] = [_add_info, _add_thumbnail, _add_doctor, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    from wsi_lab import __version__

    parser = argparse.ArgumentParser(prog="wsi-lab", description="WSI Lab: whole-slide images from the command line.")
    parser.add_argument("--version", action="version", version=f"wsi-lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsi-lab``; returns the exit code (2 on a WSI Lab error, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except WSILabError as exc:
        print(f"wsi-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsi-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
