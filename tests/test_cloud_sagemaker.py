"""SageMaker paths end to end against a real local AWS endpoint (moto_server on 127.0.0.1, fake
credentials): the bucket receives data and code, the jobs are created with the right image, arguments,
hyper-parameters, channels, distribution and metric definitions (read back with Describe*), status is
polled to completion, and bad input gives typed errors carrying the AWS code."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests._moto import FAKE_ENV, SAGEMAKER_ROLE, moto_endpoint, session_with_bucket  # noqa: F401
from wsi_lab.errors import InvalidParameterError

boto3 = pytest.importorskip("boto3")
pytest.importorskip("torch")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.cloud import CloudSession  # noqa: E402
from wsi_lab.cloud.errors import CloudError, UnsupportedOperationError, UploadError  # noqa: E402
from wsi_lab.cloud.training import METRIC_DEFINITIONS, launch  # noqa: E402
from wsi_lab.cloud.upload import upload_file  # noqa: E402
from wsi_lab.train.spec import JobSpec  # noqa: E402

ROLE = SAGEMAKER_ROLE
BUCKET = "wsi-lab-test"


@pytest.fixture(scope="module")
def session(moto_endpoint):  # noqa: F811
    return session_with_bucket(moto_endpoint, BUCKET)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cloud"), tile_size=32, read_size=64, width=256, height=256)


def _spec(cohort: Path, tmp: Path, **block) -> JobSpec:
    return JobSpec.from_dict({"task": "classify", "table": str(cohort), "out": str(tmp / "out"), "epochs": 1,
                              "batch_size": 8, "model": "small_cnn", "backend": "sagemaker",
                              "sagemaker": {"bucket": BUCKET, "role": ROLE, **block}})


def _capture(session: CloudSession, operation: str) -> list[dict]:
    """The parameters botocore really sends for ``operation`` (moto replaces some fields in Describe*)."""
    sent: list[dict] = []
    session.client("sagemaker").meta.events.register(f"provide-client-params.sagemaker.{operation}",
                                                     lambda params, **kw: sent.append(json.loads(json.dumps(params))))
    return sent


def test_uploads_skip_objects_of_the_same_size_and_hash(session, tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    uri = f"s3://{BUCKET}/t/a.bin"
    assert upload_file(session, f, uri).sent
    assert not upload_file(session, f, uri).sent
    f.write_bytes(b"y" * 1000)  # same size, another hash
    assert upload_file(session, f, uri).sent
    head = session.client("s3").head_object(Bucket=BUCKET, Key="t/a.bin")
    assert len(head["Metadata"]["sha256"]) == 64


def test_an_mpi_training_job_is_created_as_the_sdk_would(session, cohort, tmp_path):
    sent = _capture(session, "CreateTrainingJob")
    spec = _spec(cohort, tmp_path, instance_type="ml.g5.12xlarge", instance_count=2, distribution="mpi",
                 processes_per_host=4)
    job = launch(spec, session=session)
    d = session.client("sagemaker").describe_training_job(TrainingJobName=job.job_name)
    hp = d["HyperParameters"]
    assert hp["sagemaker_mpi_enabled"] == "true" and hp["sagemaker_mpi_num_of_processes_per_host"] == "4"
    assert json.loads(hp["sagemaker_program"]) == "wsi_lab_train.py"
    assert json.loads(hp["epochs"]) == 1 and json.loads(hp["model"]) == {"name": "small_cnn"}
    assert "pytorch-training:2.5.1-gpu-py311" in d["AlgorithmSpecification"]["TrainingImage"]
    assert d["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert d["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge" and d["ResourceConfig"]["InstanceCount"] == 2
    channels = {c["ChannelName"]: c for c in d["InputDataConfig"]}
    assert set(channels) == {"train", "slides"}
    assert all(c["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated" for c in channels.values())
    # the code archive and the data are in the bucket
    s3 = session.client("s3")
    code = json.loads(hp["sagemaker_submit_directory"])
    assert s3.head_object(Bucket=BUCKET, Key=code.split(f"{BUCKET}/", 1)[1])["ContentLength"] > 10_000
    slides = s3.list_objects_v2(Bucket=BUCKET, Prefix=channels["slides"]["DataSource"]["S3DataSource"]["S3Uri"]
                                .split(f"{BUCKET}/", 1)[1])
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in slides["Contents"]) == ["s0.svs", "s1.svs"]
    # metric definitions as sent (moto's Describe replaces them with its own)
    assert sent[-1]["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert job.wait(timeout=10, poll_s=0.1).value == "done" and job.result()["TrainingJobStatus"] == "Completed"
    # a re-run uploads nothing new
    again = launch(spec, session=session)
    assert any(line.startswith("0 file(s) uploaded") for line in again.logs())


@pytest.mark.parametrize("block, check", [
    ({"instance_type": "ml.p4d.24xlarge", "distribution": "torch_distributed", "processes_per_host": 8,
      "input_mode": "FastFile"},
     lambda d: d["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
     and d["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"),
    ({"instance_type": "ml.p4d.24xlarge", "file_system": {"id": "fs-0123456789abcdef0", "type": "FSxLustre", "path": "/fsx/cohort"},
      "vpc": {"subnets": ["subnet-1"], "security_group_ids": ["sg-1"]}},
     lambda d: d["InputDataConfig"][0]["DataSource"]["FileSystemDataSource"]["FileSystemType"] == "FSxLustre"
     and d["VpcConfig"]["Subnets"] == ["subnet-1"]),
])
def test_input_modes_distributions_and_file_systems(session, cohort, tmp_path, block, check):
    job = launch(_spec(cohort, tmp_path, **block), session=session)
    assert check(session.client("sagemaker").describe_training_job(TrainingJobName=job.job_name))


def test_stop_training_job_is_missing_locally_and_says_so(session, cohort, tmp_path):
    job = launch(_spec(cohort, tmp_path, instance_type="ml.m5.xlarge"), session=session)
    with pytest.raises(UnsupportedOperationError, match="StopTrainingJob") as exc:
        job.cancel()
    assert exc.value.code and not job.cancelled


def test_bad_input_gives_typed_errors_and_deletes_nothing(session, cohort, tmp_path):
    before = sorted(p.name for p in cohort.parent.iterdir())
    with pytest.raises(CloudError, match=r"s3://no-such-bucket.*\[NoSuchBucket\].*aws s3 mb") as exc:
        launch(_spec(cohort, tmp_path, bucket="no-such-bucket"), session=session)
    assert exc.value.code == "NoSuchBucket"
    with pytest.raises(CloudError, match="NoSuchEntity") as exc:
        launch(_spec(cohort, tmp_path, role="NoSuchRole"), session=session)
    assert exc.value.code == "NoSuchEntity"
    with pytest.raises(InvalidParameterError, match="'sagemaker.instance_type'"):
        launch(_spec(cohort, tmp_path, instance_type="ml.c5.xlarge", distribution="torch_distributed"), session=session)
    with pytest.raises(InvalidParameterError, match="'sagemaker.processes_per_host'"):
        launch(_spec(cohort, tmp_path, instance_type="ml.g5.xlarge", distribution="mpi", processes_per_host=2),
               session=session)
    with pytest.raises(UploadError, match="not in S3 and not on this disk"):
        launch(_spec(tmp_path / "missing.parquet", tmp_path), session=session)
    assert sorted(p.name for p in cohort.parent.iterdir()) == before


def test_a_slide_that_cannot_be_uploaded_is_named(session, tmp_path):
    table = make_cohort(tmp_path / "c", slides=2, tile_size=32, read_size=64, width=256, height=256)
    (tmp_path / "c" / "s1.svs").rename(tmp_path / "c" / "elsewhere.svs")
    with pytest.raises(UploadError, match="slide s1.*not on this disk"):
        launch(_spec(table, tmp_path), session=session)
    assert table.is_file() and (tmp_path / "c" / "elsewhere.svs").is_file()


def test_a_remote_job_that_does_not_exist_is_a_typed_error(session):
    from wsi_lab.cloud.job import SageMakerJob

    job = SageMakerJob(session, "training", "never-created")
    with pytest.raises(CloudError) as exc:
        job.status()
    assert exc.value.code and exc.value.operation == "DescribeTrainingJob"


def test_credentials_are_never_logged_or_written(session, cohort, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="wsi_lab")
    job = launch(_spec(cohort, tmp_path, instance_type="ml.m5.xlarge"), session=session)
    written = json.dumps(job.request) + "\n".join(job.logs()) + _spec(cohort, tmp_path).to_json()
    wsi_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("wsi_lab"))
    for secret in (FAKE_ENV["AWS_SECRET_ACCESS_KEY"], FAKE_ENV["AWS_SESSION_TOKEN"], FAKE_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in written and secret not in wsi_logs
    assert "testing" not in repr(session)


def test_the_cli_starts_training_and_tiling_jobs(session, moto_endpoint, cohort, tmp_path, capsys,  # noqa: F811
                                                  monkeypatch):
    import os
    import subprocess
    import sys

    from wsi_lab.cli import main

    spec_path = _spec(cohort, tmp_path, instance_type="ml.m5.xlarge").write(tmp_path / "spec.json")
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_endpoint}
    run = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "train", "--spec", str(spec_path), "--backend",
                          "sagemaker"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    name = re.search(r"created training job (\S+)", run.stdout).group(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the rest in this process (same parser and handlers)
    assert main(["sagemaker", "status", name, "--wait"]) == 0
    assert f"training job {name}: done" in capsys.readouterr().out
    assert main(["sagemaker", "stop", name]) == 2
    err = capsys.readouterr().err
    assert "StopTrainingJob" in err and err.count("\n") == 1
    slides = cohort.parent / "s0.svs"
    assert main(["tile", str(slides), "--out", str(tmp_path / "t"), "--sagemaker", "--bucket", BUCKET, "--role", ROLE,
                 "--image-uri", "1.dkr.ecr/wsi-lab:1", "--instance-count", "2"]) == 0
    assert "processing job: wsi-lab-tiling-" in capsys.readouterr().out and not (tmp_path / "t").exists()


def test_a_job_that_fails_remotely_fails_the_handle_with_the_reason():
    """moto never fails a job, so this one Describe answer is stubbed (botocore's Stubber): the only stub here."""
    from botocore.stub import Stubber

    from wsi_lab.cloud.errors import RemoteJobFailedError
    from wsi_lab.cloud.job import SageMakerJob

    s = CloudSession(region="us-east-1", endpoint_url="http://127.0.0.1:9")
    sm = s.client("sagemaker")
    with Stubber(sm) as stub:
        stub.add_response("describe_training_job", {
            "TrainingJobName": "j", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/j",
            "TrainingJobStatus": "Failed", "SecondaryStatus": "Failed", "FailureReason": "DataError: no tiles",
            "AlgorithmSpecification": {"TrainingInputMode": "File"}, "ResourceConfig": {
                "InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 1}, "CreationTime": 0, "ModelArtifacts": {"S3ModelArtifacts": ""}},
            {"TrainingJobName": "j"})
        job = SageMakerJob(s, "training", "j")
        assert job.wait(timeout=5, poll_s=0.1).value == "failed"
    with pytest.raises(RemoteJobFailedError, match="DataError: no tiles") as exc:
        job.result()
    assert exc.value.code == "TrainingJobFailed" and job.failures[0].error_type == "RemoteJobFailedError"


def test_train_launch_hands_sagemaker_specs_to_the_cloud_layer(session, moto_endpoint, cohort, tmp_path, monkeypatch):  # noqa: F811
    import wsi_lab.cloud  # noqa: F401 - registers the backend
    from wsi_lab.cloud.job import SageMakerJob
    from wsi_lab.train.launcher import launch as train_launch

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    spec = _spec(cohort, tmp_path, instance_type="ml.m5.xlarge")
    job = train_launch(spec)
    assert isinstance(job, SageMakerJob) and job.status().value == "done"
    assert not (tmp_path / "out").exists()  # nothing local is written for a remote job
