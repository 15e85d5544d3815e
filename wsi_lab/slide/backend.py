"""The reader-backend protocol and the registry that picks a backend for a file.

A backend is a small class that declares the file extensions it prefers (with a priority: higher is
tried first), a cheap ``can_read(path)`` check and an ``open(path)`` that returns a :class:`SlideReader`.
Backends whose import fails are skipped with a log line, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from wsi_lab.errors import BackendUnavailableError

log = logging.getLogger(__name__)

__all__ = ["SlideReader", "Backend", "register_backend", "unregister_backend", "available_backends",
           "backend_candidates"]


@dataclass(frozen=True)
class ReaderMetadata:
    """What a backend found in the file's header; ``None`` means unknown, never a guess."""

    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    magnification: float | None
    vendor: str | None
    properties: dict[str, str]
    associated_names: tuple[str, ...]


@runtime_checkable
class SlideReader(Protocol):
    """An open file. All coordinates it receives are already clipped to the level's bounds."""

    backend_name: str
    metadata: ReaderMetadata

    def read_level(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        """Read an in-bounds box given in *level* pixel coordinates; return (H, W, 3) uint8 RGB."""

    def read_associated(self, name: str) -> np.ndarray:
        """Return associated image ``name`` (label, macro, thumbnail...) as (H, W, 3) uint8."""

    def close(self) -> None:
        """Release file handles."""


class Backend(Protocol):
    """A reader backend: the class itself is registered; its classmethods pick and open files."""

    name: ClassVar[str]
    #: extension (lower case, with dot; ``.ome.tif`` style double extensions allowed) -> priority
    extensions: ClassVar[dict[str, int]]
    #: priority for extensions not listed (0 = only when asked for by name or nothing else fits)
    default_priority: ClassVar[int]

    @classmethod
    def available(cls) -> bool: ...

    @classmethod
    def can_read(cls, path: Path) -> bool: ...

    @classmethod
    def open(cls, path: Path) -> SlideReader: ...


_REGISTRY: dict[str, Callable[[], type[Backend]]] = {}
_LOADED: dict[str, type[Backend] | None] = {}


def register_backend(name: str, loader: Callable[[], type[Backend]]) -> None:
    """Register a backend under ``name``; ``loader`` imports and returns the backend class."""
    _REGISTRY[name] = loader
    _LOADED.pop(name, None)


def unregister_backend(name: str) -> None:
    """Remove backend ``name`` from the registry (no error when it is not registered)."""
    _REGISTRY.pop(name, None)
    _LOADED.pop(name, None)


def _load(name: str) -> type[Backend] | None:
    if name not in _LOADED:
        try:
            cls = _REGISTRY[name]()
            _LOADED[name] = cls if cls.available() else None
            if _LOADED[name] is None:
                log.info("slide backend %r is not available on this machine; skipping it", name)
        except Exception as exc:  # noqa: BLE001 - an optional backend that fails to import must not break the others
            log.info("slide backend %r failed to import (%s: %s); skipping it", name, type(exc).__name__, exc)
            _LOADED[name] = None
    return _LOADED[name]


def get_backend(name: str) -> type[Backend]:
    """Return the backend class ``name`` or raise :class:`BackendUnavailableError`."""
    if name not in _REGISTRY:
        raise BackendUnavailableError(
            f"unknown slide backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}"
        )
    cls = _load(name)
    if cls is None:
        hint = {"openslide": "pip install 'wsi-lab[openslide]'",
                "cucim": "pip install --no-deps cucim-cu12 (CPU) or pip install 'wsi-lab[cucim]' (GPU)"}
        raise BackendUnavailableError(
            f"slide backend {name!r} is not installed or failed to import; {hint.get(name, 'see wsi-lab doctor')}"
        )
    return cls


def available_backends() -> list[str]:
    """Names of the registered backends that import on this machine."""
    return [n for n in _REGISTRY if _load(n) is not None]


def slide_suffix(path: Path) -> str:
    """Lower-case extension, keeping ``.ome.tif``/``.ome.tiff`` as one suffix."""
    name = path.name.lower()
    for double in (".ome.tiff", ".ome.tif"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def backend_candidates(path: Path) -> list[type[Backend]]:
    """Available backends ordered by their priority for this file's extension (highest first)."""
    suffix = slide_suffix(path)
    ranked = []
    for name in _REGISTRY:
        cls = _load(name)
        if cls is None:
            continue
        prio = cls.extensions.get(suffix, cls.default_priority)
        if prio > 0:
            ranked.append((prio, name, cls))
    ranked.sort(key=lambda t: (-t[0], t[1]))
    return [cls for _, _, cls in ranked]
