"""SageMaker Pipe mode in a container-like layout: real FIFOs ``/opt/ml/input/data/train_0_<epoch>`` in a
temporary ``/opt/ml`` tree, a writer thread streaming the TFRecord shard into each epoch's FIFO as SageMaker's
agent does, SM_* variables with the channel in Pipe mode; the container's entry point trains the torch
classifier from the stream and writes the model folder SageMaker packs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests._moto import moto_endpoint  # noqa: F401

pytest.importorskip("torch")

from tests._traindata import make_cohort
from wsi_lab.data.export_tfrecord import export_tfrecord
from wsi_lab.data.table import read_table


def _agent(data_dir: Path, channel: str, shard: bytes, epochs: int, errors: list) -> threading.Thread:
    """SageMaker's agent: one FIFO per epoch, created once the previous one is drained, the shard streamed in."""
    def run() -> None:
        try:
            for epoch in range(epochs):
                fifo = data_dir / f"{channel}_{epoch}"
                os.mkfifo(fifo)
                with open(fifo, "wb") as fh:  # blocks until the trainer opens it
                    for i in range(0, len(shard), 4096):  # in pieces, as a pipe delivers them
                        fh.write(shard[i:i + 4096])
        except OSError as exc:  # reported by the test (a reader that closed early: BrokenPipeError)
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("variant", ["raw", "jpeg"])
def test_the_entry_point_trains_from_pipe_mode_tfrecord_channels(tmp_path, monkeypatch, variant):
    from wsi_lab.cloud.entry import main

    table = make_cohort(tmp_path / "cohort", tile_size=32, read_size=64, width=256, height=256)
    manifest = export_tfrecord(read_table(table), tmp_path / "export", shards=1, variant=variant, workers=1)
    shard_entry = next(f for f in manifest["files"] if f["split"] == "train")
    shard = (tmp_path / "export" / shard_entry["path"]).read_bytes()
    classes = [k for k, _ in sorted(manifest["label_index"].items(), key=lambda kv: kv[1])]
    ml = tmp_path / "opt" / "ml"
    data_dir = ml / "input" / "data"
    data_dir.mkdir(parents=True)
    (ml / "model").mkdir()
    hps = {"task": "classify", "model": {"name": "small_cnn"}, "epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0,
           "num_workers": 0, "device": "cpu", "wsi_lab_classes": classes, "wsi_lab_tile_size": 32}
    for k in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SM_HPS", json.dumps({k: json.dumps(v) for k, v in hps.items()}))
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", json.dumps({"train_0": {
        "TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key", "RecordWrapperType": "None"}}))
    monkeypatch.setenv("SM_CHANNELS", json.dumps(["train_0"]))
    monkeypatch.setenv("SM_INPUT_DIR", str(ml / "input"))
    monkeypatch.setenv("SM_MODEL_DIR", str(ml / "model"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(ml / "output"))
    errors: list = []
    agent = _agent(data_dir, "train_0", shard, 2, errors)
    assert main(["train"]) == 0
    agent.join(10)
    assert not errors and not agent.is_alive()
    # both epochs' FIFOs were read to the end, and the model folder is what SageMaker packs
    assert sorted(p.name for p in data_dir.iterdir()) == ["train_0_0", "train_0_1"]
    records = [json.loads(line) for line in (ml / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(r["tiles"] == shard_entry["records"] for r in records)
    assert (ml / "model" / "checkpoints" / "best.pt").is_file() and not (ml / "output" / "failure").exists()
    from wsi_lab.models.checkpoint import read_checkpoint

    assert read_checkpoint(ml / "model" / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_corrupt_pipe_stream_fails_the_job_with_a_reason(tmp_path, monkeypatch):
    from wsi_lab.cloud.entry import main

    ml = tmp_path / "opt" / "ml"
    (ml / "input" / "data").mkdir(parents=True)
    hps = {"task": "classify", "model": "small_cnn", "epochs": 1, "batch_size": 4, "device": "cpu",
           "wsi_lab_classes": ["a", "b"], "wsi_lab_tile_size": 32}
    monkeypatch.setenv("SM_HPS", json.dumps(hps))
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", json.dumps({"train_0": {"TrainingInputMode": "Pipe"}}))
    monkeypatch.setenv("SM_INPUT_DIR", str(ml / "input"))
    monkeypatch.setenv("SM_MODEL_DIR", str(ml / "model"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(ml / "output"))
    errors: list = []
    agent = _agent(ml / "input" / "data", "train_0", b"not a tfrecord stream at all", 1, errors)
    assert main(["train"]) == 2
    agent.join(10)
    assert "DataError" in (ml / "output" / "failure").read_text()
    assert not (ml / "model" / "checkpoints" / "last.pt").exists()


def test_a_pipe_job_streams_each_process_its_own_shards(moto_endpoint, tmp_path):  # noqa: F811
    """Launch against moto: the export's training shards are uploaded, each process's channel lists its own
    (an S3 manifest file), sharded over the hosts; the framework image reads the pipes (no image_uri)."""
    from wsi_lab.cloud import CloudSession
    from wsi_lab.cloud.training import launch
    from wsi_lab.cloud.upload import parse_s3_uri
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.train.spec import JobSpec

    session = CloudSession(region="us-east-1", endpoint_url=moto_endpoint)
    s3 = session.client("s3")
    s3.create_bucket(Bucket="wsi-lab-pipe")
    table = make_cohort(tmp_path / "cohort", tile_size=32, read_size=64, width=256, height=256)
    exported = export_tfrecord(read_table(table), tmp_path / "export", shards=4, variant="jpeg", workers=1)
    export_val_records = exported["records_per_split"]["val"]
    assert all(f["labelled"] == f["records"] for f in exported["files"])  # every tile of the cohort is labelled
    block = {"bucket": "wsi-lab-pipe", "role": "arn:aws:iam::123456789012:role/SageMakerRole",
             "instance_type": "ml.g5.12xlarge", "instance_count": 2, "distribution": "mpi", "processes_per_host": 2,
             "input_mode": "Pipe"}
    spec = JobSpec.from_dict({"task": "classify", "table": str(tmp_path / "export"), "out": str(tmp_path / "out"),
                              "epochs": 1, "batch_size": 8, "model": "small_cnn", "backend": "sagemaker",
                              "sagemaker": block})
    job = launch(spec, session=session)
    d = session.client("sagemaker").describe_training_job(TrainingJobName=job.job_name)
    assert "pytorch-training:" in d["AlgorithmSpecification"]["TrainingImage"]
    assert d["AlgorithmSpecification"]["TrainingInputMode"] == "Pipe"
    hps = {k: json.loads(v) for k, v in d["HyperParameters"].items()}
    assert hps["wsi_lab_classes"] == ["a", "b"] and hps["wsi_lab_tile_size"] == 32
    assert hps["wsi_lab_pipe_records"] >= 2 and hps["wsi_lab_pipe_val_records"] == export_val_records
    *train_channels, val = d["InputDataConfig"]
    assert val["ChannelName"] == "validation" and val["InputMode"] == "Pipe"
    assert val["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"  # rank 0 evaluates all
    listed = []
    for i, ch in enumerate(train_channels):
        src = ch["DataSource"]["S3DataSource"]
        assert ch["ChannelName"] == f"train_{i}" and ch["InputMode"] == "Pipe" and ch["ShuffleConfig"]["Seed"] == 0
        assert src["S3DataType"] == "ManifestFile" and src["S3DataDistributionType"] == "ShardedByS3Key"
        loc = parse_s3_uri(src["S3Uri"])
        prefix, *keys = json.loads(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
        base = parse_s3_uri(prefix["prefix"])
        for k in keys:  # every listed shard is in the bucket
            assert s3.head_object(Bucket=base.bucket, Key=base.key + k)["ContentLength"] > 0
        listed.append(keys)
    assert len(listed) == 2 and not set(listed[0]) & set(listed[1]) and len(listed[0] + listed[1]) == 4
    n_val = sum(1 for f in exported["files"] if f["split"] == "val")
    assert any(line.startswith(f"{5 + n_val} file(s) uploaded") for line in job.logs())  # the code, 4 + val shards
    assert any(line.startswith("0 file(s) uploaded") for line in launch(spec, session=session).logs())
    with pytest.raises(InvalidParameterError, match="not a finished TFRecord export"):
        launch(spec.with_changes(table=str(table)), session=session)
    # torch_distributed starts one process per GPU (4 on a g5.12xlarge): one channel each, whatever processes_per_host
    ddp = launch(spec.with_changes(sagemaker={**block, "instance_count": 1, "distribution": "torch_distributed",
                                              "processes_per_host": 1}), session=session)
    d = session.client("sagemaker").describe_training_job(TrainingJobName=ddp.job_name)
    assert [c["ChannelName"] for c in d["InputDataConfig"]] == ["train_0", "train_1", "train_2", "train_3", "validation"]


def _frames(n: int, size: int = 8, label: int = 1) -> bytes:
    """``n`` framed ``raw`` tile records of ``size``² black tiles."""
    from wsi_lab.data.tfrecord import FeatureValue, encode_example, frame_record

    ex: dict[str, FeatureValue] = {"image_raw": bytes(size * size * 3), "height": size, "width": size, "depth": 3, "label": label,
          "slide_string": b"s", "x": 0, "y": 0}
    return b"".join(b"".join(frame_record(encode_example(ex))) for _ in range(n))


def test_the_stream_reader_stops_at_its_limit_drains_the_rest_and_refuses_a_short_stream(tmp_path):
    from wsi_lab.cloud.errors import ShortStreamError
    from wsi_lab.cloud.pipe import PipeTileDataset, epoch_limit
    from wsi_lab.errors import DataError, InvalidParameterError

    errors: list = []
    agent = _agent(tmp_path, "train_0", _frames(10), 1, errors)
    ds = PipeTileDataset(tmp_path, "train_0", 8, limit=6)
    assert len(ds) == 6 and len(list(ds)) == 6
    agent.join(10)
    assert not errors and not agent.is_alive()  # the writer wrote all 10: the 4 past the limit were read
    assert ds.yielded == [6] and ds.drained == [4]
    # a stream holding fewer tiles than its limit: a typed error naming the FIFO (a DataError)
    agent = _agent(tmp_path, "train_1", _frames(3), 1, errors)
    with pytest.raises(ShortStreamError, match=r"train_1_0: the stream ended after 3 tile\(s\).*promise of 6"):
        list(PipeTileDataset(tmp_path, "train_1", 8, limit=6))
    assert issubclass(ShortStreamError, DataError)
    # validation: every tile is read; a promise is a lower bound; another host's copy is drained
    agent = _agent(tmp_path, "validation", _frames(5), 2, errors)
    reader = PipeTileDataset(tmp_path, "validation", 8, promised=5)
    assert len(list(reader)) == 5
    drainer = PipeTileDataset(tmp_path, "validation", 8, promised=5, role="drain")
    drainer.epoch = 1
    assert list(drainer) == [] and drainer.drained == [5]
    agent.join(10)
    assert not errors and not agent.is_alive()
    # the cap: the same steps on every rank, from the launch's promise
    assert epoch_limit({"wsi_lab_pipe_records": 13}, 2, 8) == 12 and epoch_limit({}, 1, 8) is None
    with pytest.raises(InvalidParameterError, match="wsi_lab_pipe_records"):
        epoch_limit({}, 2, 8)
    with pytest.raises(InvalidParameterError, match="less than one batch"):
        epoch_limit({"wsi_lab_pipe_records": 3}, 2, 8)


def test_the_vae_trains_from_a_pipe_channel_and_evaluates_the_validation_channel(tmp_path, monkeypatch):
    from wsi_lab.cloud.entry import main
    from wsi_lab.cloud.pipe_plan import plan_pipe

    table = make_cohort(tmp_path / "cohort", tile_size=64, read_size=64, width=256, height=128)  # the VAE takes >= 64²
    manifest = export_tfrecord(read_table(table), tmp_path / "export", shards=1, variant="raw", workers=1)
    plan = plan_pipe(tmp_path / "export", manifest, "vae", "train", "val", processes=1, hosts=1, batch_size=8)
    assert plan.steps_per_epoch is None and plan.val_records == manifest["records_per_split"]["val"]
    read = {split: b"".join((tmp_path / "export" / f["path"]).read_bytes() for f in manifest["files"]
                            if f["split"] == split) for split in ("train", "val")}
    ml = tmp_path / "opt" / "ml"
    data_dir = ml / "input" / "data"
    data_dir.mkdir(parents=True)
    hps = {"task": "vae", "model": {"name": "vae", "latent_dim": 8}, "epochs": 2, "batch_size": 8, "seed": 0,
           "num_workers": 0, "device": "cpu", **plan.hyperparameters()}
    for k in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SM_HPS", json.dumps({k: json.dumps(v) for k, v in hps.items()}))
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", json.dumps({"train_0": {"TrainingInputMode": "Pipe"},
                                                           "validation": {"TrainingInputMode": "Pipe"}}))
    monkeypatch.setenv("SM_INPUT_DIR", str(ml / "input"))
    monkeypatch.setenv("SM_MODEL_DIR", str(ml / "model"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(ml / "output"))
    errors: list = []
    agents = [_agent(data_dir, "train_0", read["train"], 2, errors), _agent(data_dir, "validation", read["val"], 2, errors)]
    assert main(["train"]) == 0
    for a in agents:
        a.join(10)
    assert not errors and not any(a.is_alive() for a in agents)
    records = [json.loads(line) for line in (ml / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert [r["tiles"] for r in records if r["split"] == "val"] == [plan.val_records] * 2
    assert all(r["loss"] > 0 for r in records)
    from wsi_lab.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ml / "model" / "checkpoints" / "last.pt")
    assert ckpt["task"] == "vae" and ckpt["epoch"] == 2


@pytest.mark.parametrize("task,why", [("mil", "per-slide feature files"), ("segment", "carries no masks"),
                                      ("features", "one feature file per slide")])
def test_tasks_that_do_not_train_on_tile_records_are_refused_in_pipe_mode(tmp_path, monkeypatch, task, why):
    from wsi_lab.cloud.entry import main
    from wsi_lab.cloud.training import launch
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.train.spec import JobSpec

    extra = {"mil": {"features": str(tmp_path / "features")}, "segment": {"annotations": str(tmp_path / "ann")},
             "features": {"model": "resnet18"}}[task]
    block = {"bucket": "no-such-bucket", "role": "arn:aws:iam::123456789012:role/R", "instance_type": "ml.m5.xlarge",
             "input_mode": "Pipe"}
    spec = JobSpec.from_dict({"task": task, "table": str(tmp_path / "export"), "out": str(tmp_path / "out"),
                              "backend": "sagemaker", "sagemaker": block, **extra})
    with pytest.raises(InvalidParameterError, match=why):  # before any AWS call: no endpoint is needed
        launch(spec, endpoint_url="http://127.0.0.1:9")
    # the container refuses it too, with the reason in SageMaker's failure file
    ml = tmp_path / "opt" / "ml"
    monkeypatch.setenv("SM_HPS", json.dumps({"task": task, "wsi_lab_tile_size": 32, **extra}))
    monkeypatch.setenv("SM_INPUT_DATA_CONFIG", json.dumps({"train_0": {"TrainingInputMode": "Pipe"}}))
    monkeypatch.setenv("SM_INPUT_DIR", str(ml / "input"))
    monkeypatch.setenv("SM_MODEL_DIR", str(ml / "model"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(ml / "output"))
    assert main(["train"]) == 2
    assert why in (ml / "output" / "failure").read_text()


def test_the_plan_promises_each_process_what_any_sharding_over_the_hosts_gives_it(tmp_path):
    from wsi_lab.cloud.pipe_plan import pipe_processes, plan_pipe, sure_records
    from wsi_lab.errors import InvalidParameterError

    assert pipe_processes("torch_distributed", 1, 4) == 4 and pipe_processes("mpi", 2, 4) == 2
    assert pipe_processes(None, 1, 0) == 1
    assert sure_records([5, 3, 9, 4], 2) == 7 and sure_records([5, 3, 9], 2) == 3 and sure_records([5], 2) == 0
    # four shards of 10, 6, 8 and 8 records; 4 of the last one are unlabelled
    files = []
    for k, (n, unlabelled) in enumerate([(10, 0), (6, 0), (8, 0), (8, 4)]):
        rel = f"train/train-{k:05d}-of-00004.tfrecord"
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(_frames(n - unlabelled) + _frames(unlabelled, label=-1))
        files.append({"path": rel, "split": "train", "records": n})
    manifest = {"files": files, "label_index": {"a": 0, "b": 1}}
    one_host = plan_pipe(tmp_path, manifest, "classify", "train", "val", processes=2, hosts=1, batch_size=4)
    assert one_host.channels == [[files[0]["path"], files[2]["path"]], [files[1]["path"], files[3]["path"]]]
    assert one_host.records_per_process == min(10 + 8, 6 + 4) and one_host.steps_per_epoch == 10 // 2
    assert one_host.tile_size == 8 and one_host.val_shards == [] and "wsi_lab_pipe_val_records" not in \
        one_host.hyperparameters()
    # on 2 hosts a host may get either shard of its channel: the promise is the smaller one's
    two_hosts = plan_pipe(tmp_path, manifest, "classify", "train", "val", processes=2, hosts=2, batch_size=4)
    assert two_hosts.records_per_process == min(8, 4) and two_hosts.steps_per_epoch == 4 // 1
    assert plan_pipe(tmp_path, manifest, "vae", "train", "val", 2, 2, 4).records_per_process == min(8, 6)
    # an export's manifest counts each shard's labelled tiles: the plan takes them, no shard is read again
    counted = {**manifest, "files": [{**f, "labelled": n} for f, n in zip(files, [10, 6, 8, 2])]}
    assert plan_pipe(tmp_path, counted, "classify", "train", "val", 2, 1, 4).records_per_process == min(18, 8)
    with pytest.raises(InvalidParameterError, match="at least one per process"):
        plan_pipe(tmp_path, manifest, "classify", "train", "val", processes=4, hosts=2, batch_size=8)
    with pytest.raises(InvalidParameterError, match="less than one batch"):
        plan_pipe(tmp_path, manifest, "classify", "train", "val", processes=2, hosts=2, batch_size=32)
