"""What SageMaker's containers would run, in a temporary container-like layout: the training job created
against moto is read back (Describe*), its code archive and channels are fetched from the local S3, and
its entry point runs with the SM_* variables SageMaker sets; the model folder becomes ``model.tar.gz`` at
the job's ``ModelArtifacts`` key; the serving entry point answers /ping and /invocations over it; Batch
Transform outputs written as SageMaker writes them are read back into a predictions TileTable; the
Processing job's own command (``wsi-lab tile``) tiles the slides of its input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

from tests._moto import SAGEMAKER_ROLE, moto_endpoint, session_with_bucket  # noqa: F401

boto3 = pytest.importorskip("boto3")
pytest.importorskip("torch")
pytest.importorskip("timm")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.cloud.deploy import batch_transform, create_model, deploy, package_model, read_transform_outputs  # noqa: E402
from wsi_lab.cloud.errors import UnsupportedOperationError  # noqa: E402
from wsi_lab.cloud.processing import tiling_job  # noqa: E402
from wsi_lab.cloud.training import METRIC_DEFINITIONS, launch  # noqa: E402
from wsi_lab.cloud.upload import download_tree, parse_s3_uri  # noqa: E402
from wsi_lab.train.spec import JobSpec  # noqa: E402

ROLE = SAGEMAKER_ROLE
BUCKET = "wsi-lab-container"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/wsi-lab:0.1"


@pytest.fixture(scope="module")
def session(moto_endpoint):  # noqa: F811
    return session_with_bucket(moto_endpoint, BUCKET)


@pytest.fixture(scope="module")
def trained(session, tmp_path_factory):
    """A SageMaker training job created against moto, then run as its container would run it."""
    tmp = tmp_path_factory.mktemp("sm")
    table = make_cohort(tmp / "cohort", tile_size=32, read_size=64, width=256, height=256)
    spec = JobSpec.from_dict({"task": "classify", "table": str(table), "out": str(tmp / "out"), "epochs": 1,
                              "batch_size": 8, "model": "small_cnn", "backend": "sagemaker",
                              "sagemaker": {"bucket": BUCKET, "role": ROLE, "instance_type": "ml.m5.xlarge"}})
    job = launch(spec, session=session)
    d = session.client("sagemaker").describe_training_job(TrainingJobName=job.job_name)
    ml = tmp / "opt" / "ml"
    code = ml / "code"
    hps = {k: json.loads(v) for k, v in d["HyperParameters"].items()}
    src = parse_s3_uri(hps["sagemaker_submit_directory"])
    body = session.client("s3").get_object(Bucket=src.bucket, Key=src.key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(code, filter="data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AWS_"))}
    for ch in d["InputDataConfig"]:
        local = ml / "input" / "data" / ch["ChannelName"]
        download_tree(session, ch["DataSource"]["S3DataSource"]["S3Uri"], local)
        env[f"SM_CHANNEL_{ch['ChannelName'].upper()}"] = str(local)
    (ml / "model").mkdir(parents=True)
    env.update(SM_MODEL_DIR=str(ml / "model"), SM_OUTPUT_DIR=str(ml / "output"), SM_OUTPUT_DATA_DIR=str(ml / "output" / "data"),
               SM_INPUT_DIR=str(ml / "input"), SM_HPS=json.dumps(hps), SM_HOSTS=json.dumps(["algo-1"]),
               SM_CURRENT_HOST="algo-1", SM_NUM_GPUS="0", SM_NUM_CPUS="2", SM_CHANNELS=json.dumps(
                   [c["ChannelName"] for c in d["InputDataConfig"]]), PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
    # the training toolkit also passes the hyper-parameters as arguments; the entry point reads SM_HPS
    args = [a for k, v in hps.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
    proc = subprocess.run([sys.executable, hps["sagemaker_program"], *args], cwd=code, env=env, capture_output=True,
                          text=True, timeout=300)
    return {"job": job, "describe": d, "ml": ml, "proc": proc, "table": table, "tmp": tmp}


def test_the_training_entry_point_trains_in_the_container_layout(trained, session):
    proc, ml, d = trained["proc"], trained["ml"], trained["describe"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (ml / "model" / "checkpoints" / "best.pt").is_file() and (ml / "model" / "metrics.jsonl").is_file()
    assert not (ml / "output" / "failure").exists()
    # the code that ran is the archive's own copy of the package, not this checkout
    assert "wsi-lab: running classify (local, 1 process(es))" in proc.stdout
    # SageMaker's metric definitions parse the entry point's own lines
    found = {m["Name"] for m in METRIC_DEFINITIONS for line in proc.stdout.splitlines() if re.search(m["Regex"], line)}
    assert found == {"train:loss", "validation:loss", "validation:accuracy"}
    # SageMaker packs SM_MODEL_DIR into model.tar.gz at the job's ModelArtifacts key
    artifact = parse_s3_uri(d["ModelArtifacts"]["S3ModelArtifacts"])
    tar = package_model(ml / "model", trained["tmp"] / "model.tar.gz")
    session.client("s3").upload_file(str(tar), artifact.bucket, artifact.key)
    with tarfile.open(tar) as t:
        assert {"checkpoints/best.pt", "checkpoints/last.pt", "spec.json"} <= set(t.getnames())


def test_logs_and_metrics_come_from_cloudwatch(trained, session):
    job, proc = trained["job"], trained["proc"]
    logs = session.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stream = f"{job.job_name}/algo-1-1700000000"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
        {"timestamp": now + i, "message": line} for i, line in enumerate(proc.stdout.splitlines()) if line])
    assert any(line.startswith("Training Loss:") for line in job.logs())
    job.wait(timeout=10, poll_s=0.1)
    m = job.metrics()
    loss = m[m["name"] == "train:loss"]["value"].tolist()
    assert len(loss) == 1 and loss[0] > 0


def test_failure_file_for_a_bad_container_input(trained, tmp_path):
    code = trained["ml"] / "code"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(SM_HPS=json.dumps({"task": "classify", "wsi_lab_table": "none.parquet"}),
               SM_CHANNEL_TRAIN=str(tmp_path), SM_OUTPUT_DIR=str(tmp_path / "output"), SM_MODEL_DIR=str(tmp_path / "m"),
               PYTHONPATH=str(code))
    proc = subprocess.run([sys.executable, "wsi_lab_train.py"], cwd=code, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "DataError" in (tmp_path / "output" / "failure").read_text()


def test_model_endpoint_serving_and_batch_transform(trained, session, tmp_path):
    from wsi_lab.data.table import read_table
    from wsi_lab.data.tile_reader import read_tile, slide_paths_of
    from wsi_lab.io import encode_image
    from wsi_lab.slide import open_slide

    d = trained["describe"]
    model = create_model(d["ModelArtifacts"]["S3ModelArtifacts"], IMAGE, ROLE, BUCKET, session=session,
                         model_name=f"{d['TrainingJobName']}-model")
    endpoint = deploy(model, instance_type="ml.g4dn.xlarge", session=session, endpoint_name=f"{model}-ep")
    assert endpoint.wait(timeout=10, poll_s=0.1) == "InService"
    desc = session.client("sagemaker").describe_model(ModelName=model)
    assert desc["PrimaryContainer"]["Image"] == IMAGE
    # the serving entry point over the model.tar.gz that SageMaker would extract into /opt/ml/model
    model_dir = tmp_path / "opt" / "ml" / "model"
    art = parse_s3_uri(d["ModelArtifacts"]["S3ModelArtifacts"])
    body = session.client("s3").get_object(Bucket=art.bucket, Key=art.key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(model_dir, filter="data")
    # the serve entry point's two steps, in this process (a subprocess would import torch once more)
    from wsi_lab.cloud.entry import find_checkpoint
    from wsi_lab.infer.serve import ModelServer

    assert find_checkpoint(model_dir) == model_dir / "checkpoints" / "best.pt"
    srv = ModelServer(find_checkpoint(model_dir), "127.0.0.1", 0).start()
    try:
        url = srv.url
        assert urllib.request.urlopen(url + "/ping", timeout=5).status == 200
        # Batch Transform: the job as created, then its container's work done against the local server
        full = read_table(trained["table"])
        table = full[full["slide_id"] == full["slide_id"].iloc[0]].head(6)
        tiles_in = f"s3://{BUCKET}/tiles-in/"
        s3 = session.client("s3")
        slide = open_slide(slide_paths_of(table)[str(table["slide_id"].iloc[0])])
        for row in table.itertuples():
            s3.put_object(Bucket=BUCKET, Key=f"tiles-in/{row.slide_id}/tiles/{row.x}_{row.y}.jpg", Body=encode_image(
                read_tile(slide, row.x, row.y, row.level, row.read_size, row.tile_size), "jpeg"))
        job = batch_transform(model, tiles_in, f"s3://{BUCKET}/tiles-out/", session=session, max_concurrent_transforms=8,
                              max_payload_mb=2)
        t = session.client("sagemaker").describe_transform_job(TransformJobName=job.job_name)
        assert t["MaxConcurrentTransforms"] == 8 and t["MaxPayloadInMB"] == 2
        assert t["TransformInput"]["ContentType"] == "image/jpeg"
        assert job.wait(timeout=10, poll_s=0.1).value == "done"
        with pytest.raises(UnsupportedOperationError, match="StopTransformJob"):
            job.cancel()
        sent = {}
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="tiles-in/")["Contents"]:
            data = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            req = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "image/jpeg"})
            answer = urllib.request.urlopen(req, timeout=30).read()
            sent[obj["Key"]] = json.loads(answer)["predictions"][0]
            s3.put_object(Bucket=BUCKET, Key="tiles-out/" + obj["Key"][len("tiles-in/"):] + ".out", Body=answer)
    finally:
        srv.close()
    pred = read_transform_outputs(f"s3://{BUCKET}/tiles-out/", table, ["a", "b"], session=session)
    first = table.iloc[0]
    assert pred["prob_a"].iloc[0] == pytest.approx(sent[f"tiles-in/{first.slide_id}/tiles/{first.x}_{first.y}.jpg"][0],
                                                   abs=1e-6)
    assert pred["pred"].notna().all() and pred.attrs["wsi_lab"]["predict"]["missing"] == 0


def test_the_processing_job_runs_wsi_lab_tile_over_its_shard(session, tmp_path):
    from wsi_lab.testing import make_slide
    from wsi_lab.tiling import TilingParams

    slides = tmp_path / "slides"
    slides.mkdir()
    make_slide(slides / "p0.svs", 512, 512, source="procedural", tissue_fraction=1.0, associated=False)
    params = TilingParams(tile_size=128, min_tissue=0.1).validate()
    job = tiling_job(params, [slides], BUCKET, ROLE, IMAGE, instance_count=4, session=session)
    d = session.client("sagemaker").describe_processing_job(ProcessingJobName=job.job_name)
    inputs = {i["InputName"]: i["S3Input"] for i in d["ProcessingInputs"]}
    assert inputs["slides"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert job.request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 4  # moto's Describe drops it
    entry = d["AppSpecification"]["ContainerEntrypoint"]
    assert entry[:2] == ["wsi-lab", "tile"] and d["AppSpecification"]["ImageUri"] == IMAGE
    assert job.wait(timeout=10, poll_s=0.1).value == "done"
    # the container: inputs at their LocalPath, then the job's own command
    root = tmp_path / "container"
    for i in inputs.values():
        download_tree(session, i["S3Uri"], root / i["LocalPath"].lstrip("/"))
    args = [a.replace("/opt/ml", str(root / "opt" / "ml")) for a in entry[1:]]
    proc = subprocess.run([sys.executable, "-m", "wsi_lab.cli", *args, "--workers", "1"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = root / "opt" / "ml" / "processing" / "output" / "tiles" / "p0" / "tiles.parquet"
    assert out.is_file()
