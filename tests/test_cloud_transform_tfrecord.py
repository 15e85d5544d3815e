"""Batch Transform over TFRecord shards against moto: the job as created (read back with DescribeTransformJob),
then its container's work as SageMaker does it (each shard split into records, MultiRecord requests of several
records to the real model server, the answers assembled one per line into ``<shard>.out``), read back into a
predictions TileTable."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests._moto import moto_endpoint  # noqa: F401

pytest.importorskip("boto3")
torch = pytest.importorskip("torch")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.cloud import CloudSession  # noqa: E402
from wsi_lab.cloud.deploy import batch_transform, create_model, read_transform_outputs  # noqa: E402
from wsi_lab.data.tfrecord import frame_record  # noqa: E402
from wsi_lab.data.tfrecord_stream import split_records  # noqa: E402
from wsi_lab.errors import DataError  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "wsi-lab-transform-tfr"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/wsi-lab:0.1"


def test_batch_transform_over_tfrecord_shards_reads_back_into_a_table(moto_endpoint, tmp_path):  # noqa: F811
    from wsi_lab.data.export_tfrecord import export_tfrecord
    from wsi_lab.data.table import read_table
    from wsi_lab.infer.serve import TFRECORD_TYPE, ModelServer
    from wsi_lab.models import TileClassifier, save_checkpoint

    session = CloudSession(region="us-east-1", endpoint_url=moto_endpoint)
    s3 = session.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    table = read_table(make_cohort(tmp_path / "cohort", tile_size=32, read_size=64, width=256, height=256))
    table = table.drop(columns=["split"])  # one split "all": every tile in the shards
    manifest = export_tfrecord(table, tmp_path / "export", shards=2, variant="raw", workers=1)
    for f in manifest["files"]:
        s3.upload_file(str(tmp_path / "export" / f["path"]), BUCKET, f"shards/{f['path']}")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", TileClassifier("small_cnn", classes=["a", "b"], input_size=32).eval())
    model = create_model(ckpt, IMAGE, ROLE, BUCKET, session=session, model_name="wsi-lab-model-tfr")
    job = batch_transform(model, f"s3://{BUCKET}/shards/", f"s3://{BUCKET}/out/", session=session,
                          content_type=TFRECORD_TYPE, max_concurrent_transforms=2, max_payload_mb=1)
    t = session.client("sagemaker").describe_transform_job(TransformJobName=job.job_name)
    assert t["TransformInput"]["SplitType"] == "TFRecord" and t["TransformInput"]["ContentType"] == TFRECORD_TYPE
    assert t["MaxPayloadInMB"] == 1 and t["MaxConcurrentTransforms"] == 2 and t["BatchStrategy"] == "MultiRecord"
    assert t["TransformOutput"]["AssembleWith"] == "Line"
    assert job.wait(timeout=10, poll_s=0.1).value == "done"
    # the transform container's work: records of each shard, 5 per request, answers one per line
    with ModelServer(ckpt) as srv:
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="shards/")["Contents"]:
            records = split_records(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
            lines = []
            for i in range(0, len(records), 5):
                body = b"".join(b"".join(frame_record(r)) for r in records[i:i + 5])
                req = urllib.request.Request(srv.url + "/invocations", data=body, headers={"Content-Type": TFRECORD_TYPE})
                lines.append(urllib.request.urlopen(req, timeout=30).read().decode())
            s3.put_object(Bucket=BUCKET, Key="out/" + obj["Key"][len("shards/"):] + ".out", Body="\n".join(lines) + "\n")
        first = json.loads(lines[0])
    pred = read_transform_outputs(f"s3://{BUCKET}/out/", table, ["a", "b"], session=session)
    assert pred.attrs["wsi_lab"]["predict"]["missing"] == 0 and pred["pred"].notna().all()
    key = first["records"][0]
    row = pred[(pred["slide_id"] == key["slide_id"]) & (pred["x"] == key["x"]) & (pred["y"] == key["y"])]
    assert row["prob_a"].iloc[0] == pytest.approx(first["predictions"][0][0], abs=1e-6)
    # a malformed output object is a typed error naming it
    s3.put_object(Bucket=BUCKET, Key="bad/x.tfrecord.out", Body=b'{"predictions": [[0.5, 0.5]]}\n')
    with pytest.raises(DataError, match=r"bad/x\.tfrecord\.out: line 1"):
        read_transform_outputs(f"s3://{BUCKET}/bad/", table, ["a", "b"], session=session)
