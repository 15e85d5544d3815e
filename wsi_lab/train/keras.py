"""The TensorFlow/Keras path for data already in TFRecords: the classic workflow, a Keras CNN trained
from the shards of ``wsi-lab export`` (:mod:`wsi_lab.data.export_tfrecord`), from the same
:class:`~wsi_lab.train.spec.JobSpec` and writing the same ``metrics.jsonl`` and stdout lines.

A spec selects it with ``task: "classify"``, ``data: {"format": "tfrecord"}`` and ``table`` naming the
export folder (its ``manifest.json`` gives the schema, ``raw`` or ``jpeg``, the label index and the
shards of each split). The model is ``small_cnn`` (the Keras CIFAR-10 example net, the twin of
:class:`wsi_lab.models.classifier.SmallCNN`). Input: ``tf.data`` over the split's shards (records
interleaved from the shards, shuffled with a seeded buffer, decoded in parallel: ``decode_raw`` or
``decode_jpeg``, scaled to [0, 1], batched, prefetched; ``shard=`` gives each of N processes its own
shards).

Keras: Keras 2 (``tf_keras``) when it is installed, else TensorFlow's own Keras 3. Backends ``local``
(one process) and ``horovod`` (``horovodrun -np N``): each rank reads its own shards (every N-th file;
every N-th record when there are fewer files than ranks), takes ``batch_size / N`` per step for the same
number of steps (``ceil(records / batch_size)``; the stream repeats, so a rank with a smaller shard wraps
around instead of leaving the others waiting in an allreduce), with ``hvd.DistributedOptimizer``
(optional fp16 compression), ``BroadcastGlobalVariablesCallback(0)`` and ``MetricAverageCallback``.
Validation: every rank predicts its share and rank 0 scores the gathered predictions. Horovod 0.28.1, the
last release, needs Keras 2: its callbacks call ``Variable.ref()``, which Keras 3 variables lack, and it
imports ``tf.keras``, so this module sets ``TF_USE_LEGACY_KERAS=1`` before it imports TensorFlow when
``tf_keras`` is installed (a process that imported TensorFlow with Keras 3 before is refused under Horovod).

Rank 0 alone writes: ``checkpoints/last.keras`` and ``best.keras`` (the model, atomic),
``checkpoints/keras_optimizer.npz`` (the optimizer's variables) and ``checkpoints/keras_state.json``
(epoch, best loss, Keras major version), so a restarted job resumes after its last epoch with its
optimizer state, under either backend. Without TensorFlow the job is refused with the install command.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import CheckpointError, DataError, InvalidParameterError, MissingDependencyError, TrainingError

log = logging.getLogger(__name__)

__all__ = ["run_keras_classify", "tfrecord_dataset", "read_export", "keras_small_cnn", "keras_api"]


def _tf():
    if "tensorflow" not in sys.modules and find_spec("tf_keras") is not None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras (and Horovod's Keras) is then Keras 2
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", "tf", "the Keras/TFRecord path (data format 'tfrecord')") from exc
    return tf


def keras_api():
    """The Keras this path trains with: Keras 2 (``tf_keras``) when installed, else ``tf.keras`` (Keras 3)."""
    tf = _tf()
    try:
        import tf_keras
    except ImportError:
        return tf.keras
    return tf_keras


def read_export(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a TFRecord export folder (``variant``, ``label_index``, ``files`` with ``split`` and
    ``records``); :class:`DataError` when the folder is not a complete export."""
    p = Path(folder) / "manifest.json"
    if not p.is_file():
        raise DataError.at(Path(folder), "no manifest.json: not a finished TFRecord export (run wsi-lab export "
                                         "--format tfrecord, and let it finish)")
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError.at(p, f"unreadable export manifest ({exc})") from exc
    if manifest.get("kind") != "export_tfrecord" or manifest.get("variant") not in ("raw", "jpeg"):
        raise DataError.at(p, f"not a TFRecord export manifest (kind {manifest.get('kind')!r}, variant "
                              f"{manifest.get('variant')!r})")
    return manifest


def _split_files(folder: Path, manifest: dict, split: str) -> tuple[list[str], int]:
    entries = [e for e in manifest.get("files", []) if e.get("split") == split and int(e.get("records", 0)) > 0]
    files = [str(folder / e["path"]) for e in entries]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"{folder}: shard(s) listed in the manifest are missing, e.g. {missing[:3]}; re-run the export")
    return files, int(sum(int(e["records"]) for e in entries))


