"""launch(spec) -> Job with the local and torchrun backends (real subprocesses, 2 DDP processes with
gloo on CPU), typed failures, cancel, the Horovod refusal, and the CLI commands' registration."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.errors import DataError, MissingDependencyError  # noqa: E402
from wsi_lab.runs import JobStatus  # noqa: E402
from wsi_lab.train import JobSpec, launch  # noqa: E402
from wsi_lab.train.cli import register  # noqa: E402


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    # 4 slides of 24 tiles (32 px): 72 training tiles (s0-s2, labels a, b, a), 24 validation tiles (s3).
    # An even training count: DistributedSampler pads an odd one with a repeated tile on 2 ranks.
    return make_cohort(tmp_path_factory.mktemp("launch"), slides=4, tile_size=32, read_size=64, width=384,
                       height=256, val_slides=("s3",))


def _spec(table: Path, out: Path, **kw) -> JobSpec:
    # no dropout: the 1- and 2-process runs then draw no random numbers in the model
    return JobSpec.from_dict({"task": "classify", "table": str(table), "out": str(out), "epochs": 2, "batch_size": 8,
                              "lr": 1e-3, "seed": 3, "model": {"name": "small_cnn", "dropout": 0.0,
                                                              "dense_dropout": 0.0}, **kw})


def test_local_launch_streams_logs_metrics_and_progress(table, tmp_path):
    events = []
    job = launch(_spec(table, tmp_path / "local"), progress=events.append)
    assert job.wait(300) == JobStatus.DONE, job.logs(tail=30)
    result = job.result()
    assert result["epochs_run"] == 2 and Path(result["checkpoint"]).is_file()
    df = job.metrics()
    assert list(df["epoch"]) == [1, 1, 2, 2] and list(df["split"]) == ["train", "val"] * 2
    assert {"loss", "accuracy", "balanced_accuracy", "auc", "tiles_per_s"} <= set(df.columns)
    assert len(job.metrics("val")) == 2
    logs = job.logs()
    assert sum(line.startswith("Training Loss: ") for line in logs) == 2
    assert any(line.startswith("Validation Accuracy: ") for line in logs)
    assert [e.done for e in events if e.unit == "epochs"] == [1, 2]
    assert job.logs(tail=1) == logs[-1:]


def test_torchrun_two_processes_equal_one_process(table, tmp_path):
    one = launch(_spec(table, tmp_path / "one"))
    assert one.wait(300) == JobStatus.DONE, one.logs(tail=30)
    two = launch(_spec(table, tmp_path / "two", backend="torchrun", nproc=2))
    assert two.wait(400) == JobStatus.DONE, two.logs(tail=40)
    m1, m2 = one.metrics(), two.metrics()
    assert list(m2["epoch"]) == [1, 1, 2, 2]
    for col in ("loss", "accuracy"):
        assert m2[col].to_numpy() == pytest.approx(m1[col].to_numpy(), rel=1e-4, abs=1e-5, nan_ok=True), col
    assert list(m2["tiles"]) == list(m1["tiles"])  # every tile seen once per epoch over both ranks
    w1 = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    w2 = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    assert len([ln for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if ln]) == 4  # rank 0 only


def test_a_failing_job_reports_the_typed_error(tmp_path):
    t = make_cohort(tmp_path / "c", tile_size=32, read_size=64, width=256, height=256)
    (tmp_path / "c" / "s0.svs").unlink()
    job = launch(_spec(t, tmp_path / "o"))
    assert job.wait(300) == JobStatus.FAILED
    assert isinstance(job.error, DataError) and "missing slide" in str(job.error)
    assert job.failures and job.failures[0].error_type == "DataError"
    with pytest.raises(DataError):
        job.result()


def test_cancel_stops_the_job_and_leaves_no_partial_checkpoint(table, tmp_path):
    job = launch(_spec(table, tmp_path / "c", epochs=200))
    for _ in range(600):
        if job.metrics().shape[0] >= 2 or job.done():
            break
        job.wait(0.25)
    job.cancel()
    assert job.wait(60) == JobStatus.CANCELLED
    ck = tmp_path / "c" / "checkpoints"
    assert not list(ck.glob("*.part")) and not list(ck.glob(".*.part"))
    if (ck / "last.pt").exists():
        from wsi_lab.models import read_checkpoint

        assert read_checkpoint(ck / "last.pt")["epoch"] >= 1


@pytest.mark.skipif(importlib.util.find_spec("horovod") is not None, reason="Horovod is installed")
def test_horovod_missing_is_refused_with_the_install_command(table, tmp_path):
    with pytest.raises(MissingDependencyError, match="install_horovod.sh"):
        launch(_spec(table, tmp_path / "h", backend="horovod", nproc=2))
    assert not (tmp_path / "h").exists()


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                    reason="Horovod is not installed (bash scripts/install_horovod.sh)")
def test_horovod_two_processes_equal_one_process(table, tmp_path):
    one = launch(_spec(table, tmp_path / "one"))
    two = launch(_spec(table, tmp_path / "two", backend="horovod", nproc=2))
    assert one.wait(300) == JobStatus.DONE and two.wait(400) == JobStatus.DONE, two.logs(tail=40)
    assert two.metrics()["loss"].to_numpy() == pytest.approx(one.metrics()["loss"].to_numpy(), rel=1e-4)


def test_cli_commands_register_and_refuse_bad_specs(table, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="wsi-lab")
    register(parser.add_subparsers(dest="command"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task": "classify", "table": str(table), "out": str(tmp_path / "o"), "epochs": 0}))
    args = parser.parse_args(["train", "--spec", str(bad)])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'epochs'" in err[0]
    args = parser.parse_args(["features", str(table), "--backbone", "resnet18", "-o", str(tmp_path / "f"),
                              "--batch-size", "4"])
    assert args.command == "features" and args.backbone == "resnet18" and args.batch_size == 4


def test_torchrun_with_a_rank_that_has_no_validation_batch_finishes(tmp_path):
    """One validation tile on two processes: rank 1 evaluates nothing. The VAE has BatchNorm buffers, which a
    DDP forward would broadcast (a collective rank 1 never joins): validation runs on the bare model with rank
    0's buffers, so the job ends, with the one tile's validation loss."""
    from wsi_lab.data.table import read_table, write_table

    path = make_cohort(tmp_path / "cohort", slides=2, tile_size=64, read_size=64, width=256, height=256)
    df = read_table(path)
    df["split"] = "train"
    df.loc[df.index[-1], "split"] = "val"
    df = df.iloc[1:]  # 31 tiles: 30 for training (even: no padding on 2 ranks), 1 for validation
    write_table(df, path)
    two = launch(JobSpec.from_dict({"task": "vae", "table": str(path), "epochs": 1, "batch_size": 8, "seed": 1,
                                    "model": {"name": "vae"}, "out": str(tmp_path / "two"), "backend": "torchrun",
                                    "nproc": 2}))
    try:
        assert two.wait(240) == JobStatus.DONE, two.logs(tail=40)
    finally:
        two.cancel()
    val = two.metrics("val")  # (before the fix the job hung here, at the first validation forward)
    assert list(val["tiles"]) == [1] and 0 < float(val["loss"].iloc[0]) < float("inf"), val
