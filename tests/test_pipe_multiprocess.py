"""SageMaker Pipe mode beyond one process, in a container-like temporary ``/opt/ml``: the channels the launch
plans (``train_0``, ``train_1`` of DIFFERENT lengths, ``validation``), real FIFOs ``<channel>_<epoch>`` written
by agent threads as SageMaker's agent writes them, the SM_* variables, and the job's entry script started by
``torchrun --nproc-per-node 2`` (gloo on CPU) as the ``torch_distributed`` toolkit starts it, and by
``horovodrun --gloo -np 2`` for the ``mpi`` (Horovod) distribution. The runs are
subprocesses with a timeout that fails the test rather than hanging CI (without the per-epoch cap of
:mod:`wsi_lab.cloud.pipe` the first run hangs at the end of epoch 1 and is killed)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests._traindata import make_cohort
from wsi_lab.cloud.code import ENTRY_SCRIPT, ENTRY_TEXT
from wsi_lab.cloud.pipe_plan import PipePlan, plan_pipe
from wsi_lab.data.export_tfrecord import export_tfrecord
from wsi_lab.data.table import read_table

pytestmark = pytest.mark.slow  # each run starts two trainer processes (~20-50 s on a loaded 2-core machine)

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300


class Agent:
    """SageMaker's agent for one channel: a FIFO per epoch, created once the previous one is drained, the
    channel's objects streamed in (their order shuffled per epoch, as ``ShuffleConfig`` does)."""

    def __init__(self, data_dir: Path, channel: str, objects: list[bytes], epochs: int, seed: int = 0) -> None:
        self.data_dir, self.channel, self.objects, self.epochs, self.seed = data_dir, channel, objects, epochs, seed
        self.errors: list[BaseException] = []
        self.done = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for epoch in range(self.epochs):
                if self._stop.is_set():
                    return
                fifo = self.data_dir / f"{self.channel}_{epoch}"
                os.mkfifo(fifo)
                order = list(self.objects)
                random.Random(self.seed * 1000 + epoch).shuffle(order)
                with open(fifo, "wb") as fh:  # blocks until the trainer opens it
                    for obj in order:
                        for i in range(0, len(obj), 4096):  # in pieces, as a pipe delivers them
                            fh.write(obj[i:i + 4096])
                self.done += 1
        except OSError as exc:  # BrokenPipeError: the reader closed before the end of the stream
            if not self._stop.is_set():
                self.errors.append(exc)

    def stop(self) -> None:
        """Unblock a writer whose reader is gone (a failed job): open its FIFO's read end and close it."""
        self._stop.set()
        for epoch in range(self.epochs):
            fifo = self.data_dir / f"{self.channel}_{epoch}"
            if fifo.exists():
                try:
                    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                except OSError:
                    pass  # already gone with its reader
        self.thread.join(5)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A labelled export of 32² tiles: 3 training shards (so 2 channels hold 2 shards and 1) and a val split."""
    tmp = tmp_path_factory.mktemp("pipe-mp")
    table = make_cohort(tmp / "cohort", tile_size=32, read_size=64, width=256, height=256)
    manifest = export_tfrecord(read_table(table), tmp / "export", shards=3, variant="raw", workers=1)
    return tmp / "export", manifest


def _container(root: Path, hps: dict, plan: PipePlan) -> tuple[Path, dict]:
    ml = root / "opt" / "ml"
    for d in ("input/data", "model", "code", "output"):
        (ml / d).mkdir(parents=True, exist_ok=True)
    (ml / "code" / ENTRY_SCRIPT).write_text(ENTRY_TEXT)
    config = {f"train_{i}": {"TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key",
                             "RecordWrapperType": "None"} for i in range(len(plan.channels))}
    if plan.val_shards:
        config["validation"] = {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                                "RecordWrapperType": "None"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AWS_"))}
    env.update(SM_HPS=json.dumps({k: json.dumps(v) for k, v in hps.items()}), SM_INPUT_DATA_CONFIG=json.dumps(config),
               SM_CHANNELS=json.dumps(sorted(config)), SM_INPUT_DIR=str(ml / "input"), SM_MODEL_DIR=str(ml / "model"),
               SM_OUTPUT_DIR=str(ml / "output"), SM_HOSTS=json.dumps(["algo-1"]), SM_CURRENT_HOST="algo-1",
               SM_NUM_GPUS="0", SM_NUM_CPUS="2", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return ml, env


def _agents(ml: Path, export_dir: Path, plan: PipePlan, epochs: int) -> list[Agent]:
    data = ml / "input" / "data"
    agents = [Agent(data, f"train_{i}", [(export_dir / p).read_bytes() for p in shards], epochs, seed=i)
              for i, shards in enumerate(plan.channels)]
    if plan.val_shards:
        agents.append(Agent(data, "validation", [(export_dir / p).read_bytes() for p in plan.val_shards], epochs))
    return agents


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers (torchrun starts each worker in a session of its own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _launch(ml: Path, env: dict, nproc: int, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """What the toolkit runs: ``torchrun --nproc-per-node N <sagemaker_program>`` for torch_distributed, or
    (mpi) Horovod's launcher, here ``horovodrun --gloo`` on one host; killed with its workers if it outlives
    the timeout (the test then fails)."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", ENTRY_SCRIPT]
    else:
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", str(nproc), "-H", f"localhost:{nproc}",
               sys.executable, ENTRY_SCRIPT]
    proc = subprocess.Popen(cmd, cwd=ml / "code", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"the {nproc}-process Pipe job hung (killed after {RUN_TIMEOUT_S} s):\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _hps(plan: PipePlan, epochs: int, launcher: str = "torchrun", **extra) -> dict:
    dist = {"sagemaker_torch_distributed_enabled": True} if launcher == "torchrun" else {"sagemaker_mpi_enabled": True}
    return {"task": "classify", "model": {"name": "small_cnn"}, "epochs": epochs, "batch_size": 8, "lr": 1e-3,
            "seed": 0, "num_workers": 0, "device": "cpu", **dist, **plan.hyperparameters(), **extra}


@pytest.mark.parametrize("launcher", ["torchrun", "horovodrun"])
def test_two_processes_with_streams_of_different_lengths_run_the_same_steps(export, tmp_path, launcher):
    if launcher == "horovodrun":
        pytest.importorskip("horovod.torch")
    from wsi_lab.cloud.deploy import package_model
    from wsi_lab.models.checkpoint import read_checkpoint

    export_dir, manifest = export
    plan = plan_pipe(export_dir, manifest, "classify", "train", "val", processes=2, hosts=1, batch_size=8)
    counts = {f["path"]: f["records"] for f in manifest["files"]}
    sizes = [sum(counts[p] for p in ch) for ch in plan.channels]
    assert sizes[0] > sizes[1] and plan.records_per_process == sizes[1]  # 2 shards vs 1: unequal streams
    epochs = 2
    ml, env = _container(tmp_path, _hps(plan, epochs, launcher), plan)
    agents = _agents(ml, export_dir, plan, epochs)
    try:
        proc = _launch(ml, env, 2, launcher)
    finally:
        for a in agents:
            if a.thread.is_alive():
                a.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every FIFO of every epoch was read to its end (no writer left blocked, no reader closed early)
    assert all(a.done == epochs and not a.errors for a in agents), [(a.channel, a.done, a.errors) for a in agents]
    lines = [re.sub(r"^\[\d+\]<stdout>:", "", line) for line in proc.stdout.splitlines()]  # horovodrun's prefix
    results = {r["rank"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in lines
                                      if line.startswith("WSI_LAB_RESULT "))}
    assert sorted(results) == [0, 1]
    steps = plan.steps_per_epoch
    assert steps and all(r["steps_per_epoch"] == steps for r in results.values())
    assert all(r["trained"] == [steps * 4] * epochs for r in results.values())  # 4 = batch 8 / 2 processes
    # the longer stream's tail was read and discarded; the shorter one had none left
    assert results[0]["drained"] == [sizes[0] - steps * 4] * epochs and results[0]["drained"][0] > 0
    assert results[1]["drained"] == [sizes[1] - steps * 4] * epochs
    assert results[0]["validated"] == [plan.val_records] * epochs and results[1]["validated"] == [0] * epochs
    # rank 0 alone wrote the metrics and the SageMaker-parsed lines
    records = [json.loads(x) for x in (ml / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert all(r["tiles"] == steps * 8 for r in records if r["split"] == "train")
    assert all(r["tiles"] == plan.val_records and 0 <= r["accuracy"] <= 1 for r in records if r["split"] == "val")
    for prefix in ("Training Loss: ", "Validation Loss: ", "Validation Accuracy: "):
        assert sum(line.startswith(prefix) for line in lines) == epochs, prefix
    assert not (ml / "output" / "failure").exists()
    # SageMaker packs SM_MODEL_DIR into model.tar.gz
    tar = package_model(ml / "model", tmp_path / "model.tar.gz")
    with tarfile.open(tar) as t:
        assert {"checkpoints/best.pt", "checkpoints/last.pt", "spec.json", "metrics.jsonl"} <= set(t.getnames())
    assert read_checkpoint(ml / "model" / "checkpoints" / "last.pt")["epoch"] == epochs


def test_a_stream_shorter_than_promised_fails_both_processes_without_hanging(export, tmp_path):
    export_dir, manifest = export
    plan = plan_pipe(export_dir, manifest, "classify", "train", "val", processes=2, hosts=1, batch_size=8)
    # the promise exceeds what train_1 holds (its shard changed after launch): rank 1 runs out mid-epoch
    hps = _hps(plan, 1, wsi_lab_pipe_records=plan.records_per_process + 4)
    ml, env = _container(tmp_path, hps, plan)
    agents = _agents(ml, export_dir, plan, 1)
    try:
        proc = _launch(ml, env, 2)
    finally:
        for a in agents:
            a.stop()
    assert proc.returncode != 0
    assert "ShortStreamError" in (ml / "output" / "failure").read_text()
    assert "train_1_0: the stream ended after" in proc.stdout + proc.stderr
    assert not (ml / "model" / "checkpoints" / "last.pt").exists()
