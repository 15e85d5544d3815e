"""Typed errors raised by WSI Lab.

Every error derives from :class:`WSILabError` and from the builtin exception it refines, so callers
can catch either. Messages name the file or value at fault and say what to do.

Hierarchy::

    WSILabError (Exception)
    ├── SlideError
    │   ├── SlideNotFoundError        (+ FileNotFoundError)   path does not exist / is a directory
    │   ├── UnsupportedFormatError    (+ ValueError)          no backend can read this file
    │   ├── SlideOpenError            (+ OSError)             a backend recognised it but failed to open
    │   ├── SlideReadError            (+ OSError)             reading pixels failed (truncated/corrupt data)
    │   ├── BackendUnavailableError   (+ ImportError)         a named backend is not installed
    │   └── MissingMPPError           (+ ValueError)          µm/px needed but not in the metadata
    ├── InvalidParameterError         (+ ValueError)          bad argument (size, level, threshold, ...)
    │   └── RegionTooLargeError                               a region read would exceed the memory cap
    ├── NoTissueError                 (+ ValueError)          tissue detection found nothing
    ├── DataError                     (+ ValueError)          bad tables, labels, splits
    │   └── LeakageError                                      a patient appears in more than one split
    ├── PathSecurityError             (+ PermissionError)     path escapes an allowed root
    ├── MissingDependencyError        (+ ImportError)         an optional extra is not installed
    ├── CheckpointError               (+ ValueError)          a checkpoint/weights file is wrong for the model
    └── TrainingError                 (+ RuntimeError)        training diverged (NaN/inf loss) or a launch failed
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

_E = TypeVar("_E", bound="WSILabError")

__all__ = [
    "WSILabError",
    "SlideError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "SlideOpenError",
    "SlideReadError",
    "BackendUnavailableError",
    "MissingMPPError",
    "InvalidParameterError",
    "RegionTooLargeError",
    "NoTissueError",
    "DataError",
    "LeakageError",
    "PathSecurityError",
    "MissingDependencyError",
    "CheckpointError",
    "TrainingError",
]


class WSILabError(Exception):
    """Base class of every error WSI Lab raises on purpose.

    Errors about one file carry it as context: ``file`` (its path; not ``path``, which ``ImportError``
    already uses for a module's path) and ``reason`` (the message without the file name), so a server can
    name the file relative to its root (:meth:`message_for`) and a record can keep the reason on its own, with no string surgery. Build them with :meth:`at`."""

    file: Path | None = None
    reason: str | None = None

    @classmethod
    def at(cls: type[_E], path: str | os.PathLike, reason: str) -> _E:
        """``cls("<path>: <reason>")`` with ``file`` (the path) and ``reason`` kept as attributes."""
        err = cls(f"{os.fspath(path)}: {reason}")
        err.file, err.reason = Path(path), reason
        return err

    def message_for(self, root: str | os.PathLike) -> str:
        """The message naming the file relative to ``root`` (its bare name when outside it); never an
        absolute path of ``root``."""
        root_path = Path(root)
        if self.file is not None and self.reason is not None:
            try:
                name = self.file.relative_to(root_path).as_posix()
            except ValueError:
                name = self.file.name
            return f"{name}: {self.reason}"
        text = str(self)  # an error without context: at least never reveal the root
        return text.replace(f"{root_path}/", "").replace(str(root_path), ".")


class SlideError(WSILabError):
    """A problem with one slide file."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist or is not a regular file."""


class UnsupportedFormatError(SlideError, ValueError):
    """No installed reader backend can read the file."""


class SlideOpenError(SlideError, OSError):
    """A backend recognised the file but could not open it (corrupt or truncated)."""


class SlideReadError(SlideError, OSError):
    """Reading pixels from an opened slide failed (corrupt or truncated tile data)."""


class BackendUnavailableError(SlideError, ImportError):
    """A backend was asked for by name but is not installed or not importable."""


class MissingMPPError(SlideError, ValueError):
    """The operation needs µm/px but the slide metadata has none and no override was given."""


class InvalidParameterError(WSILabError, ValueError):
    """An argument is out of range or inconsistent."""


class RegionTooLargeError(InvalidParameterError):
    """A requested region would need more memory than the configured cap allows."""


class NoTissueError(WSILabError, ValueError):
    """Tissue detection kept nothing on a slide; ``method`` and ``threshold`` say what was tried."""

    def __init__(self, message: str, method: str | None = None, threshold: float | None = None) -> None:
        super().__init__(message)
        self.method, self.threshold = method, threshold

    def __reduce__(self):  # keeps method/threshold across processes (Dask workers)
        return (type(self), (str(self), self.method, self.threshold))


class DataError(WSILabError, ValueError):
    """A table, label file or split is malformed or inconsistent."""


class LeakageError(DataError):
    """A patient appears in more than one split."""


class PathSecurityError(WSILabError, PermissionError):
    """A path escapes the directory it must stay inside."""


class MissingDependencyError(WSILabError, ImportError):
    """An optional dependency (extra) is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is needed{what} but is not installed: pip install 'wsi-lab[{extra}]'"
        )
        self.package = package
        self.extra = extra


class CheckpointError(WSILabError, ValueError):
    """A checkpoint or weights file is missing, corrupt, fails its SHA-256 or belongs to another model."""


class TrainingError(WSILabError, RuntimeError):
    """Training cannot go on: a NaN/inf loss, or a launcher (torchrun, horovodrun) that failed."""


def require(module: str, extra: str, purpose: str = ""):
    """Import and return optional module ``module`` or raise :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
