"""Data commands: ``split`` (labels, patient splits) and ``export`` (JPEG files, TFRecord shards)."""

from __future__ import annotations

import argparse

from wsi_lab.cli._base import Subparsers

ORDER = 40


def _cmd_split(args: argparse.Namespace) -> int:
    from wsi_lab.data.labels import attach_labels
    from wsi_lab.data.splits import split_by_group, split_by_patient, split_summary
    from wsi_lab.data.table import load_tables, write_table

    table = load_tables(args.tables)
    if args.labels:
        table = attach_labels(table, args.labels, on_missing=args.on_missing)
    stratify = None if args.no_stratify or "label" not in table.columns else "label"
    if args.by in ("patient", "patient_id"):
        out = split_by_patient(table, args.fractions, stratify=stratify, seed=args.seed)
    else:
        out = split_by_group(table, args.by, args.fractions, stratify=stratify, seed=args.seed)
    write_table(out, args.output)
    print(split_summary(out).to_string(index=False))
    print(args.output)
    return 0


def _add_split(sub: Subparsers) -> None:
    p = sub.add_parser("split", help="attach slide labels and split a TileTable into train/val/test by patient")
    p.add_argument("tables", nargs="+", metavar="TABLE", help="TileTable .parquet files or tiling output folders")
    p.add_argument("--labels", help="labels CSV: slide_id,label[,patient_id]")
    p.add_argument("--on-missing", default="error", choices=["error", "drop"],
                   help="table slides without a label: fail (default) or drop them")
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test fractions of patients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stratify", action="store_true", help="do not balance labels across splits")
    p.add_argument("--by", default="patient", metavar="COLUMN",
                   help="group kept in one split: patient (default) or a column such as centre")
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


def _add_export(sub: Subparsers) -> None:
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


def register(sub: Subparsers) -> None:
    _add_split(sub)
    _add_export(sub)
