"""From a checkpoint to predictions on SageMaker: ``model.tar.gz`` (``checkpoints/best.pt``, the layout
SageMaker extracts into ``/opt/ml/model``), a SageMaker model over the WSI Lab image (it serves
``/ping`` and ``/invocations`` with :mod:`wsi_lab.infer.serve`), an endpoint config + endpoint, and
Batch Transform over tiles in S3 whose outputs are read back into a predictions TileTable."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_lab.cloud.errors import CloudError, RemoteJobFailedError
from wsi_lab.cloud.job import SageMakerJob
from wsi_lab.cloud.session import CloudSession, aws_call
from wsi_lab.cloud.upload import check_bucket, is_s3, parse_s3_uri, s3_uri, upload_file
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.infer.serve import TFRECORD_TYPE
from wsi_lab.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["SERVED_TYPES", "package_model", "create_model", "Endpoint", "deploy", "transform_request",
           "batch_transform", "read_transform_outputs"]

#: request types the WSI Lab endpoint answers (wsi_lab.infer.serve)
SERVED_TYPES = ("image/jpeg", "image/png", "application/json", TFRECORD_TYPE)
_TILE_KEY = re.compile(r"(?:^|/)([^/]+)/tiles/(-?\d+)_(-?\d+)\.(?:jpg|jpeg|png)\.out$")


def package_model(checkpoint: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``dest`` (``model.tar.gz``) holding ``checkpoint`` as ``checkpoints/best.pt``, or, for a model
    folder (``SM_MODEL_DIR``), every file in it; deterministic and atomic."""
    src = Path(checkpoint)
    if src.is_dir():
        members = [(f.relative_to(src).as_posix(), f) for f in sorted(src.rglob("*")) if f.is_file()]
    elif src.is_file():
        members = [("checkpoints/best.pt", src)]
    else:
        raise InvalidParameterError(f"{src}: no checkpoint or model folder to package")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, f in members:
            info = tarfile.TarInfo(name)
            data = f.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(dest)


def create_model(model_data: str | os.PathLike, image_uri: str, role: str, bucket: str, prefix: str = "wsi-lab",
                 session: CloudSession | None = None, model_name: str | None = None, **session_kw: Any) -> str:
    """A SageMaker model serving ``model_data`` (an ``s3://.../model.tar.gz``, e.g. a training job's
    ``ModelArtifacts``, or a local checkpoint / model folder that is packaged and uploaded) with the WSI Lab
    image ``image_uri``. Returns the model name."""
    from wsi_lab.cloud.training import resolve_role

    if not image_uri:
        raise InvalidParameterError("image_uri: the model needs the WSI Lab image (docker/Dockerfile), which serves "
                                    "/ping and /invocations")
    session = session or CloudSession.from_settings(None, **session_kw)
    role_arn = resolve_role(session, role)
    if not is_s3(str(model_data)):
        check_bucket(session, bucket)
        import tempfile

        from wsi_lab.io import file_sha256

        with tempfile.TemporaryDirectory(prefix="wsi-lab-sm-") as work:
            tar = package_model(model_data, Path(work) / "model.tar.gz")
            model_data = upload_file(session, tar, s3_uri(bucket, prefix, "models", file_sha256(tar)[:16],
                                                          "model.tar.gz")).uri
    name = model_name or f"wsi-lab-model-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    aws_call("CreateModel", session.client("sagemaker").create_model, what=name, ModelName=name,
             ExecutionRoleArn=role_arn,
             PrimaryContainer={"Image": image_uri, "ModelDataUrl": str(model_data), "Mode": "SingleModel",
                               "Environment": {"SAGEMAKER_BIND_TO_PORT": "8080"}})
    return name


