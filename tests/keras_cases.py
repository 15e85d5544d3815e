"""The TensorFlow/Keras path: tf.data over the project's TFRecord shards (raw and JPEG schemas) and a
Keras small_cnn trained from a JobSpec, with the same metrics file, resume and refusals, in one process
and under ``horovodrun -np 2`` (Gloo)."""

from __future__ import annotations

import json
import math
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsi_lab.errors import DataError, InvalidParameterError, MissingDependencyError
from wsi_lab.train import JobSpec

pytest.importorskip("tensorflow")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A generated slide's 32² tiles labelled by brightness (tissue vs glass: learnable), exported as
    raw and as JPEG TFRecord shards (2 per split)."""
    from wsi_lab.data.dataset import TileDataset
    from wsi_lab.data.export_tfrecord import export_tfrecord
    from wsi_lab.testing import make_slide

    root = tmp_path_factory.mktemp("keras")
    path = make_slide(root / "s.svs", 512, 384, tile=256, seed=1, source="procedural", tissue_fraction=0.5,
                      associated=False)
    ys, xs = np.mgrid[0:384:32, 0:512:32]
    t = pd.DataFrame({"slide_id": "s", "patient_id": "s", "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                      "read_size": 32, "tile_size": 32})
    t.attrs["wsi_lab"] = {"slides": {"s": {"path": str(path)}}}
    mean = TileDataset(t, dtype="uint8").read_batch(range(len(t))).reshape(len(t), -1).mean(1)
    t["label"] = np.where(mean < np.median(mean), "tissue", "glass")
    t["split"] = np.where(np.random.default_rng(0).random(len(t)) < 0.25, "val", "train")
    out = {}
    for variant in ("raw", "jpeg"):
        export_tfrecord(t, root / variant, shards=2, variant=variant)
        out[variant] = root / variant
    return t, out


def test_tf_data_pipeline_reads_both_schemas(exports):
    from wsi_lab.data.dataset import TileDataset
    from wsi_lab.train.keras import read_export, tfrecord_dataset

    table, folders = exports
    pixels = TileDataset(table, dtype="uint8").read_batch(range(len(table)))
    for variant, tol in (("raw", 0), ("jpeg", 12)):
        manifest = read_export(folders[variant])
        files = [str(folders[variant] / e["path"]) for e in manifest["files"] if e["split"] == "train"]
        images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in tfrecord_dataset(files, variant, 32, 16)])
        images, labels = np.concatenate(images), np.concatenate(labels)
        assert images.shape == ((table.split == "train").sum(), 32, 32, 3) and images.dtype == np.float32
        assert set(labels.tolist()) == {0, 1}
        # every record is one of the table's tiles (the raw schema exactly, JPEG within its loss)
        first = np.round(images[0] * 255)
        diff = np.abs(pixels.astype(np.float32) - first).reshape(len(pixels), -1).mean(1)
        assert diff.min() <= tol + 1e-6


def test_keras_job_trains_resumes_and_writes_the_metrics_file(exports, tmp_path, capsys):
    from wsi_lab.train.run import run_spec

    _, folders = exports
    spec = JobSpec(task="classify", table=str(folders["raw"]), out=str(tmp_path / "k"), model="small_cnn", epochs=2,
                   batch_size=16, lr=2e-3, seed=0, data={"format": "tfrecord"}).validate()
    res = run_spec(spec)
    assert res["framework"] == "keras" and res["epochs_run"] == 2
    recs = [json.loads(x) for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in recs] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    train = [r["loss"] for r in recs if r["split"] == "train"]
    assert train[1] < train[0] and all(k in recs[1] for k in ("accuracy", "balanced_accuracy", "auc", "tiles_per_s"))
    out = capsys.readouterr().out
    assert "Training Loss:" in out and "Validation Accuracy:" in out
    assert (tmp_path / "k" / "checkpoints" / "last.keras").is_file()
    assert (tmp_path / "k" / "checkpoints" / "best.keras").is_file()
    assert not list((tmp_path / "k" / "checkpoints").glob(".*part*"))
    res = run_spec(spec.with_changes(epochs=3))  # a restarted job resumes after its last epoch
    assert res["epochs_run"] == 1
    recs = [json.loads(x) for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 1, 2, 2, 3, 3]


def test_keras_path_refusals(exports, tmp_path, monkeypatch):
    from wsi_lab.train.run import run_spec

    _, folders = exports
    base = dict(task="classify", data={"format": "tfrecord"})
    with pytest.raises(DataError, match="manifest.json"):
        run_spec(JobSpec(table=str(tmp_path), out=str(tmp_path / "o0"), **base))
    with pytest.raises(InvalidParameterError, match="trains small_cnn"):
        run_spec(JobSpec(table=str(folders["jpeg"]), model="resnet18", out=str(tmp_path / "o1"), **base))
    with pytest.raises(InvalidParameterError, match="'local' or 'horovod'"):
        JobSpec(table=str(folders["raw"]), backend="torchrun", nproc=2, out=str(tmp_path / "o"), **base).validate()
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):  # this process imported TensorFlow with Keras 3
        from wsi_lab.train.keras_hvd import horovod_context

        with pytest.raises(MissingDependencyError, match="tf_keras.*Keras 3.*TF_USE_LEGACY_KERAS"):
            horovod_context()
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    with pytest.raises(MissingDependencyError, match="tf"):
        run_spec(JobSpec(table=str(folders["raw"]), out=str(tmp_path / "o2"), **base))
    assert not (Path(tmp_path / "o2") / "checkpoints").exists()


@pytest.mark.skipif(find_spec("horovod") is None or find_spec("tf_keras") is None,
                    reason="Horovod (bash scripts/install_horovod.sh) and Keras 2 (tf_keras) are needed")
def test_keras_under_horovod_two_processes(exports, tmp_path):
    """horovodrun -np 2 (Gloo): each rank reads one of the 2 training shards; rank 0 alone writes the
    metrics, lines and checkpoints; the validation records of both ranks are scored together, and they
    equal what rank 0's saved model predicts for all of them, which holds only if both ranks trained the
    same weights (broadcast start, allreduced gradients). The checkpoint then resumes in one process."""
    from wsi_lab.runs import JobStatus
    from wsi_lab.train import launch
    from wsi_lab.train.keras import keras_api, read_export, tfrecord_dataset
    from wsi_lab.train.run import run_spec

    table, folders = exports
    out = tmp_path / "hvd"
    spec = JobSpec(task="classify", table=str(folders["raw"]), out=str(out), model="small_cnn", epochs=2,
                   batch_size=16, lr=2e-3, seed=0, data={"format": "tfrecord"}, backend="horovod", nproc=2)
    job = launch(spec)
    status = job.wait(400)
    noise = ("oneDNN", "cpu_feature", "rebuild TensorFlow", "To enable", "absl", "slow compared")
    assert status == JobStatus.DONE, "\n".join(ln for ln in job.logs() if not any(n in ln for n in noise))[-8000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in recs] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    n_train, n_val = int((table.split == "train").sum()), int((table.split == "val").sum())
    assert [r["tiles"] for r in recs] == [math.ceil(n_train / 16) * 16, n_val] * 2
    assert sum(line.startswith("Training Loss: ") for line in job.logs()) == 2  # rank 0 alone prints
    ck = out / "checkpoints"
    assert {p.name for p in ck.iterdir()} == {"last.keras", "best.keras", "keras_optimizer.npz", "keras_state.json"}
    assert json.loads((ck / "keras_state.json").read_text())["keras"] == "2"

    keras = keras_api()
    model = keras.models.load_model(ck / "last.keras", compile=False)
    manifest = read_export(folders["raw"])
    files = [str(folders["raw"] / e["path"]) for e in manifest["files"] if e["split"] == "val"]
    probs, labels = [], []
    for x, y in tfrecord_dataset(files, "raw", 32, 64):
        probs.append(np.exp(model(x).numpy()) / np.exp(model(x).numpy()).sum(1, keepdims=True))
        labels.append(y.numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    assert recs[-1]["loss"] == pytest.approx(float(-np.log(p[np.arange(len(y)), y]).mean()), rel=1e-4)
    assert recs[-1]["accuracy"] == pytest.approx(float((p.argmax(1) == y).mean()))

    res = run_spec(spec.with_changes(backend="local", nproc=1, epochs=3))  # the checkpoint resumes anywhere
    assert res["epochs_run"] == 1
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 1, 2, 2, 3, 3]
