"""Session commands: ``wsi-lab export-session FOLDER --out BUNDLE.zip`` and ``wsi-lab replay BUNDLE --out DIR``."""

from __future__ import annotations

import argparse

from wsi_lab.cli._base import Subparsers

ORDER = 80


def _cmd_export(args: argparse.Namespace) -> int:
    from wsi_lab.sessions import export_session, read_session

    path = export_session(args.folder, args.out, hash_slides=not args.no_slide_hash, note=args.note or "")
    s = read_session(path)
    print(f"{path}: {len(s['tiling'])} tiling table(s), {len(s['training'])} job spec(s), "
          f"{len(s['review'])} review file(s), {len(s['slides'])} slide checksum(s)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from wsi_lab.runs.progress import TextProgressBar
    from wsi_lab.sessions import replay

    result = replay(args.bundle, args.out, slides=args.slides, train=not args.no_train, n_workers=args.workers,
                    progress=None if args.quiet else TextProgressBar())
    print(result.summary())
    return 0 if result.ok else 1


def register(sub: Subparsers) -> None:
    p = sub.add_parser("export-session", help="write a session bundle (parameters, versions, seeds, checksums, tables)")
    p.add_argument("folder", help="the workshop folder holding tiling outputs, job folders and review/")
    p.add_argument("--out", required=True, help="the bundle to write (.zip)")
    p.add_argument("--no-slide-hash", action="store_true", help="record slide sizes only (no SHA-256)")
    p.add_argument("--note", help="a line of text stored in the bundle")
    p.set_defaults(func=_cmd_export)
    r = sub.add_parser("replay", help="re-run a session bundle and check it gives the same tables")
    r.add_argument("bundle", help="a bundle written by export-session")
    r.add_argument("--out", required=True, help="folder for the re-run outputs")
    r.add_argument("--slides", help="folder to find slides in when they moved (matched by name and checksum)")
    r.add_argument("--no-train", action="store_true", help="replay tiling only")
    r.add_argument("--workers", type=int, default=1, help="local Dask worker processes (default 1)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_replay)