@dataclass
class Endpoint:
    """A deployed endpoint: ``status()`` (Creating, InService, Failed...), ``wait()``, ``delete()``."""

    session: CloudSession
    name: str
    config_name: str

    def describe(self) -> dict[str, Any]:
        return aws_call("DescribeEndpoint", self.session.client("sagemaker").describe_endpoint, what=self.name,
                        EndpointName=self.name)

    def status(self) -> str:
        return str(self.describe()["EndpointStatus"])

    def wait(self, timeout: float = 1800, poll_s: float = 15) -> str:
        """Poll until ``InService`` (returned) or ``Failed`` (:class:`RemoteJobFailedError`)."""
        deadline = time.monotonic() + timeout
        while True:
            desc = self.describe()
            status = desc["EndpointStatus"]
            if status == "InService":
                return status
            if status in ("Failed", "OutOfService"):
                raise RemoteJobFailedError(f"endpoint {self.name} is {status}: {desc.get('FailureReason', '')}",
                                           code=f"Endpoint{status}", operation="DescribeEndpoint",
                                           action="read the endpoint's CloudWatch log (/aws/sagemaker/Endpoints)")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"endpoint {self.name} still {status} after {timeout} s")
            time.sleep(poll_s)

    def delete(self) -> None:
        sm = self.session.client("sagemaker")
        aws_call("DeleteEndpoint", sm.delete_endpoint, what=self.name, EndpointName=self.name)
        aws_call("DeleteEndpointConfig", sm.delete_endpoint_config, what=self.config_name,
                 EndpointConfigName=self.config_name)


def deploy(model_name: str, instance_type: str = "ml.g4dn.xlarge", instance_count: int = 1,
           session: CloudSession | None = None, endpoint_name: str | None = None, **session_kw: Any) -> Endpoint:
    """Endpoint config (one ``AllTraffic`` variant) + endpoint for ``model_name``; returns its handle."""
    session = session or CloudSession.from_settings(None, **session_kw)
    name = endpoint_name or model_name.replace("-model-", "-endpoint-")
    config = f"{name}-config"
    sm = session.client("sagemaker")
    aws_call("CreateEndpointConfig", sm.create_endpoint_config, what=config, EndpointConfigName=config,
             ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": model_name, "InitialInstanceCount":
                                  instance_count, "InstanceType": instance_type, "InitialVariantWeight": 1.0}])
    aws_call("CreateEndpoint", sm.create_endpoint, what=name, EndpointName=name, EndpointConfigName=config)
    return Endpoint(session, name, config)


def transform_request(model_name: str, input_uri: str, output_uri: str, job_name: str,
                      instance_type: str = "ml.g5.xlarge", instance_count: int = 1, max_concurrent_transforms: int = 4,
                      max_payload_mb: int = 6, content_type: str = "image/jpeg") -> dict[str, Any]:
    """The ``CreateTransformJob`` request (pure): one request per tile object (``SplitType`` None), or, for
    TFRecord shards (``content_type`` ``application/x-tfrecord``), ``SplitType`` TFRecord with ``MultiRecord``
    batches of records up to ``max_payload_mb`` and the answers assembled one per line."""
    if content_type not in SERVED_TYPES:
        raise InvalidParameterError(
            f"content_type: {content_type!r} is not served by the WSI Lab endpoint ({', '.join(SERVED_TYPES)})")
    records = content_type == TFRECORD_TYPE
    if not 1 <= max_payload_mb <= 100:
        raise InvalidParameterError(f"max_payload_mb: SageMaker takes 1-100 MB, got {max_payload_mb}")
    if max_concurrent_transforms < 1:
        raise InvalidParameterError(f"max_concurrent_transforms: must be >= 1, got {max_concurrent_transforms}")
    return {
        "TransformJobName": job_name, "ModelName": model_name,
        "MaxConcurrentTransforms": max_concurrent_transforms, "MaxPayloadInMB": max_payload_mb,
        "BatchStrategy": "MultiRecord" if records else "SingleRecord",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                           "ContentType": content_type, "SplitType": "TFRecord" if records else "None",
                           "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": "application/json",
                            "AssembleWith": "Line" if records else "None"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
        "Environment": {"WSI_LAB_MAX_BODY_MB": str(max_payload_mb)},
    }


def batch_transform(model_name: str, input_uri: str, output_uri: str, session: CloudSession | None = None,
                    job_name: str | None = None, **options: Any) -> SageMakerJob:
    """Start Batch Transform of every tile under ``input_uri`` (e.g. a tiling job's ``*/tiles/*.jpg``) into
    ``output_uri`` (one ``<key>.out`` JSON per tile), or, with ``content_type="application/x-tfrecord"``, of
    every record of the TFRecord shards under ``input_uri`` (one ``<shard>.out`` per shard, a JSON answer
    per line); ``options`` go to :func:`transform_request`
    (``instance_type``, ``instance_count``, ``max_concurrent_transforms``, ``max_payload_mb``, ``content_type``)."""
    session_kw = {k: options.pop(k) for k in ("region", "profile", "endpoint_url") if k in options}
    session = session or CloudSession.from_settings(None, **session_kw)
    check_bucket(session, parse_s3_uri(output_uri).bucket)
    name = job_name or f"wsi-lab-transform-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    request = transform_request(model_name, input_uri, output_uri, name, **options)
    job = SageMakerJob(session, "transform", name)
    job.request = request  # type: ignore[attr-defined]
    aws_call("CreateTransformJob", session.client("sagemaker").create_transform_job, what=name, **request)
    job.log(f"created transform job {name}: {input_uri} -> {output_uri}")
    return job


