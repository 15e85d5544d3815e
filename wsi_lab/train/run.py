"""The one entry point every backend runs unchanged: ``python -m wsi_lab.train --spec spec.json``.

It sets up the process context (rank, device, process group), writes ``out/spec.json`` (rank 0),
and runs the task's recipe. Errors WSI Lab raises on purpose end the process with one line
``error: <Type>: <message>`` on stderr (plus a ``WSI_LAB_ERROR {json}`` line on stdout for the
launcher's Job) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_lab.errors import InvalidParameterError, WSILabError
from wsi_lab.train.spec import JobSpec

log = logging.getLogger(__name__)

__all__ = ["run_spec", "prepare_out", "main", "ERROR_PREFIX"]

ERROR_PREFIX = "WSI_LAB_ERROR "


def prepare_out(spec: JobSpec) -> Path:
    """Create ``spec.out`` and write ``spec.json`` there; refuse an out folder that holds another job
    (a different task, model, table, seed...: only epochs, backend, nproc, workers, precision and
    device may change on a resumed run)."""
    out = Path(spec.out)
    path = out / "spec.json"
    if path.is_file():
        try:
            old = JobSpec.from_json(path.read_text())
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{path}: holds an unreadable spec ({exc}); use another out folder") from exc
        mine, theirs = spec.identity(), old.identity()
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise InvalidParameterError(f"{out}: holds another job (its spec differs in {diff}); use another out "
                                        "folder or the same spec to resume")
    out.mkdir(parents=True, exist_ok=True)
    spec.write(path)
    return out


def run_spec(spec: JobSpec) -> dict[str, Any]:
    """Run ``spec`` in this process (one rank of a launch, or the only one) and return the recipe's summary."""
    from wsi_lab.train.dist import setup_context
    from wsi_lab.train.recipes import get_recipe

    recipe = get_recipe(spec.task)
    ctx = setup_context(spec.backend, spec.device, "tensorflow" if spec.data.get("format") == "tfrecord" else "torch")
    try:
        if ctx.is_main:
            prepare_out(spec)
        ctx.barrier()
        result = recipe.run(spec, ctx)
        ctx.barrier()
        return result
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsi_lab.train", description="Run one WSI Lab job spec.")
    parser.add_argument("--spec", required=True, help="job spec file (.json, .yaml)")
    args = parser.parse_args(argv)
    # a cancelled job gets SIGTERM: exit through Python so atomic writes in flight remove their temp files
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = run_spec(JobSpec.read(args.spec))
    except WSILabError as exc:
        print(ERROR_PREFIX + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    print("WSI_LAB_RESULT " + json.dumps(result, default=str), flush=True)
    return 0
