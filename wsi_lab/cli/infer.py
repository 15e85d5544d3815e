"""Inference commands: ``predict``, ``evaluate``, ``overlay-predictions`` (a PNG from saved predictions,
no slide read; ``overlay`` draws table columns over the slide itself), ``geojson`` (QuPath), ``segment``
(slide masks + ASAP/GeoJSON regions of a segmentation model) and ``serve-model`` (an HTTP endpoint with SageMaker's contract)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsi_lab.cli._base import Subparsers, print_warning

ORDER = 45


def _cmd_predict(args: argparse.Namespace) -> int:
    from wsi_lab.data.table import load_tables
    from wsi_lab.infer.run import predict_slides, write_predictions
    from wsi_lab.runs.progress import TextProgressBar

    table = load_tables([args.table])
    out = Path(args.output)
    work = Path(args.work) if args.work else out.with_name(out.stem + "_slides")
    client = args.scheduler or ("local" if args.workers else None)
    result = predict_slides(args.checkpoint, table, out=work, batch_size=args.batch_size, device=args.device,
                            precision=args.precision, features=args.features, client=client, n_workers=args.workers,
                            backend=args.backend, progress=None if args.quiet else TextProgressBar(),
                            source=str(args.table))
    for sid, why in result.failed.items():
        print_warning(f"slide {sid} failed: {why}")
    if len(result.table):
        write_predictions(result.table, out)
        print(out)
    return 1 if result.failures else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from wsi_lab.infer.metrics import evaluate

    m = evaluate(args.predictions, args.out, label_column=args.label_column, how=args.how, checkpoint=args.checkpoint)
    if "vae" in m:
        print(f"vae: {m['vae']}")
        print(Path(args.out) / "metrics.json")
        return 0
    for level in ("tile", "slide"):
        r = m[level]
        if r.get("accuracy") is None:
            print(f"{level}: {r.get('error', 'no metrics')}")
            continue
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
        print(f"{level}: accuracy {r['accuracy']:.4f}  balanced accuracy {r['balanced_accuracy']:.4f}  AUC {auc}  "
              f"(n={r['n']})")
    print(Path(args.out) / "metrics.json")
    return 0


def _cmd_overlay_predictions(args: argparse.Namespace) -> int:
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.infer.run import read_predictions
    from wsi_lab.overlays.predictions import layer_for, render_png

    table = read_predictions(args.predictions)
    slides = sorted(map(str, table["slide_id"].unique())) if "slide_id" in table.columns else []
    sid = args.slide or (slides[0] if slides else None)
    if sid is not None and slides:
        if sid not in slides:
            raise InvalidParameterError(f"{args.predictions}: no slide {sid!r}; the table holds {slides[:10]}")
        rows = table[table["slide_id"].astype(str) == sid]
        rows.attrs = table.attrs
        table = rows
    try:
        layer = layer_for(table, args.kind, class_name=args.class_name, k=args.k, method=args.method)
    except InvalidParameterError as exc:  # name the predictions file the column is missing from
        raise InvalidParameterError.at(args.predictions, str(exc)) from exc
    print(render_png(table, layer, args.output, max_size=args.max_size, slide_id=sid))
    return 0


def _cmd_geojson(args: argparse.Namespace) -> int:
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.infer.geojson import write_geojson
    from wsi_lab.infer.run import read_predictions

    table = read_predictions(args.predictions)
    if args.slide:
        table = table[table["slide_id"].astype(str) == args.slide]
    mask = None
    if args.tissue:
        from wsi_lab.slide import open_slide
        from wsi_lab.tissue import detect_tissue

        meta = table.attrs.get("wsi_lab") or {}
        sid = args.slide or str(table["slide_id"].iloc[0])
        path = ((meta.get("slides") or {}).get(sid) or {}).get("path") or meta.get("slide_path")
        if not path:
            raise InvalidParameterError(f"{args.predictions}: no slide path recorded for {sid!r}: cannot detect tissue")
        mask = detect_tissue(open_slide(path), args.tissue)
    column = None if args.column in ("", "none") else args.column
    regions = None
    if args.annotations:
        from wsi_lab.annotations import read_annotations

        regions = read_annotations(args.annotations)
    print(write_geojson(args.output, table, column=column, measurements=args.measurement or None,
                        object_type=args.object_type, mask=mask, annotations=regions))
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from wsi_lab.data.table import load_tables
    from wsi_lab.infer.segment import segment_slides
    from wsi_lab.runs.progress import TextProgressBar

    formats = tuple(f for f in args.formats.split(",") if f)
    result = segment_slides(args.checkpoint, load_tables([args.table]), args.output, downsample=args.downsample,
                            batch_size=args.batch_size, device=args.device, precision=args.precision, formats=formats,
                            min_area=args.min_area, progress=None if args.quiet else TextProgressBar())
    for sid in sorted(result.masks):
        print(result.masks[sid].parent)
    return 0


def _cmd_serve_model(args: argparse.Namespace) -> int:
    from wsi_lab.infer.serve import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print_warning(f"serving on {args.host}: reachable from other machines; the endpoint has no authentication")
    serve(args.checkpoint, args.host, args.port, max_body=int(args.max_body_mb * (1 << 20)), resize=args.resize,
          device=args.device)
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("predict", help="run a checkpoint over a TileTable (tiles read from the slides)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("table", metavar="TABLE", help="TileTable .parquet or a tiling output folder")
    p.add_argument("-o", "--output", required=True, help="predictions file (.parquet or .csv)")
    p.add_argument("--work", help="per-slide outputs for resuming (default: <output stem>_slides/ beside it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--features", help="folder of feature files (.npz) for an attention-MIL checkpoint")
    p.add_argument("--workers", type=int, default=None, help="fan slides out on a local Dask cluster of N processes")
    p.add_argument("--scheduler", help="Dask scheduler address (host:port) to fan slides out on")
    p.add_argument("--backend", default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="metrics.json and plots (confusion, ROC) of a predictions table")
    p.add_argument("predictions", metavar="PRED")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--label-column", default="label")
    p.add_argument("--how", default="mean", choices=("mean", "vote", "attention", "max"), help="slide aggregation")
    p.add_argument("--checkpoint", help="the VAE checkpoint, for a reconstruction gallery of a VAE's predictions")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("overlay-predictions",
                       help="PNG of saved predictions/latents with a legend (no slide read; see also `overlay`)")
    p.add_argument("predictions", metavar="PRED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--kind", default="heatmap", choices=("heatmap", "pred", "latent", "clusters", "attention"))
    p.add_argument("--class", dest="class_name", help="class of the heatmap (default: the model's last class)")
    p.add_argument("--slide", help="slide id (default: the first in the table)")
    p.add_argument("-k", type=int, default=6, help="clusters for --kind clusters")
    p.add_argument("--method", default="pca", choices=("pca", "umap"), help="latent projection")
    p.add_argument("--max-size", type=int, default=1024)
    p.set_defaults(func=_cmd_overlay_predictions)

    p = sub.add_parser("geojson", help="QuPath GeoJSON of tile predictions (and tissue contours)")
    p.add_argument("predictions", metavar="PRED")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--column", default="pred", help="column that classifies the tiles ('none': unclassified)")
    p.add_argument("--measurement", action="append", help="numeric column to export (repeatable; default prob_*)")
    p.add_argument("--object-type", default="tile", choices=("tile", "detection"))
    p.add_argument("--slide", help="only this slide id")
    p.add_argument("--tissue", metavar="METHOD", help="add tissue contours (detected with METHOD) as annotations")
    p.add_argument("--annotations", metavar="FILE", help="add the regions of an ASAP XML or GeoJSON annotation file")
    p.set_defaults(func=_cmd_geojson)

    p = sub.add_parser("segment", help="slide-level masks of a segmentation checkpoint, regions as ASAP XML + GeoJSON")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("table", metavar="TABLE", help="TileTable .parquet or a tiling output folder")
    p.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per slide)")
    p.add_argument("--downsample", type=float, default=None, help="level-0 px per mask pixel (default: coarse)")
    p.add_argument("--formats", default="xml,geojson", help="region exports: xml (ASAP), geojson (QuPath)")
    p.add_argument("--min-area", type=float, default=0.0, help="drop regions under this area (level-0 px²)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("serve-model", help="HTTP endpoint for a checkpoint (SageMaker contract: /ping, /invocations)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-body-mb", type=float, default=6.0, help="larger request bodies answer 413 (default 6)")
    p.add_argument("--resize", action="store_true", help="resize tiles of another size instead of refusing them")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_serve_model)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: wsi-lab predict|evaluate|overlay-predictions|geojson")
