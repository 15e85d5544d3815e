"""Slide commands: ``info``, ``thumbnail``, ``doctor``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from wsi_lab.cli._base import Subparsers, print_error
from wsi_lab.errors import WSILabError

ORDER = 10

INFO_KEYS = ("path", "vendor", "backend", "width", "height", "level_count", "level_dimensions",
             "level_downsamples", "mpp_x", "mpp_y", "magnification", "associated_images")


def slide_summary(path: str, backend: str = "auto") -> dict[str, Any]:
    """The ``wsi-lab info --json`` record of one slide: the fields :data:`INFO_KEYS` of the one summary
    record, :class:`wsi_lab.slide.SlideInfo`. Raises the slide's typed error when it cannot be read."""
    from wsi_lab.slide import SlideInfo, open_slide

    with open_slide(path, backend=backend) as s:
        record = SlideInfo.of_slide(s).as_dict()
    record["path"] = str(s.path)
    return {key: record[key] for key in INFO_KEYS}


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_mpp(r: dict[str, Any]) -> str:
    if r["mpp_x"] is None:
        return "-"
    if abs(r["mpp_x"] - r["mpp_y"]) < 1e-4:
        return f"{r['mpp_x']:.4f}"
    return f"{r['mpp_x']:.4f}x{r['mpp_y']:.4f}"


def print_slide_table(records: list[dict[str, Any]]) -> None:
    """Print :func:`slide_summary` records as an aligned text table."""
    cols = ["file", "vendor", "backend", "dimensions", "levels", "µm/px", "mag", "associated"]
    rows = [[r["path"].rsplit("/", 1)[-1], _fmt(r["vendor"]), r["backend"], f"{r['width']}x{r['height']}",
             str(r["level_count"]), _fmt_mpp(r), _fmt(r["magnification"]), ",".join(r["associated_images"]) or "-"]
            for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def summarise_slides(paths: list[str], backend: str = "auto", as_json: bool = False) -> int:
    """Print the summaries of ``paths`` (table or JSON); with several paths an unreadable slide prints one
    error line and the exit code is 2; a single unreadable slide raises."""
    records, failed = [], 0
    for path in paths:
        try:
            records.append(slide_summary(path, backend))
        except WSILabError as exc:
            if len(paths) == 1:
                raise
            print_error(exc)
            failed += 1
    if as_json:
        print(json.dumps(records if len(paths) > 1 else (records[0] if records else None), indent=2))
    else:
        print_slide_table(records)
    return 2 if failed else 0


def _cmd_info(args: argparse.Namespace) -> int:
    return summarise_slides(args.paths, args.backend, args.json)


def _cmd_thumbnail(args: argparse.Namespace) -> int:
    from wsi_lab.io import save_image
    from wsi_lab.slide import open_slide

    with open_slide(args.path, backend=args.backend) as s:
        save_image(s.get_thumbnail(args.max_size), args.output)
    print(args.output)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from wsi_lab.doctor import check_environment, format_report

    checks = check_environment(deep=args.deep)
    print(json.dumps([c.as_dict() for c in checks], indent=2) if args.json else format_report(checks))
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("info", help="print slide metadata as a table or JSON")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON with fixed keys")
    p.add_argument("--backend", default="auto", help="auto (default), tifffile, openslide or cucim")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("thumbnail", help="write a thumbnail of a slide")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--max-size", type=int, default=1024, help="longest side in pixels (default 1024)")
    p.add_argument("--backend", default="auto")
    p.set_defaults(func=_cmd_thumbnail)

    p = sub.add_parser("doctor", help="list which backends and extras are installed, with install hints")
    p.add_argument("--json", action="store_true")
    p.add_argument("--deep", action="store_true", help="also import heavy frameworks (TensorFlow, napari, ...)")
    p.set_defaults(func=_cmd_doctor)
