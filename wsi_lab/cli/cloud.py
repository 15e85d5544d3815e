"""SageMaker on the command line: ``wsi-lab sagemaker status|stop`` for jobs, the ``--sagemaker`` options
of ``wsi-lab tile`` (:func:`add_sagemaker_options`, :func:`tile_on_sagemaker`), and the ``sagemaker``
backend of ``wsi-lab train`` (registered here, so ``train`` needs no import of the cloud layer)."""

from __future__ import annotations

import argparse
from typing import Any

from wsi_lab.cli._base import Subparsers

ORDER = 65


def _launch_sagemaker(spec: Any, progress: Any = None) -> Any:
    from wsi_lab.cloud.training import launch

    return launch(spec, progress=progress)


def add_sagemaker_options(p: argparse.ArgumentParser) -> None:
    """``--sagemaker`` and where/how to run (for ``wsi-lab tile``)."""
    g = p.add_argument_group("SageMaker (with --sagemaker: a Processing job instead of a local Dask run)")
    g.add_argument("--sagemaker", action="store_true", help="tile on SageMaker (slides sharded by S3 key)")
    g.add_argument("--bucket", help="S3 bucket for slides, parameters and TileTables")
    g.add_argument("--prefix", default="wsi-lab", help="key prefix in the bucket (default wsi-lab)")
    g.add_argument("--role", help="SageMaker execution role (ARN or name)")
    g.add_argument("--image-uri", help="WSI Lab image (built from docker/Dockerfile)")
    g.add_argument("--instance-type", default="ml.m5.xlarge")
    g.add_argument("--instance-count", type=int, default=1)
    g.add_argument("--region")
    g.add_argument("--endpoint-url", help="another endpoint (e.g. a local moto server); AWS_ENDPOINT_URL works too")
    g.add_argument("--wait", action="store_true", help="wait for the job and download the TileTables into --out")


def tile_on_sagemaker(args: argparse.Namespace, params: Any) -> int:
    """Start the Processing job for ``wsi-lab tile --sagemaker``; prints its name (and waits with --wait)."""
    from wsi_lab.cloud.processing import tiling_job
    from wsi_lab.errors import InvalidParameterError

    for opt in ("bucket", "role", "image_uri"):
        if not getattr(args, opt):
            raise InvalidParameterError(f"--{opt.replace('_', '-')} is needed with --sagemaker")
    slides = args.slides[0] if len(args.slides) == 1 and args.slides[0].startswith("s3://") else args.slides
    job = tiling_job(params, slides, args.bucket, args.role, args.image_uri, prefix=args.prefix,
                     instance_type=args.instance_type, instance_count=args.instance_count, materialize=args.materialize,
                     region=args.region, endpoint_url=args.endpoint_url)
    for line in job.logs():
        print(line)
    print(f"processing job: {job.job_name}  tiles: {job.output_uri}")  # type: ignore[attr-defined]
    if args.wait:
        from wsi_lab.cloud.upload import download_tree

        status = job.wait()
        if status.value != "done":
            job.result(0)
        files = download_tree(job.session, job.output_uri, args.out)  # type: ignore[attr-defined]
        print(f"{len(files)} file(s) downloaded into {args.out}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from wsi_lab.cloud.job import SageMakerJob
    from wsi_lab.cloud.session import CloudSession

    job = SageMakerJob(CloudSession(region=args.region, endpoint_url=args.endpoint_url), args.kind, args.name)
    status = job.wait() if args.wait else job.status()
    for line in job.logs(tail=args.tail):
        print(line)
    print(f"{args.kind} job {args.name}: {status.value}")
    if job.error is not None:
        raise job.error
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from wsi_lab.cloud.job import SageMakerJob
    from wsi_lab.cloud.session import CloudSession

    SageMakerJob(CloudSession(region=args.region, endpoint_url=args.endpoint_url), args.kind, args.name).cancel()
    print(f"stop requested for {args.kind} job {args.name}")
    return 0


def register(sub: Subparsers) -> None:
    from wsi_lab.train.launcher import register_backend

    register_backend("sagemaker", _launch_sagemaker)
    p = sub.add_parser("sagemaker", help="SageMaker jobs: status (logs, wait), stop")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])  # replaced by the subcommand's own handler
    cmds = p.add_subparsers(dest="sagemaker_command", required=True)
    for name, func, text in (("status", _cmd_status, "status and log of a job"), ("stop", _cmd_stop, "stop a job")):
        c = cmds.add_parser(name, help=text)
        c.add_argument("name", help="job name")
        c.add_argument("--kind", choices=["training", "processing", "transform"], default="training")
        c.add_argument("--region")
        c.add_argument("--endpoint-url", help="another endpoint (e.g. a local moto server)")
        if name == "status":
            c.add_argument("--wait", action="store_true", help="poll until the job ends")
            c.add_argument("--tail", type=int, default=50, help="log lines shown (default 50)")
        c.set_defaults(func=func)
