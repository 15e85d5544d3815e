"""The ``sagemaker`` block of a JobSpec and the instance-type rule: refusals name the key, credentials
never go in a spec (no AWS needed)."""

from __future__ import annotations

import pytest

from wsi_lab.errors import InvalidParameterError
from wsi_lab.train.spec import JobSpec

BASE = {"task": "classify", "table": "t.parquet", "out": "o", "batch_size": 8}
SM = {"bucket": "wsi-lab-test", "role": "arn:aws:iam::123456789012:role/SageMaker"}


def test_a_complete_block_round_trips():
    spec = JobSpec.from_dict({**BASE, "backend": "sagemaker", "sagemaker": {**SM, "distribution": "mpi",
                                                                            "processes_per_host": 4,
                                                                            "instance_type": "ml.g5.12xlarge"}})
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.sagemaker["processes_per_host"] == 4


@pytest.mark.parametrize("change, key", [
    ({"bucket": None}, "sagemaker.bucket"), ({"role": ""}, "sagemaker.role"), ({"bucket": "Bad_Bucket"}, "sagemaker.bucket"),
    ({"instance_type": "g5.xlarge"}, "sagemaker.instance_type"), ({"instance_count": 0}, "sagemaker.instance_count"),
    ({"distribution": "ddp"}, "sagemaker.distribution"), ({"input_mode": "file"}, "sagemaker.input_mode"),
    ({"processes_per_host": 2}, "sagemaker.processes_per_host"),
    ({"file_system": {"id": "fs-1", "type": "NFS", "path": "/x"}}, "sagemaker.file_system.type"),
    ({"file_system": {"id": "fs-1", "type": "EFS", "path": "/x"}}, "sagemaker.vpc"),
    ({"distribution": "mpi", "processes_per_host": 3}, "batch_size"),
    ({"aws_secret_access_key": "x"}, "sagemaker.aws_secret_access_key"),
])
def test_bad_blocks_are_refused_naming_the_key(change, key):
    with pytest.raises(InvalidParameterError, match=f"'{key}'"):
        JobSpec.from_dict({**BASE, "sagemaker": {**SM, **change}})


def test_credentials_in_values_and_unknown_keys_are_refused():
    with pytest.raises(InvalidParameterError, match="access key"):
        JobSpec.from_dict({**BASE, "sagemaker": {**SM, "tags": {"k": "AKIAABCDEFGHIJKLMNOP"}}})
    with pytest.raises(InvalidParameterError, match="unknown key"):
        JobSpec.from_dict({**BASE, "sagemaker": {**SM, "instances": 2}})


def test_the_instance_type_must_run_the_distribution():
    from wsi_lab.cloud.instances import check_distribution, gpus_of

    assert gpus_of("ml.p4d.24xlarge") == 8 and gpus_of("ml.m5.xlarge") == 0 and gpus_of("ml.zz9.big") is None
    with pytest.raises(InvalidParameterError, match="'sagemaker.instance_type'.*no GPU"):
        check_distribution("ml.c5.xlarge", "torch_distributed", 1)
    with pytest.raises(InvalidParameterError, match="'sagemaker.processes_per_host'.*4 GPU"):
        check_distribution("ml.g5.12xlarge", "mpi", 8)
    assert check_distribution("ml.g5.12xlarge", "mpi", 4) == 4
    assert check_distribution("ml.m5.xlarge", "mpi", 2) == 0  # Horovod runs on CPUs
