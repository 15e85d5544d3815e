"""Tiling as a SageMaker Processing job: the project's own ``wsi-lab tile`` runs over the slides,
sharded across instances by S3 key (each instance tiles its share), with the same
:class:`~wsi_lab.tiling.TilingParams` as on a laptop (sent as ``params.json``). TileTables (and
optional JPEG tiles or TFRecords) go back to S3 under ``prefix/tiles/<job>/<slide_id>/``."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_lab.cloud.job import SageMakerJob
from wsi_lab.cloud.session import CloudSession, aws_call
from wsi_lab.cloud.upload import check_bucket, is_s3, s3_uri, upload_file
from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["PROCESSING_ROOT", "tiling_request", "tiling_job", "upload_slides"]

PROCESSING_ROOT = "/opt/ml/processing"
_SLIDES, _PARAMS, _OUT = (f"{PROCESSING_ROOT}/input/slides", f"{PROCESSING_ROOT}/input/params",
                          f"{PROCESSING_ROOT}/output/tiles")


def tiling_request(params: Any, slides_uri: str, params_uri: str, output_uri: str, job_name: str, role_arn: str,
                   image_uri: str, instance_type: str = "ml.m5.xlarge", instance_count: int = 1,
                   materialize: str | None = None, volume_gb: int = 100, max_run_s: int = 86_400) -> dict[str, Any]:
    """The ``CreateProcessingJob`` request (pure): slides ``ShardedByS3Key`` over ``instance_count``
    instances, the parameters file to every instance, ``wsi-lab tile`` as the container's entry point."""
    if materialize not in (None, "jpeg", "tfrecord"):
        raise InvalidParameterError(f"materialize: {materialize!r} is not one of jpeg, tfrecord (or None)")
    if not isinstance(instance_count, int) or isinstance(instance_count, bool) or instance_count < 1:
        raise InvalidParameterError(f"instance_count: must be an integer >= 1, got {instance_count!r}")
    entry = ["wsi-lab", "tile", _SLIDES, "--params", f"{_PARAMS}/params.json", "--out", _OUT, "--quiet"]
    if materialize:
        entry += ["--materialize", materialize]

    def s3_input(name: str, uri: str, local: str, sharded: bool) -> dict[str, Any]:
        return {"InputName": name, "S3Input": {
            "S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File",
            "S3DataDistributionType": "ShardedByS3Key" if sharded else "FullyReplicated"}}

    return {
        "ProcessingJobName": job_name,
        "RoleArn": role_arn,
        "AppSpecification": {"ImageUri": image_uri, "ContainerEntrypoint": entry},
        "ProcessingInputs": [s3_input("slides", slides_uri, _SLIDES, sharded=True),
                             s3_input("params", params_uri, _PARAMS, sharded=False)],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "tiles", "S3Output": {
            "S3Uri": output_uri, "LocalPath": _OUT, "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": instance_count, "InstanceType": instance_type,
                                                  "VolumeSizeInGB": volume_gb}},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_run_s},
        "Environment": {"WSI_LAB_JPEG_PASSTHROUGH": "1", "PYTHONUNBUFFERED": "1"},
        "Tags": [{"Key": "wsi-lab:step", "Value": "tiling"}, {"Key": "wsi-lab:params-hash", "Value": params.hash(16)}],
    }


def upload_slides(session: CloudSession, slides: Sequence[str | os.PathLike], bucket: str, prefix: str) -> str:
    """Upload local slide files (or every slide under a folder) to ``s3://bucket/prefix/slides/`` (one
    prefix, so a slide is sent once whatever job uses it); returns that prefix."""
    from wsi_lab.slide.discovery import find_slides

    files: list[Path] = []
    for s in slides:
        p = Path(s)
        files += [Path(i.path) for i in find_slides(p, metadata=False)] if p.is_dir() else [p]
    uri = s3_uri(bucket, prefix, "slides") + "/"
    for f in files:
        upload_file(session, f, uri + f.name)
    return uri


def tiling_job(params: Any, s3_slides: str | Sequence[str | os.PathLike], bucket: str, role: str, image_uri: str,
               prefix: str = "wsi-lab", instance_type: str = "ml.m5.xlarge", instance_count: int = 1,
               materialize: str | None = None, session: CloudSession | None = None, job_name: str | None = None,
               **session_kw: Any) -> SageMakerJob:
    """Start a Processing job that tiles the slides at ``s3_slides`` (an ``s3://`` prefix, or local files
    / folders that are uploaded first) with ``params`` (:class:`~wsi_lab.tiling.TilingParams`). The
    TileTables land under ``job.output_uri``. ``image_uri``: an image built from ``docker/Dockerfile``."""
    import time

    from wsi_lab.cloud.training import resolve_role

    if not image_uri:
        raise InvalidParameterError("image_uri: a Processing job needs the WSI Lab image (build docker/Dockerfile "
                                    "and push it to ECR)")
    params = params.validate()
    session = session or CloudSession.from_settings(None, **session_kw)
    check_bucket(session, bucket)
    role_arn = resolve_role(session, role)
    name = job_name or f"wsi-lab-tiling-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    slides_uri = s3_slides if isinstance(s3_slides, str) and is_s3(s3_slides) else \
        upload_slides(session, [s3_slides] if isinstance(s3_slides, (str, os.PathLike)) else s3_slides, bucket, prefix)
    with tempfile.TemporaryDirectory(prefix="wsi-lab-sm-") as work:
        p = Path(work) / "params.json"
        p.write_text(params.to_json(indent=2) + "\n")
        params_uri = s3_uri(bucket, prefix, "params", params.hash(16)) + "/"
        upload_file(session, p, params_uri + "params.json")
    output_uri = s3_uri(bucket, prefix, "tiles", name) + "/"
    request = tiling_request(params, slides_uri, params_uri, output_uri, name, role_arn, image_uri, instance_type,
                             instance_count, materialize)
    job = SageMakerJob(session, "processing", name)
    job.request, job.output_uri = request, output_uri  # type: ignore[attr-defined]
    aws_call("CreateProcessingJob", session.client("sagemaker").create_processing_job, what=name, **request)
    job.log(f"created processing job {name}: wsi-lab tile over {slides_uri} on {instance_count} x {instance_type}")
    return job
