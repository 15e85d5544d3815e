"""The TensorFlow/Keras path for data already in TFRecords: the classic workflow, a Keras CNN trained
from the shards of ``wsi-lab export`` (:mod:`wsi_lab.data.export_tfrecord`), from the same
:class:`~wsi_lab.train.spec.JobSpec` and writing the same ``metrics.jsonl`` and stdout lines.

A spec selects it with ``task: "classify"``, ``data: {"format": "tfrecord"}`` and ``table`` naming the
export folder (its ``manifest.json`` gives the schema, ``raw`` or ``jpeg``, the label index and the
shards of each split). The model is ``small_cnn`` (the Keras CIFAR-10 example net, the twin of
:class:`wsi_lab.models.classifier.SmallCNN`). Input: ``tf.data`` over the split's shards (records
interleaved from the shards, shuffled with a seeded buffer, decoded in parallel: ``decode_raw`` or
``decode_jpeg``, scaled to [0, 1], batched, prefetched; ``shard=`` gives each of N processes its own
shards). The job runs in one process (``backend: "local"``): Horovod 0.28.1, the last release, does not
work with Keras 3 (its Keras callbacks call ``Variable.ref()``, which Keras 3 variables lack: the
2-process run fails at the first batch), so ``horovod``/``torchrun`` are refused for this path until a
custom allreduce loop replaces them. Checkpoints are Keras files, ``checkpoints/last.keras`` and ``best.keras``
(atomic), with ``checkpoints/keras_state.json`` (epoch, best loss) so a restarted job resumes
after its last epoch. Without TensorFlow the job is refused with the install command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import DataError, InvalidParameterError, MissingDependencyError, TrainingError

log = logging.getLogger(__name__)

__all__ = ["run_keras_classify", "tfrecord_dataset", "read_export", "keras_small_cnn"]


def _tf():
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", "tf", "the Keras/TFRecord path (data format 'tfrecord')") from exc
    return tf


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
                     seed: int = 0, shard: tuple[int, int] | None = None):
    """A ``tf.data.Dataset`` of ``(images (B, size, size, 3) float32 in [0, 1], labels (B,) int64)`` from
    TFRecord shards of schema ``variant`` (``raw``: ``image_raw`` bytes; ``jpeg``: ``image/encoded``).
    ``shard``: ``(num_shards, index)`` when several processes share the files."""
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
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def keras_small_cnn(num_classes: int, input_size: int, dropout: float = 0.25, dense_dropout: float = 0.5):
    """The Keras CIFAR-10 example network (logits out), as :class:`~wsi_lab.models.classifier.SmallCNN`."""
    tf = _tf()
    L = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input((input_size, input_size, 3)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.Conv2D(32, 3, activation="relu"),
        L.MaxPooling2D(2), L.Dropout(dropout),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.Conv2D(64, 3, activation="relu"),
        L.MaxPooling2D(2), L.Dropout(dropout),
        L.Flatten(), L.Dense(512, activation="relu"), L.Dropout(dense_dropout), L.Dense(num_classes),
    ], name="small_cnn")


def _save_atomic(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.keras")  # Keras wants the .keras suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json_atomic(path: Path, data: dict) -> None:
    from wsi_lab.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data).encode())


def run_keras_classify(spec, ctx) -> dict[str, Any]:
    """Train the Keras ``small_cnn`` on a TFRecord export (module docstring); returns the loop's summary."""
    from wsi_lab.train.loop import _report, classification_metrics, emit_progress

    tf = _tf()
    if spec.model_name != "small_cnn":
        raise InvalidParameterError(f"job spec key 'model': the Keras/TFRecord path trains small_cnn, not "
                                    f"{spec.model_name!r}")
    if spec.backend != "local":
        raise InvalidParameterError(f"job spec key 'backend': the Keras/TFRecord path runs in one process (backend "
                                    f"'local'), not {spec.backend!r} (Horovod 0.28.1's Keras callbacks do not work "
                                    "with Keras 3)")
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
    if n_train == 0:
        raise DataError(f"{folder}: no records in the training split {spec.train_split!r}")
    size = _tile_size(train_files[0], variant)
    given = spec.model_options.get("input_size")
    if given is not None and int(given) != size:
        raise InvalidParameterError(f"job spec key 'model': input_size {given} differs from the records' {size} px")

    tf.keras.utils.set_random_seed(spec.seed)
    out = Path(spec.out)
    ckpt = out / "checkpoints"
    state_path, last, best_path = ckpt / "keras_state.json", ckpt / "last.keras", ckpt / "best.keras"
    start, best = 1, float("inf")
    if last.is_file() and state_path.is_file():
        state = json.loads(state_path.read_text())
        model = tf.keras.models.load_model(last)
        start, best = int(state["epoch"]) + 1, float(state.get("best", best))
        print(f"resuming from {last} after epoch {start - 1}", flush=True)
    else:
        opts = {k: float(v) for k, v in spec.model_options.items() if k in ("dropout", "dense_dropout")}
        model = keras_small_cnn(len(classes), size, **opts)
    opt = tf.keras.optimizers.Adam(learning_rate=spec.lr, weight_decay=spec.weight_decay or None)
    if start == 1:
        model.compile(optimizer=opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train_ds = tfrecord_dataset(train_files, variant, size, spec.batch_size, shuffle=True, seed=spec.seed)
    val_ds = tfrecord_dataset(val_files, variant, size, spec.batch_size) if n_val else None
    epochs_run = 0
    for epoch in range(start, spec.epochs + 1):
        t0 = time.perf_counter()
        hist = model.fit(train_ds, epochs=epoch, initial_epoch=epoch - 1, verbose=0)
        dt = time.perf_counter() - t0
        loss = float(hist.history["loss"][-1])
        if not np.isfinite(loss):
            raise TrainingError(f"the training loss is {loss:g} at epoch {epoch}; lower lr (now {spec.lr:g}) or check "
                                "the inputs; no checkpoint was written for this epoch")
        records: list[dict[str, Any]] = [{"epoch": epoch, "split": "train", "loss": loss, "tiles": n_train,
                                          "tiles_per_s": n_train / dt if dt > 0 else 0.0}]
        if val_ds is not None:
            t1 = time.perf_counter()
            probs, labels = _predict(tf, model, val_ds)
            vdt = time.perf_counter() - t1
            picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
            rec = {"epoch": epoch, "split": "val", "loss": float(-np.log(picked).mean()), "tiles": len(labels),
                   "tiles_per_s": len(labels) / vdt if vdt > 0 else 0.0}
            rec.update(classification_metrics([(probs, labels)]))
            records.append(rec)
        score = float(records[-1]["loss"])
        ckpt.mkdir(parents=True, exist_ok=True)
        _report(records, out / "metrics.jsonl")
        _save_atomic(model, last)
        if score < best:
            _save_atomic(model, best_path)
        best = min(best, score)
        _write_json_atomic(state_path, {"epoch": epoch, "best": best, "classes": classes, "variant": variant,
                                        "input_size": size, "framework": "keras"})
        emit_progress(epoch, spec.epochs, "epochs", f"epoch {epoch}/{spec.epochs} done",
                      {k: v for k, v in records[-1].items() if isinstance(v, (int, float))})
        epochs_run += 1
    return {"epochs_run": epochs_run, "last_epoch": spec.epochs, "best": best, "checkpoint": str(last),
            "framework": "keras"}


def _predict(tf, model, ds) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
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
