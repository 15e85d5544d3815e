"""Typed errors of the cloud layer. Each carries the AWS error ``code`` (``NoSuchBucket``,
``ValidationException``...; ``None`` when the check is ours), the ``operation`` that failed and what
to do (``action``), and is a :class:`~wsi_lab.errors.WSILabError`, so the CLI prints it as one line.

Hierarchy::

    WSILabError
    └── CloudError                   (+ RuntimeError)        an AWS call failed or was refused
        ├── RemoteJobFailedError                             a SageMaker job ended Failed (its FailureReason)
        ├── UploadError                                      data that is not in S3 cannot be uploaded
        └── UnsupportedOperationError (+ NotImplementedError) the endpoint lacks a call (moto: StopTrainingJob)
    DataError
    └── ShortStreamError                                     a Pipe-mode stream ended before the tiles it was promised
"""

from __future__ import annotations

from wsi_lab.errors import DataError, WSILabError

__all__ = ["CloudError", "RemoteJobFailedError", "UploadError", "UnsupportedOperationError", "ShortStreamError"]


class CloudError(WSILabError, RuntimeError):
    """An AWS call failed: ``code`` (AWS error code or None), ``operation`` and ``action`` (what to do)."""

    def __init__(self, message: str, code: str | None = None, operation: str | None = None,
                 action: str | None = None) -> None:
        parts = [message]
        if code:
            parts.append(f"[{code}]")
        if action:
            parts.append(f"- {action}")
        super().__init__(" ".join(parts))
        self.code, self.operation, self.action = code, operation, action

    def __reduce__(self):
        return (_rebuild, (type(self), str(self), self.code, self.operation, self.action))


def _rebuild(cls: type[CloudError], text: str, code: str | None, operation: str | None,
             action: str | None) -> CloudError:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.code, err.operation, err.action = code, operation, action
    return err


class RemoteJobFailedError(CloudError):
    """A SageMaker job ended ``Failed``; the message holds its ``FailureReason``."""


class UploadError(CloudError):
    """A local input cannot be uploaded (missing, unreadable) or the upload was refused."""


class UnsupportedOperationError(CloudError, NotImplementedError):
    """The endpoint does not implement this call (moto lacks ``StopTrainingJob``/``StopTransformJob``)."""


class ShortStreamError(DataError):
    """A Pipe-mode FIFO ended before the tiles its launch promised per epoch (the ranks would fall out of step)."""
