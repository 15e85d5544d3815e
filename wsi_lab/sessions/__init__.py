"""Reproducible sessions: :func:`export_session` writes one bundle (parameters, package versions, seeds,
slide checksums, tables, job specs, review decisions, display settings) and :func:`replay` re-runs it
(tiling, then training when the bundle holds a spec) and reports whether the tables came out the same.
``wsi-lab export-session`` and ``wsi-lab replay BUNDLE`` are the same two calls."""

from __future__ import annotations

from wsi_lab.sessions.bundle import FORMAT, export_session, package_versions, read_session
from wsi_lab.sessions.replay import ReplayResult, replay, tables_equal

__all__ = ["export_session", "read_session", "replay", "ReplayResult", "tables_equal", "package_versions", "FORMAT"]
