"""What every command module shares: the handler type and the one-line message format."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

#: a subcommand handler: parsed arguments in, exit code out
Handler = Callable[[argparse.Namespace], int]
#: the ``subparsers`` object ``register`` receives (``argparse._SubParsersAction``)
Subparsers = Any


def print_error(exc: BaseException | str) -> None:
    """The one-line error format of ``wsi-lab`` (``wsi-lab: error: ...`` on stderr)."""
    print(f"wsi-lab: error: {exc}", file=sys.stderr)


def print_warning(message: object) -> None:
    """A one-line warning on stderr (``wsi-lab: warning: ...``)."""
    print(f"wsi-lab: warning: {message}", file=sys.stderr)