def tfrecord_dataset(files: list[str], variant: str, size: int, batch_size: int, shuffle: bool = False,
                     seed: int = 0, shard: tuple[int, int] | None = None, repeat: bool = False):
    """A ``tf.data.Dataset`` of ``(images (B, size, size, 3) float32 in [0, 1], labels (B,) int64)`` from
    TFRecord shards of schema ``variant`` (``raw``: ``image_raw`` bytes; ``jpeg``: ``image/encoded``).
    ``shard``: ``(num_shards, index)`` when several processes share the files (every N-th file, or every
    N-th record when there are fewer files than shards); ``repeat``: an endless stream (reshuffled each pass)."""
    tf = _tf()
    if variant == "raw":
        spec = {"image_raw": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    elif variant == "jpeg":
        spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    else:
        raise InvalidParameterError(f"TFRecord schema must be raw or jpeg, got {variant!r}")

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        if variant == "raw":
            img = tf.reshape(tf.io.decode_raw(ex["image_raw"], tf.uint8), (size, size, 3))
        else:
            img = tf.ensure_shape(tf.io.decode_jpeg(ex["image/encoded"], channels=3), (size, size, 3))
        return tf.cast(img, tf.float32) / 255.0, ex["label"]

    names = tf.data.Dataset.from_tensor_slices(files)
    if shard is not None and len(files) >= shard[0]:
        names, shard = names.shard(*shard), None  # one set of files per process
    ds = names.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(4, len(files))),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard is not None:
        ds = ds.shard(*shard)  # fewer files than processes: every N-th record
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def keras_small_cnn(num_classes: int, input_size: int, dropout: float = 0.25, dense_dropout: float = 0.5,
                    keras: Any = None):
    """The Keras CIFAR-10 example network (logits out), as :class:`~wsi_lab.models.classifier.SmallCNN`;
    ``keras``: the Keras module to build it with (default :func:`keras_api`)."""
    keras = keras or keras_api()
    L = keras.layers
    return keras.Sequential([
        keras.Input((input_size, input_size, 3)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.Conv2D(32, 3, activation="relu"),
        L.MaxPooling2D(2), L.Dropout(dropout),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.Conv2D(64, 3, activation="relu"),
        L.MaxPooling2D(2), L.Dropout(dropout),
        L.Flatten(), L.Dense(512, activation="relu"), L.Dropout(dense_dropout), L.Dense(num_classes),
    ], name="small_cnn")


# -- checkpoints ---------------------------------------------------------------------------------
def _save_atomic(keras, model, path: Path) -> None:
    """The model alone, atomically: an uncompiled copy (a Horovod-wrapped optimizer would not load elsewhere,
    and the .keras format has no ``include_optimizer=False``)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.keras")  # Keras wants the .keras suffix
    try:
        bare = keras.models.clone_model(model)
        bare.set_weights(model.get_weights())
        bare.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json_atomic(path: Path, data: dict) -> None:
    from wsi_lab.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data).encode())


def _optimizer_variables(opt) -> list:
    v = opt.variables
    return list(v() if callable(v) else v)  # a method in Keras 2's optimizers, a property in Keras 3's


def _save_optimizer(opt, path: Path) -> None:
    from wsi_lab.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(v.numpy()) for v in _optimizer_variables(opt)])
    atomic_write_bytes(path, buf.getvalue())


def _restore_optimizer(opt, model, path: Path) -> None:
    """Build ``opt`` for ``model`` and load the variables :func:`_save_optimizer` wrote."""
    opt.build(model.trainable_variables)
    try:
        with np.load(path) as z:
            values = [z[f"arr_{i}"] for i in range(len(z.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable optimizer state ({exc}); use another out folder") from exc
    variables = _optimizer_variables(opt)
    if [tuple(v.shape) for v in variables] != [x.shape for x in values]:
        raise CheckpointError(f"{path}: the optimizer state ({len(values)} arrays) does not fit the model's "
                              f"optimizer ({len(variables)} variables); use another out folder")
    for var, val in zip(variables, values):
        var.assign(val)


def _load_resume(keras, ckpt: Path) -> tuple[Any, int, float] | None:
    """``(model, next epoch, best loss)`` from ``ckpt``'s state, or ``None`` for a fresh start."""
    state_path, last = ckpt / "keras_state.json", ckpt / "last.keras"
    if not (last.is_file() and state_path.is_file()):
        return None
    state = json.loads(state_path.read_text())
    major = keras.__version__.split(".")[0]
    if str(state.get("keras", major)) != major:
        raise CheckpointError(f"{last}: written by Keras {state.get('keras')}, this process runs Keras {major} "
                              "(tf_keras installed or not); use the same Keras or another out folder")
    try:
        model = keras.models.load_model(last, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{last}: cannot be loaded by Keras {keras.__version__} ({exc})") from exc
    return model, int(state["epoch"]) + 1, float(state.get("best", math.inf))


# -- the job -------------------------------------------------------------------------------------
def run_keras_classify(spec, ctx) -> dict[str, Any]:
    """Train the Keras ``small_cnn`` on a TFRecord export (module docstring); returns the loop's summary."""
    tf = _tf()
    if spec.model_name != "small_cnn":
        raise InvalidParameterError(f"job spec key 'model': the Keras/TFRecord path trains small_cnn, not "
                                    f"{spec.model_name!r}")
    if spec.backend not in ("local", "horovod"):
        raise InvalidParameterError(f"job spec key 'backend': the Keras/TFRecord path runs under 'local' or "
                                    f"'horovod', not {spec.backend!r}")
    keras = keras_api()
    if spec.backend == "horovod":
        from wsi_lab.train.keras_hvd import horovod_keras

        hvd = horovod_keras(tf, keras)
    else:
        hvd = None
    world, rank = (hvd.size(), hvd.rank()) if hvd is not None else (1, 0)
    folder = Path(spec.table)
    manifest = read_export(folder)
    variant = manifest["variant"]
    index = {str(k): int(v) for k, v in (manifest.get("label_index") or {}).items()}
    classes = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])]
    if len(classes) < 2:
        raise DataError(f"{folder}: the export has {len(classes)} class(es) {classes}; a classifier needs two (export a "
                        "labelled table)")
    train_files, n_train = _split_files(folder, manifest, spec.train_split)
    val_files, n_val = _split_files(folder, manifest, spec.val_split)
    if n_train < world:
        raise DataError(f"{folder}: {n_train} record(s) in the training split {spec.train_split!r}, fewer than the "
                        f"{world} process(es)")
    size = _tile_size(train_files[0], variant)
    given = spec.model_options.get("input_size")
    if given is not None and int(given) != size:
        raise InvalidParameterError(f"job spec key 'model': input_size {given} differs from the records' {size} px")

    keras.utils.set_random_seed(spec.seed)  # every rank builds the same model (rank 0's is broadcast anyway)
    out = Path(spec.out)
    ckpt = out / "checkpoints"
    resumed = _load_resume(keras, ckpt)
    if resumed is not None:
        model, start, best = resumed
        if rank == 0:
            from wsi_lab.train.loop import _trim_metrics

            _trim_metrics(out / "metrics.jsonl", start - 1)
            print(f"resuming from {ckpt / 'last.keras'} after epoch {start - 1}", flush=True)
    else:
        opts = {k: float(v) for k, v in spec.model_options.items() if k in ("dropout", "dense_dropout")}
        model, start, best = keras_small_cnn(len(classes), size, keras=keras, **opts), 1, math.inf
    if start > spec.epochs:
        if rank == 0:
            print(f"nothing to do: {ckpt / 'last.keras'} already holds epoch {start - 1} of {spec.epochs}", flush=True)
        return {"epochs_run": 0, "last_epoch": start - 1, "best": best, "checkpoint": str(ckpt / "last.keras"),
                "framework": "keras"}
    opt = keras.optimizers.Adam(learning_rate=spec.lr, weight_decay=spec.weight_decay or None)
    callbacks: list[Any] = []
    if hvd is not None:
        compression = hvd.Compression.fp16 if spec.horovod.get("fp16_compression") else hvd.Compression.none
        opt = hvd.DistributedOptimizer(opt, compression=compression)
        callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]
        for cb in callbacks:  # Horovod hands its callbacks `keras.backend` (Keras 3's when installed): use Keras 2's
            cb.backend = keras.backend
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if resumed is not None and (ckpt / "keras_optimizer.npz").is_file():
        _restore_optimizer(opt, model, ckpt / "keras_optimizer.npz")
    per_rank = spec.batch_size // world
    steps = math.ceil(n_train / spec.batch_size)
    shard = (world, rank) if world > 1 else None
    train_ds = tfrecord_dataset(train_files, variant, size, per_rank, shuffle=True, seed=spec.seed, shard=shard,
                                repeat=True)
    val_ds = tfrecord_dataset(val_files, variant, size, per_rank, shard=shard) if n_val else None
    meta = {"classes": classes, "variant": variant, "input_size": size, "framework": "keras",
            "keras": keras.__version__.split(".")[0]}
    recorder = _epoch_recorder(keras, tf, spec, hvd, rank, model, opt, val_ds, steps, best, meta)
    model.fit(train_ds, epochs=spec.epochs, initial_epoch=start - 1, steps_per_epoch=steps, verbose=0,
              callbacks=[*callbacks, recorder])
    return {"epochs_run": spec.epochs - start + 1, "last_epoch": spec.epochs, "best": recorder.best,
            "checkpoint": str(ckpt / "last.keras"), "framework": "keras"}


