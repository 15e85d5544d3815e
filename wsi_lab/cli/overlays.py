"""Viewing commands: ``overlay`` (an overview image with layers) and ``napari``."""

from __future__ import annotations

import argparse
from typing import Any

from wsi_lab.cli._base import Subparsers

ORDER = 50


def _overlay_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
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
    save_image(render_overview(slide, args.layer, args.max_size, table=table, mask=mask, legend=args.legend),
               args.output)
    print(args.output)
    return 0


def _overlay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="SLIDE")
    p.add_argument("--table", help="TileTable (.parquet) whose columns feed the layers")
    p.add_argument("--layer", action="append", default=[],
                   help="layer to draw: grid, tissue, latent, a prediction layer (heatmap[:CLASS], pred, pca, umap, "
                        "clusters[:K], attention) or a table column (repeatable; default grid)")
    p.add_argument("--tissue", metavar="METHOD", help="detect tissue with METHOD (e.g. od, otsu) and draw the mask")
    p.add_argument("--backend", default="auto")


def _add_overlay(sub: Subparsers) -> None:
    p = sub.add_parser("overlay", help="write a slide overview with heatmap/category/grid/tissue layers blended on it")
    _overlay_args(p)
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--max-size", type=int, default=1024, help="longest side in pixels (default 1024)")
    p.add_argument("--legend", action="store_true", help="draw each layer's legend (colour bar, classes) at the right")
    p.set_defaults(func=_cmd_overlay)


def _cmd_napari(args: argparse.Namespace) -> int:
    from wsi_lab.napari import open_in_napari, run_or_screenshot

    slide, table, mask = _overlay_inputs(args)
    viewer = open_in_napari(slide, overlays=args.layer, table=table, mask=mask)
    return run_or_screenshot(viewer, args.screenshot)


def _add_napari(sub: Subparsers) -> None:
    p = sub.add_parser("napari", help="open a slide (lazy, multiscale) with its overlays in napari")
    _overlay_args(p)
    p.add_argument("--screenshot", metavar="PNG", help="save the canvas to PNG and exit instead of running napari")
    p.set_defaults(func=_cmd_napari)


def register(sub: Subparsers) -> None:
    _add_overlay(sub)
    _add_napari(sub)
