"""Horovod for the Keras path (:mod:`wsi_lab.train.keras`): ``horovod.tensorflow.keras`` on Keras 2
(``tf_keras``), and the process context of a Keras rank, over Horovod's TensorFlow library alone."""

from __future__ import annotations

from typing import Any

from wsi_lab.errors import MissingDependencyError
from wsi_lab.train.keras import _tf, keras_api

__all__ = ["horovod_keras", "horovod_context"]


def _tf_keras_install(tf) -> str:
    major, minor = tf.__version__.split(".")[:2]
    return f"pip install --no-deps 'tf_keras~={major}.{minor}.0'"


def horovod_keras(tf, keras):
    """``horovod.tensorflow.keras``, initialised; refused when Horovod or Keras 2 is missing."""
    from wsi_lab.train.launcher import HOROVOD_INSTALL

    if not tf.keras.__name__.startswith("tf_keras") or keras.__name__ != "tf_keras":
        raise MissingDependencyError(
            "tf_keras", "keras2", "the Keras path under Horovod (Horovod's Keras callbacks fail on Keras 3; with "
            f"tensorflow-cpu: {_tf_keras_install(tf)}; TensorFlow must be imported with TF_USE_LEGACY_KERAS=1)")
    try:
        import horovod.tensorflow.keras as hvd
    except ImportError as exc:
        raise MissingDependencyError("horovod", "horovod", "backend 'horovod' with TensorFlow (Horovod built with "
                                     f"its TensorFlow bindings: {HOROVOD_INSTALL})") from exc
    hvd.init()
    return hvd


class _TFCollectives:
    """The collectives :class:`~wsi_lab.train.dist.DistContext` asks of its ``hvd``, over Horovod's
    TensorFlow library (which has no ``barrier``)."""

    def __init__(self, hvd) -> None:
        self.hvd, self.Sum = hvd, hvd.Sum

    def allgather_object(self, obj: Any) -> list:
        from horovod.tensorflow import allgather_object

        return list(allgather_object(obj))

    def barrier(self) -> None:
        self.allgather_object(0)

    def allreduce(self, t, op=None):
        import torch

        tf = _tf()
        return torch.from_numpy(self.hvd.allreduce(tf.constant(t.numpy()), op=op or self.Sum).numpy())


def horovod_context():
    """The process context of a Keras job under ``horovodrun``: Horovod's TensorFlow library initialised,
    and not its torch one (two Horovod libraries in one process rendezvous over the same keys: the second
    can connect to the first one's ports and time out)."""
    import torch

    from wsi_lab.train.dist import DistContext

    tf = _tf()
    hvd = horovod_keras(tf, keras_api())
    return DistContext(hvd.rank(), hvd.size(), hvd.local_rank(), torch.device("cpu"), "horovod", _TFCollectives(hvd))
