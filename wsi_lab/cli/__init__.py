"""The ``wsi-lab`` command: one module per subsystem, each registering its subcommands.

A command module is any module of this package whose name does not start with ``_``. It defines
``ORDER`` (its place in ``wsi-lab --help``) and ``register(subparsers)``, which adds its subcommands with
``set_defaults(func=handler)``; a handler takes the parsed ``argparse.Namespace``, makes a thin call into
the core and returns the exit code. A new subsystem (training, inference, cloud) plugs in by adding a
module here: nothing else changes. Module level imports stay light (the core loads inside handlers).

The error contract lives in :func:`main` only: a :class:`~wsi_lab.errors.WSILabError` prints one line on
stderr (:func:`wsi_lab.cli._base.print_error`) and exits with code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from wsi_lab.cli._base import print_error
from wsi_lab.errors import WSILabError

__all__ = ["main", "build_parser", "command_modules"]


def command_modules() -> list[ModuleType]:
    """The command modules of this package, in help order (``ORDER``, then name)."""
    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
            if not m.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    """The ``wsi-lab`` argument parser with every command module's subcommands."""
    from wsi_lab import __version__

    parser = argparse.ArgumentParser(prog="wsi-lab", description="WSI Lab: whole-slide images from the command line.")
    parser.add_argument("--version", action="version", version=f"wsi-lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsi-lab``; returns the exit code (2 on a WSI Lab error, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # Dask configures its own INFO logging at import; the progress bar says what matters
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        return int(args.func(args) or 0)
    except WSILabError as exc:
        print_error(exc)
        return 2
    except KeyboardInterrupt:
        print("wsi-lab: interrupted", file=sys.stderr)
        return 130