def _epoch_recorder(keras, tf, spec, hvd, rank: int, model, opt, val_ds, steps: int, best: float, meta: dict):
    """The Keras callback that ends each epoch: NaN guard, validation over every rank's share, and (rank
    0) the metrics records, checkpoints and progress event. It runs after Horovod's MetricAverageCallback,
    so the training loss it reads is the mean over the ranks."""
    from wsi_lab.train.loop import _report, classification_metrics, emit_progress

    out = Path(spec.out)
    ckpt = out / "checkpoints"

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best, self.t0 = best, time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            n_epoch = epoch + 1
            dt = time.perf_counter() - self.t0
            loss = float((logs or {}).get("loss", math.nan))
            if not np.isfinite(loss):
                raise TrainingError(f"the training loss is {loss:g} at epoch {n_epoch}; lower lr (now {spec.lr:g}) or "
                                    "check the inputs; no checkpoint was written for this epoch")
            tiles = steps * spec.batch_size
            records: list[dict[str, Any]] = [{"epoch": n_epoch, "split": "train", "loss": loss, "tiles": tiles,
                                              "tiles_per_s": tiles / dt if dt > 0 else 0.0}]
            if val_ds is not None:
                t1 = time.perf_counter()
                probs, labels = _predict(tf, model, val_ds, int(len(meta["classes"])))
                if hvd is not None:  # every rank's share, in rank order
                    from horovod.tensorflow import allgather_object

                    parts = allgather_object((probs, labels))
                    probs, labels = np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])
                vdt = time.perf_counter() - t1
                picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
                rec = {"epoch": n_epoch, "split": "val", "loss": float(-np.log(picked).mean()), "tiles": len(labels),
                       "tiles_per_s": len(labels) / vdt if vdt > 0 else 0.0}
                rec.update(classification_metrics([(probs, labels)]))
                records.append(rec)
            score = float(records[-1]["loss"])
            if rank == 0:
                ckpt.mkdir(parents=True, exist_ok=True)
                _report(records, out / "metrics.jsonl")
                _save_atomic(keras, model, ckpt / "last.keras")
                _save_optimizer(opt, ckpt / "keras_optimizer.npz")
                if score < self.best:
                    _save_atomic(keras, model, ckpt / "best.keras")
                _write_json_atomic(ckpt / "keras_state.json", {"epoch": n_epoch, "best": min(self.best, score), **meta})
                emit_progress(n_epoch, spec.epochs, "epochs", f"epoch {n_epoch}/{spec.epochs} done",
                              {k: v for k, v in records[-1].items() if isinstance(v, (int, float))})
            self.best = min(self.best, score)

    return EpochRecorder()


def _predict(tf, model, ds, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [np.zeros((0, n_classes), np.float32)], [np.zeros(0, np.int64)]
    for x, y in ds:
        probs.append(tf.nn.softmax(model(x, training=False)).numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def _tile_size(path: str, variant: str) -> int:
    """The tile side of the first record of a shard (read without TensorFlow)."""
    from wsi_lab.data.tfrecord import read_examples

    for ex in read_examples(path):
        key = "height" if variant == "raw" else "image/height"
        return int(ex[key][0])
    raise DataError.at(Path(path), "holds no records")
