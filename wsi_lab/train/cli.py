"""The ``wsi-lab train`` and ``wsi-lab features`` commands: ``register(subparsers)`` adds them to the
CLI's argparse subparsers; each sets ``func`` to a handler returning the exit status (0 done, 1 the
job failed unexpectedly, 2 bad input: one line on stderr)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from wsi_lab.errors import WSILabError

__all__ = ["register", "cmd_train", "cmd_features"]


def register(subparsers: Any) -> None:
    """Add ``train`` and ``features`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("train", help="run a training job spec (local, torchrun, horovod)",
                              description="Run a job spec: python -m wsi_lab.train under the chosen backend.")
    p.add_argument("--spec", required=True, help="job spec file (.json or .yaml)")
    p.add_argument("--backend", choices=["local", "torchrun", "horovod", "sagemaker"],
                   help="override the spec's backend (sagemaker: the spec's 'sagemaker' block)")
    p.add_argument("--nproc", type=int, help="processes (torchrun/horovod)")
    p.add_argument("--epochs", type=int, help="override the spec's epochs (e.g. to train longer on resume)")
    p.set_defaults(func=cmd_train)

    f = subparsers.add_parser("features", help="extract per-slide tile features with an encoder",
                              description="Write one feature file per slide (tile coordinates + metadata).")
    f.add_argument("table", help="TileTable (.parquet) or tiling output folder")
    f.add_argument("--backbone", required=True, help="encoder: h-optimus-0, uni, resnet50, resnet18, timm:<name>")
    f.add_argument("--weights", help="local weights file (never downloaded)")
    f.add_argument("--sha256", help="expected SHA-256 of the weights file")
    f.add_argument("-o", "--out", required=True, help="output folder (one <slide_id>.npz per slide)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--num-workers", type=int, default=0)
    f.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    f.add_argument("--backend", choices=["local", "torchrun"], default="local")
    f.add_argument("--nproc", type=int, default=1, help="processes (torchrun: one per GPU)")
    f.set_defaults(func=cmd_features)


def _follow(job, stream=None) -> int:
    """Print the job's log lines as they arrive; return the exit status for the CLI."""
    stream = stream or sys.stdout
    seen = 0
    while True:
        finished = job.done()
        lines = job.logs()
        for line in lines[seen:]:
            print(line, file=stream, flush=True)
        seen = len(lines)
        if finished:
            break
        time.sleep(0.2)
    if job.error is not None:
        err = job.error
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 2 if isinstance(err, WSILabError) else 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wsi_lab.train.launcher import TrainJob, launch
    from wsi_lab.train.spec import JobSpec

    try:
        spec = JobSpec.read(args.spec).with_changes(epochs=args.epochs)
        job = launch(spec, backend=args.backend, nproc=args.nproc)
    except WSILabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(job, TrainJob):  # a remote job (SageMaker) runs on its own: `wsi-lab sagemaker status NAME`
        print("\n".join(job.logs()), flush=True)
        return 0
    try:
        return _follow(job)
    except KeyboardInterrupt:
        job.cancel()
        job.wait(30)
        return 130


def cmd_features(args: argparse.Namespace) -> int:
    from wsi_lab.train.launcher import launch
    from wsi_lab.train.spec import JobSpec

    model: dict[str, Any] = {"name": args.backbone}
    if args.weights:
        model["weights"] = args.weights
    if args.sha256:
        model["sha256"] = args.sha256
    try:
        spec = JobSpec(task="features", table=args.table, out=args.out, model=model, batch_size=args.batch_size,
                       num_workers=args.num_workers, precision=args.precision, backend=args.backend,
                       nproc=args.nproc, epochs=1).validate()
        job = launch(spec)
    except WSILabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _follow(job)
