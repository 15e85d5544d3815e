"""Amazon SageMaker from the same specs (the ``sagemaker`` extra: plain boto3).

- :class:`CloudSession` (``session``): profile, region, ``endpoint_url`` / ``AWS_ENDPOINT_URL``;
- uploads that skip objects of the same size and SHA-256 (``upload``);
- :func:`tiling_job`: ``wsi-lab tile`` as a Processing job, slides sharded by S3 key (``processing``);
- :func:`train` / ``launch``: a :class:`~wsi_lab.train.spec.JobSpec` with a ``sagemaker`` block as a
  training job (``training``), returning a :class:`SageMakerJob` (``job``);
- :func:`create_model`, :func:`deploy`, :func:`batch_transform`, :func:`read_transform_outputs` (``deploy``);
- what runs inside the containers (``entry``) and the code archive (``code``).

Importing this package registers the ``sagemaker`` backend with :func:`wsi_lab.train.launch`.
"""

from __future__ import annotations

from wsi_lab._lazy import lazy_exports
from wsi_lab.train.launcher import register_backend

_NAMES = {
    "CloudSession": "wsi_lab.cloud.session", "aws_call": "wsi_lab.cloud.session",
    "CloudError": "wsi_lab.cloud.errors", "RemoteJobFailedError": "wsi_lab.cloud.errors",
    "UploadError": "wsi_lab.cloud.errors", "UnsupportedOperationError": "wsi_lab.cloud.errors",
    "upload_file": "wsi_lab.cloud.upload", "upload_tree": "wsi_lab.cloud.upload", "check_bucket": "wsi_lab.cloud.upload",
    "SageMakerJob": "wsi_lab.cloud.job",
    "tiling_job": "wsi_lab.cloud.processing",
    "training_request": "wsi_lab.cloud.training", "METRIC_DEFINITIONS": "wsi_lab.cloud.training",
    "package_model": "wsi_lab.cloud.deploy", "create_model": "wsi_lab.cloud.deploy", "deploy": "wsi_lab.cloud.deploy",
    "Endpoint": "wsi_lab.cloud.deploy", "batch_transform": "wsi_lab.cloud.deploy",
    "read_transform_outputs": "wsi_lab.cloud.deploy",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _NAMES)
__all__ = sorted([*__all__, "train"])


def train(spec, progress=None, **kw):
    """Start ``spec`` (JobSpec, dict or file with a ``sagemaker`` block) as a SageMaker training job;
    see :func:`wsi_lab.cloud.training.launch`."""
    from wsi_lab.cloud.training import launch

    return launch(spec, progress=progress, **kw)


register_backend("sagemaker", train)
