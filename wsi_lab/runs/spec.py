"""``Spec``: the base of every run's parameters (tiling's ``TilingParams``, training's ``JobSpec``).

A spec is a frozen dataclass that round-trips through JSON (``to_dict``/``from_dict``,
``to_json``/``from_json``), refuses unknown keys and bad values naming the key
(:class:`~wsi_lab.errors.InvalidParameterError`), and has a stable :meth:`Spec.hash` (SHA-256 of its
canonical JSON) that manifests record to decide whether a step is complete. Nested specs (a field whose
type is a ``Spec`` subclass, or ``Optional`` of one) are converted from and to dicts automatically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, TypeVar

from wsi_lab.errors import InvalidParameterError

__all__ = ["Spec", "canonical_json", "stable_hash"]

S = TypeVar("S", bound="Spec")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def stable_hash(value: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``value`` (specs are hashed via ``to_dict()``)."""
    if isinstance(value, Spec):
        value = value.to_dict()
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _spec_type(hint: Any) -> type[Spec] | None:
    """The Spec subclass a field holds (``X`` or ``X | None``), else None."""
    if isinstance(hint, type) and issubclass(hint, Spec):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and issubclass(arg, Spec):
            return arg
    return None


def _to_plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


class Spec:
    """Mixin for ``@dataclass(frozen=True)`` parameter classes (see the module docstring).

    Subclasses override :meth:`validate` (return ``self``, raise ``InvalidParameterError`` naming the
    key); :meth:`from_dict` calls it, so a spec read from JSON is always valid."""

    # human name used in messages ("tiling parameter", "job spec key")
    _spec_name: typing.ClassVar[str] = "parameter"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (nested specs become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self, **kw: Any) -> str:
        """JSON text of :meth:`to_dict` (``kw`` go to :func:`json.dumps`, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[S], d: typing.Mapping[str, Any]) -> S:
        """Build and validate from a dict; unknown keys are refused, naming them and the known ones."""
        if not isinstance(d, typing.Mapping):
            raise InvalidParameterError(f"{cls.__name__} must be built from an object (dict), got {type(d).__name__}")
        names = cls.field_names()
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InvalidParameterError(f"unknown {cls._spec_name}(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = dict(d)
        for name, value in d.items():
            sub = _spec_type(hints.get(name))
            if sub is not None and isinstance(value, typing.Mapping):
                kwargs[name] = sub.from_dict(value)
        try:
            obj = cls(**kwargs)
        except TypeError as exc:
            raise InvalidParameterError(f"{cls.__name__}: {exc}") from exc
        return obj.validate()

    @classmethod
    def from_json(cls: type[S], text: str | bytes) -> S:
        """Parse JSON text (an object) and :meth:`from_dict` it."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise InvalidParameterError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise InvalidParameterError(f"{cls.__name__}: the JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)

    def validate(self: S) -> S:
        """Check every value; raise ``InvalidParameterError`` naming the key. Returns ``self``."""
        return self

    def hash(self, length: int | None = None) -> str:
        """Stable hex SHA-256 of the canonical JSON of :meth:`to_dict` (first ``length`` chars if given)."""
        h = stable_hash(self.to_dict())
        return h[:length] if length else h

    def replace(self: S, **changes: Any) -> S:
        """A validated copy with ``changes`` applied (specs are frozen)."""
        return dataclasses.replace(self, **changes).validate()  # type: ignore[type-var]