def read_transform_outputs(output_uri: str, table: Any, classes: list[str],
                           session: CloudSession | None = None, **session_kw: Any):
    """The predictions TileTable: ``table`` plus ``prob_<class>`` (float32) and ``pred`` from the
    ``<slide_id>/tiles/<x>_<y>.jpg.out`` objects under ``output_uri``, and from the ``*.tfrecord.out``
    objects of a TFRecord transform (one answer per line, its ``records`` naming each tile's slide/x/y). Rows without an output keep NaN
    (counted in ``attrs['wsi_lab']['predict']['missing']``); a malformed output is a :class:`DataError`."""
    import numpy as np

    session = session or CloudSession.from_settings(None, **session_kw)
    src = parse_s3_uri(output_uri)
    prefix = src.key.rstrip("/") + "/" if src.key else ""
    s3 = session.client("s3")
    pages = aws_call("ListObjectsV2", lambda: list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=src.bucket, Prefix=prefix)), what=output_uri)
    found: dict[tuple[str, int, int], list[float]] = {}
    for page in pages:
        for obj in page.get("Contents", []):
            m = _TILE_KEY.search(obj["Key"])
            if not m and not obj["Key"].endswith(".tfrecord.out"):
                continue
            body = aws_call("GetObject", s3.get_object, Bucket=src.bucket, Key=obj["Key"], what=obj["Key"])["Body"].read()
            if not m:
                found.update(_record_outputs(body, f"s3://{src.bucket}/{obj['Key']}", len(classes)))
                continue
            try:
                probs = json.loads(body)["predictions"][0]
                if len(probs) != len(classes):
                    raise ValueError(f"{len(probs)} values for {len(classes)} classes")
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise DataError(f"s3://{src.bucket}/{obj['Key']}: not a prediction of {len(classes)} classes ({exc})") from exc
            found[(m.group(1), int(m.group(2)), int(m.group(3)))] = [float(p) for p in probs]
    out = table.copy()
    keys = list(zip(out["slide_id"].astype(str), out["x"].astype(int), out["y"].astype(int), strict=True))
    probs = np.full((len(out), len(classes)), np.nan, np.float32)
    for i, k in enumerate(keys):
        if k in found:
            probs[i] = found[k]
    for j, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, j]
    have = ~np.isnan(probs).any(axis=1)
    out["pred"] = [classes[int(np.argmax(p))] if ok else None for p, ok in zip(probs, have, strict=True)]
    meta = dict(out.attrs.get("wsi_lab", {}))
    meta["predict"] = {"source": "sagemaker-batch-transform", "transform_output": output_uri, "classes": list(classes),
                       "kind": "classifier", "missing": int((~have).sum())}
    out.attrs["wsi_lab"] = meta
    if not have.any() and len(out):
        raise CloudError(f"{output_uri}: no transform output matches the table's tiles", code="NoOutputs",
                         operation="ListObjectsV2", action="check the transform job's status and output path")
    return out


def _record_outputs(body: bytes, where: str, n_classes: int) -> dict[tuple[str, int, int], list[float]]:
    """``{(slide_id, x, y): probabilities}`` of a TFRecord transform output: one JSON answer per line, each
    ``{"predictions": [...], "records": [{"slide_id", "x", "y"}, ...]}`` (:class:`DataError` if malformed)."""
    out: dict[tuple[str, int, int], list[float]] = {}
    for n, line in enumerate(body.decode("utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            preds, keys = doc["predictions"], doc["records"]
            if len(preds) != len(keys):
                raise ValueError(f"{len(preds)} predictions for {len(keys)} records")
            for probs, key in zip(preds, keys, strict=True):
                if len(probs) != n_classes:
                    raise ValueError(f"{len(probs)} values for {n_classes} classes")
                out[(str(key["slide_id"]), int(key["x"]), int(key["y"]))] = [float(p) for p in probs]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataError(f"{where}: line {n + 1} is not a prediction of {n_classes} classes with its records "
                            f"({exc})") from exc
    return out
