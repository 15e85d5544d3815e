"""What SageMaker instance types can run: GPUs per instance, and the rule that decides whether a
distribution fits a type (one rule, used by training before anything is uploaded)."""

from __future__ import annotations

import logging
import re

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["GPUS", "gpus_of", "check_distribution"]

#: GPUs per instance of the SageMaker GPU families (size -> count); other ``ml.`` families have none
GPUS: dict[str, dict[str, int]] = {
    "p3": {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8},
    "p3dn": {"24xlarge": 8},
    "p4d": {"24xlarge": 8}, "p4de": {"24xlarge": 8}, "p5": {"48xlarge": 8}, "p5e": {"48xlarge": 8},
    "g4dn": {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4},
    "g5": {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4,
           "48xlarge": 8},
    "g6": {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4,
           "48xlarge": 8},
    "g6e": {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4,
            "48xlarge": 8},
}
_CPU_FAMILIES = re.compile(r"^(m[4-7][a-z]*|c[4-7][a-z]*|r[5-7][a-z]*|t[23]|x1e?|trn1n?|inf[12])$")
_TYPE = re.compile(r"^ml\.([a-z0-9]+)\.([a-z0-9]+)$")


def gpus_of(instance_type: str) -> int | None:
    """GPUs of one instance of ``instance_type`` (0 for CPU families, ``None`` when the type is unknown here)."""
    m = _TYPE.match(instance_type)
    if m is None:
        return None
    family, size = m.groups()
    if family in GPUS:
        return GPUS[family].get(size)
    return 0 if _CPU_FAMILIES.match(family) else None


def check_distribution(instance_type: str, distribution: str | None, processes_per_host: int) -> int | None:
    """Refuse a distribution the instance type cannot run (:class:`InvalidParameterError` naming the key):
    ``torch_distributed`` needs GPUs (as the SageMaker SDK requires), ``mpi`` on a GPU type runs at most one
    process per GPU. Returns the GPU count (``None``: type unknown here, not checked, logged)."""
    gpus = gpus_of(instance_type)
    if gpus is None:
        log.warning("instance type %s is not in WSI Lab's table; its GPUs are not checked", instance_type)
        return None
    if distribution == "torch_distributed" and gpus == 0:
        raise InvalidParameterError(
            f"job spec key 'sagemaker.instance_type': {instance_type} has no GPU and distribution "
            "'torch_distributed' runs on GPU instances only; use a GPU type (ml.g5.12xlarge, ml.p4d.24xlarge) "
            "or distribution 'mpi' (Horovod runs on CPUs)")
    if distribution == "mpi" and gpus and processes_per_host > gpus:
        raise InvalidParameterError(
            f"job spec key 'sagemaker.processes_per_host': {processes_per_host} processes on {instance_type}, which "
            f"has {gpus} GPU(s); use processes_per_host <= {gpus} or a larger instance type")
    if distribution == "torch_distributed" and processes_per_host > gpus:
        raise InvalidParameterError(
            f"job spec key 'sagemaker.processes_per_host': torch_distributed starts one process per GPU and "
            f"{instance_type} has {gpus}; leave processes_per_host at {gpus} or 1")
    return gpus
