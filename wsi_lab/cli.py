"""The ``wsi-lab`` command.

Each subcommand is registered by a ``_add_<name>(subparsers)`` function below and runs a core
function. Errors from :mod:`wsi_lab.errors` print as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
    from wsi_lab.demo import demo_slides_dir, run_demo
    from wsi_lab.runs.progress import TextProgressBar
    from wsi_lab.slide import find_slides

    root = args.slides or demo_slides_dir()
    infos = find_slides(root)
    print(f"{len(infos)} slide(s) in {root}")
    for info in infos:
        if info.error:
            print(f"wsi-lab: warning: {info.error}", file=sys.stderr)
    ok = [i.path for i in infos if i.error is None]
    if ok:
        _cmd_info(argparse.Namespace(paths=ok, json=False, backend="auto"))
    report = run_demo(ok, args.out, tile=not args.no_tiling, workers=args.workers,
                      progress=None if args.no_tiling else TextProgressBar())
    print(report.summary())
    return 0 if not report.failed else 1


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the main demo job on the default slides")
    p.add_argument("--slides", help="folder of slides (default: $WSI_LAB_SLIDES, ../shared/data/slides, ~/.cache/wsi-lab/slides)")
    p.add_argument("--out", default="demo-out", help="output folder (montage, tile tables, overlays)")
    p.add_argument("--no-tiling", action="store_true", help="only print metadata and write the montage")
    p.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: one per core)")
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------------------------
# tissue / tile (tissue detection and tiling)
# ----------------------------------------------------------------------------------------------
def _tissue_params(method: str | None, threshold: float | None, extra: dict) -> dict:
    params = {k: v for k, v in extra.items() if v is not None}
    if threshold is not None:
        params["background_threshold" if method == "background" else "threshold"] = threshold
    return params


def _cmd_tissue(args: argparse.Namespace) -> int:
    from wsi_lab.slide import open_slide
    from wsi_lab.tissue import detect_tissue

    with open_slide(args.path, mpp=args.slide_mpp) as s:
        params = _tissue_params(args.method, args.threshold, {"modality": args.modality,
                                                              "max_background": args.max_background})
        mask = detect_tissue(s, args.method, downsample=args.downsample, **params)
    mask.save(args.output)
    if args.overlay:
        from wsi_lab.io import save_image

        save_image(mask.to_rgba(), args.overlay)
    print(f"{args.output}: {mask.fraction:.1%} tissue ({args.method}, {mask.params.get('modality')}, "
          f"mask {mask.shape[1]}x{mask.shape[0]} at downsample {mask.downsample:.4g})")
    return 0


def _add_tissue(sub) -> None:
    p = sub.add_parser("tissue", help="detect tissue and write the mask as a PNG")
    p.add_argument("path", metavar="SLIDE")
    p.add_argument("-o", "--output", required=True, help="mask PNG (metadata in a text chunk)")
    p.add_argument("--method", default="otsu", choices=["otsu", "variance", "background"])
    p.add_argument("--threshold", type=float, help="otsu/variance cut, or the near-white/black intensity for background")
    p.add_argument("--max-background", type=float, help="background: largest background fraction kept (default 0.5)")
    p.add_argument("--modality", choices=["auto", "brightfield", "fluorescence"], default=None)
    p.add_argument("--downsample", type=float, help="level-0 pixels per mask pixel (default: ~8 µm/px)")
    p.add_argument("--overlay", help="also write an RGBA overlay image (.png)")
    p.add_argument("--slide-mpp", type=float, help="µm/px of the slide when its metadata has none")
    p.set_defaults(func=_cmd_tissue)


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
            method_params=_tissue_params(method, args.threshold, {}), min_tissue=args.min_tissue, two_stage=two,
            jpeg_quality=args.jpeg_quality, slide_mpp=args.slide_mpp).validate()
    if not args.verbose:  # Dask logs cluster start/stop at INFO on its own handlers
        logging.getLogger("distributed").setLevel(logging.WARNING)
    result = run_tiling(args.slides, params, client=args.scheduler, out=args.out, materialize=args.materialize,
                        progress=None if args.quiet else TextProgressBar(), n_workers=args.workers, force=args.force)
    print(result.summary())
    return 0 if result.ok else 1


def _add_tile(sub) -> None:
    p = sub.add_parser("tile", help="plan (and optionally extract) tissue tiles of slides on Dask")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders")
    p.add_argument("--out", required=True, help="output folder: <out>/<slide_id>/tiles.parquet (+ tiles/)")
    p.add_argument("--tile-size", type=int, default=256, help="output tile side in pixels (default 256)")
    p.add_argument("--mpp", type=float, help="output µm/px (default: the slide's level 0)")
    p.add_argument("--level", type=int, help="read this level instead of choosing by µm/px")
    p.add_argument("--overlap", type=int, default=0, help="overlap between tiles in output pixels")
    p.add_argument("--method", default="otsu", choices=["otsu", "variance", "background", "none"])
    p.add_argument("--threshold", type=float, help="tissue method threshold (see `wsi-lab tissue`)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="keep tiles with at least this tissue fraction")
    p.add_argument("--two-stage", metavar="COARSE:FINE", help="two-stage filter at full resolution, e.g. 256:64")
    p.add_argument("--coarse-source", default="mask", choices=["mask", "pixels"])
    p.add_argument("--fine-method", default="variance", choices=["variance", "background", "saturation", "brightness"])
    p.add_argument("--fine-threshold", type=float)
    p.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--materialize", choices=["jpeg", "tfrecord"], help="also write the tiles")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--slide-mpp", type=float, help="µm/px for slides whose metadata has none")
    p.add_argument("--params", help="TilingParams JSON file (overrides the tiling options above)")
    p.add_argument("--force", action="store_true", help="redo slides whose outputs are already complete")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_tile)


# ----------------------------------------------------------------------------------------------
# split / export (labels, patient splits, JPEG and TFRecord exports)
# ----------------------------------------------------------------------------------------------
def _cmd_split(args: argparse.Namespace) -> int:
    from wsi_lab.data.labels import attach_labels
    from wsi_lab.data.splits import split_by_patient, split_summary
    from wsi_lab.data.table import write_table
    from wsi_lab.data.table import load_tables

    table = load_tables(args.tables)
    if args.labels:
        table = attach_labels(table, args.labels, on_missing=args.on_missing)
    stratify = None if args.no_stratify or "label" not in table.columns else "label"
    out = split_by_patient(table, args.fractions, stratify=stratify, seed=args.seed)
    write_table(out, args.output)
    print(split_summary(out).to_string(index=False))
    print(args.output)
    return 0


def _add_split(sub) -> None:
    p = sub.add_parser("split", help="attach slide labels and split a TileTable into train/val/test by patient")
    p.add_argument("tables", nargs="+", metavar="TABLE", help="TileTable .parquet files or tiling output folders")
    p.add_argument("--labels", help="labels CSV: slide_id,label[,patient_id]")
    p.add_argument("--on-missing", default="error", choices=["error", "drop"],
                   help="table slides without a label: fail (default) or drop them")
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test fractions of patients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stratify", action="store_true", help="do not balance labels across splits")
    p.add_argument("-o", "--output", default="split.parquet", help="output TileTable (default split.parquet)")
    p.set_defaults(func=_cmd_split)


def _cmd_export(args: argparse.Namespace) -> int:
    from wsi_lab.data.table import load_tables
    from wsi_lab.runs.progress import TextProgressBar

    table = load_tables(args.tables)
    progress = None if args.quiet else TextProgressBar()
    if args.format == "jpeg":
        from wsi_lab.data.export_jpeg import export_jpeg

        out = export_jpeg(table, args.out, quality=args.quality, workers=args.workers, layout=args.layout,
                          progress=progress, overwrite=args.force, passthrough=not args.reencode)
        info = out.attrs["wsi_lab"]["export_jpeg"]
        print(f"{len(out)} JPEG tiles in {args.out}: {info['written']} written ({info['passed_through']} of them the "
              f"slide's own JPEG tiles, lossless), {info['skipped']} already there")
    else:
        from wsi_lab.data.export_tfrecord import export_tfrecord

        m = export_tfrecord(table, args.out, shards=args.shards, variant=args.variant,
                            per_slide_test=not args.no_per_slide_test, seed=args.seed, quality=args.quality,
                            workers=args.workers, progress=progress, passthrough=not args.reencode)
        print(f"{len(m['files'])} TFRecord file(s) ({m['variant']}) in {args.out}: {m['tiles']} tiles, "
              f"{m['bytes'] / 1e6:.1f} MB, {m['bytes_per_tile'] / 1e3:.1f} kB/tile; per split {m['records_per_split']}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a TileTable's tiles as JPEG files or TFRecord shards")
    p.add_argument("tables", nargs="+", metavar="TABLE", help="TileTable .parquet files or tiling output folders")
    p.add_argument("--format", required=True, choices=["tfrecord", "jpeg"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shards", type=int, default=1, help="TFRecord shards per split: one per data-parallel worker")
    p.add_argument("--variant", default="raw", choices=["raw", "jpeg"], help="TFRecord image encoding (default raw)")
    p.add_argument("--no-per-slide-test", action="store_true", help="shard the test split instead of one file per slide")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--reencode", action="store_true", help="decode and re-encode every tile, also those that are "
                   "exactly one JPEG tile of the slide (by default written as the slide's own bytes, lossless)")
    p.add_argument("--layout", default="auto", choices=["auto", "flat"], help="JPEG folders: <split>/<label>/ or flat")
    p.add_argument("--seed", type=int, default=0, help="shard shuffling seed")
    p.add_argument("--workers", type=int, help="reader threads (default: one per core)")
    p.add_argument("--force", action="store_true", help="rewrite JPEG files that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_export)


def _overlay_inputs(args: argparse.Namespace):
    """(slide, table, mask) for the overlay/napari subcommands."""
    from wsi_lab.slide import open_slide

    slide = open_slide(args.path, backend=args.backend)
    table = None
    if args.table:
        from wsi_lab.data.table import read_table

        table = read_table(args.table)
    mask = None
    if args.tissue:
        from wsi_lab.tissue import detect_tissue

        mask = detect_tissue(slide, args.tissue)
    return slide, table, mask


def _cmd_overlay(args: argparse.Namespace) -> int:
    from wsi_lab.io import save_image
    from wsi_lab.overlays import render_overview

    slide, table, mask = _overlay_inputs(args)
    save_image(render_overview(slide, args.layer, args.max_size, table=table, mask=mask), args.output)
    print(args.output)
    return 0


def _overlay_args(p) -> None:
    p.add_argument("path", metavar="SLIDE")
    p.add_argument("--table", help="TileTable (.parquet) whose columns feed the layers")
    p.add_argument("--layer", action="append", default=[],
                   help="layer to draw: grid, tissue, latent or a table column (repeatable; default grid)")
    p.add_argument("--tissue", metavar="METHOD", help="detect tissue with METHOD (e.g. otsu) and draw the mask")
    p.add_argument("--backend", default="auto")


def _add_overlay(sub) -> None:
    p = sub.add_parser("overlay", help="write a slide overview with heatmap/category/grid/tissue layers blended on it")
    _overlay_args(p)
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--max-size", type=int, default=1024, help="longest side in pixels (default 1024)")
    p.set_defaults(func=_cmd_overlay)


def _cmd_napari(args: argparse.Namespace) -> int:
    from wsi_lab.napari import open_in_napari, run_or_screenshot

    slide, table, mask = _overlay_inputs(args)
    viewer = open_in_napari(slide, overlays=args.layer, table=table, mask=mask)
    return run_or_screenshot(viewer, args.screenshot)


def _add_napari(sub) -> None:
    p = sub.add_parser("napari", help="open a slide (lazy, multiscale) with its overlays in napari")
    _overlay_args(p)
    p.add_argument("--screenshot", metavar="PNG", help="save the canvas to PNG and exit instead of running napari")
    p.set_defaults(func=_cmd_napari)


# ----------------------------------------------------------------------------------------------
# Subcommands registered by other parts of the package add an _add_<name> function here and list
# it in REGISTRARS. Keep each handler a thin call into the core.
# ----------------------------------------------------------------------------------------------

REGISTRARS: list[Callable] = [_add_info, _add_thumbnail, _add_doctor, _add_demo, _add_tissue, _add_tile, _add_split, _add_export, _add_overlay, _add_napari]


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
    if not args.verbose:  # Dask configures its own INFO logging at import; the progress bar says what matters
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
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
