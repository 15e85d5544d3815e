"""``replay(bundle, out)``: re-run a session bundle and check that it gives the same tables.

Each slide is found at its recorded path, else by file name under ``slides=`` (a folder), and must have
the recorded size and SHA-256 (another file is refused with :class:`DataError` naming it: a replay over
other pixels proves nothing). Tiling runs again with the recorded parameters into ``out/<tiling out>``
and every new TileTable is compared with the bundled one (same rows, same values; the metadata that
names paths and versions is not compared). With ``train=True``, each bundled job spec runs again on its
bundled table into ``out/<job>``; its per-epoch losses are compared with the bundled ``metrics.jsonl``.

Progress goes through the run layer's one protocol (:mod:`wsi_lab.runs.progress`, as ``wsi-lab tile``):
``progress=`` receives :class:`~wsi_lab.runs.progress.ProgressEvent` s counting ``steps`` (checking each
slide's checksum, tiling each slide, training each job; ``items`` holds each step's status), with the
finer ``fraction``, the ``metrics`` (tiles, tiles/s, loss...), messages and Dask dashboard of the step
running forwarded from tiling's and training's own events, and a ``message`` as each step ends.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsi_lab.errors import DataError
from wsi_lab.runs.progress import ItemStatus, ProgressCallback, ProgressEvent, ProgressTracker
from wsi_lab.sessions.bundle import read_session

log = logging.getLogger(__name__)

__all__ = ["replay", "ReplayResult", "tables_equal"]


@dataclass
class ReplayResult:
    """What a replay did: the new tables (per slide id), whether each equals the bundled one, and for
    training jobs whether their losses match (None when the bundle holds no metrics)."""

    out: Path
    tables: dict[str, Path] = field(default_factory=dict)
    matches: dict[str, bool] = field(default_factory=dict)
    differences: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Path] = field(default_factory=dict)
    training_matches: dict[str, bool | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every table and every compared training run matched."""
        return all(self.matches.values()) and all(v is not False for v in self.training_matches.values())

    def summary(self) -> str:
        """One line per replayed item."""
        lines = [f"{sid}: {'same table' if ok else 'DIFFERENT: ' + self.differences.get(sid, '')}"
                 for sid, ok in self.matches.items()]
        lines += [f"job {name}: " + ("same losses" if ok else "no metrics to compare" if ok is None else "DIFFERENT losses")
                  for name, ok in self.training_matches.items()]
        return "\n".join(lines) or "nothing replayed"


def tables_equal(a: pd.DataFrame, b: pd.DataFrame) -> tuple[bool, str]:
    """Whether two TileTables hold the same rows and values (column order and ``attrs`` aside); the
    reason when not."""
    if set(a.columns) != set(b.columns):
        return False, f"columns differ: {sorted(set(a.columns) ^ set(b.columns))}"
    if len(a) != len(b):
        return False, f"{len(a)} rows vs {len(b)}"
    cols = sorted(a.columns)
    x, y = a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)
    x.attrs, y.attrs = {}, {}
    try:
        pd.testing.assert_frame_equal(x, y, check_dtype=False)
    except AssertionError as exc:
        return False, str(exc).splitlines()[0][:200] if str(exc) else "values differ"
    return True, ""


def _find_slide(rec: dict[str, Any], slides: Path | None) -> Path:
    from wsi_lab.io import file_sha256

    candidates = [Path(rec["path"])] + ([slides / rec["name"]] if slides is not None else [])
    for p in candidates:
        if not p.is_file():
            continue
        if p.stat().st_size != rec["bytes"] or (rec.get("sha256") and file_sha256(p) != rec["sha256"]):
            raise DataError(f"{p}: not the slide the session used (size or SHA-256 differs from the bundle's "
                            f"{rec['slide_id']}); pass slides= the folder holding the original file")
        return p
    raise DataError(f"slide {rec['name']} not found at {rec['path']}"
                    + (f" nor in {slides}" if slides is not None else "") + "; pass slides= the folder holding it")


class _Steps:
    """The replay's steps on one :class:`ProgressTracker`: ``start(step)`` marks it running, ``inner`` is a
    callback that forwards a step's own events (their fraction scaled into the step's share, their
    metrics), ``end(step, message)`` closes it."""

    def __init__(self, steps: list[str], callback: ProgressCallback | None) -> None:
        self.tracker = ProgressTracker(len(steps), callback, unit="steps", items=steps)
        self.total = max(1, len(steps))

    def start(self, step: str) -> None:
        self.tracker.update(item=step, status=ItemStatus.RUNNING, current=step)

    def inner(self, event: ProgressEvent) -> None:
        share = min(1.0, max(0.0, float(event.fraction)))
        if event.dashboard:
            self.tracker.dashboard = event.dashboard
        self.tracker.update(event.message, metrics=event.metrics, fraction=(self.tracker.done + share) / self.total)

    def end(self, step: str, message: str = "", status: ItemStatus = ItemStatus.DONE) -> None:
        self.tracker.update(message, add_done=1, item=step, status=status)

    def finish(self, message: str) -> None:
        self.tracker.update(message, finished=True, current="")


def replay(bundle: str | os.PathLike, out: str | os.PathLike, *, slides: str | os.PathLike | None = None,
           train: bool = True, n_workers: int = 1, client: Any = None, timeout_s: float = 3600,
           progress: ProgressCallback | None = None) -> ReplayResult:
    """Re-run ``bundle`` into ``out`` (see the module docstring) and return what matched. Tiling runs on
    ``client`` (a Dask Client or scheduler address) or a local cluster of ``n_workers``; each training
    job may take ``timeout_s`` seconds. ``progress`` receives the run's events (e.g.
    :class:`~wsi_lab.runs.progress.TextProgressBar`)."""
    from wsi_lab.data.table import read_table
    from wsi_lab.tiling import TilingParams, run_tiling

    session = read_session(bundle)
    root = Path(out).expanduser()
    result = ReplayResult(root)
    slide_root = Path(slides).expanduser() if slides is not None else None
    jobs = session["training"] if train else []
    steps = _Steps([f"check {r['slide_id']}" for r in session["slides"]]
                   + [f"tile {e['slide_id']}" for e in session["tiling"]] + [f"train {j['name']}" for j in jobs], progress)
    paths = {}
    for rec in session["slides"]:  # all checked before anything runs
        step = f"check {rec['slide_id']}"
        steps.start(step)
        try:
            paths[rec["slide_id"]] = _find_slide(rec, slide_root)
        except DataError as exc:
            steps.end(step, str(exc), ItemStatus.FAILED)
            raise
        steps.end(step)
    with zipfile.ZipFile(bundle) as zf:
        for entry in session["tiling"]:
            sid = entry["slide_id"]
            steps.start(f"tile {sid}")
            params = TilingParams.from_dict(entry["params"])
            run = run_tiling([paths[sid]], params, out=root / entry["out"], materialize=entry.get("materialize"),
                             client=client, n_workers=None if client is not None else n_workers, progress=steps.inner)
            if run.failures:
                f = run.failures[0]
                steps.end(f"tile {sid}", f"{sid}: tiling failed", ItemStatus.FAILED)
                raise DataError(f"replay: tiling {sid} failed: {f.error_type}: {f.message}")
            new = read_table(run.tables[sid])
            old = pd.read_parquet(io.BytesIO(zf.read(entry["table"])))
            result.tables[sid] = run.tables[sid]
            result.matches[sid], why = tables_equal(new, old)
            if why:
                result.differences[sid] = why
            steps.end(f"tile {sid}", f"{sid}: {'same table' if not why else 'DIFFERENT table'} ({len(new)} tiles)")
        for job in jobs:
            steps.start(f"train {job['name']}")
            try:
                _replay_job(zf, job, root, result, timeout_s, steps.inner)
            except DataError:
                steps.end(f"train {job['name']}", f"job {job['name']} failed", ItemStatus.FAILED)
                raise
            same = result.training_matches[job["name"]]
            steps.end(f"train {job['name']}", f"job {job['name']}: " + (
                "same losses" if same else "no metrics to compare" if same is None else "DIFFERENT losses"))
    steps.finish("replay " + ("matched" if result.ok else "found differences"))
    return result


def _replay_job(zf: zipfile.ZipFile, job: dict[str, Any], root: Path, result: ReplayResult, timeout_s: float,
                progress: ProgressCallback | None = None) -> None:
    from wsi_lab.io import atomic_write_bytes
    from wsi_lab.runs.job import JobStatus
    from wsi_lab.train.launcher import launch
    from wsi_lab.train.spec import JobSpec

    out = root / job["name"]
    spec_d = dict(job["spec"], out=str(out))
    if job.get("table"):
        table = out / "table.parquet"
        atomic_write_bytes(table, zf.read(job["table"]))
        spec_d["table"] = str(table)
    elif job.get("table_folder"):
        spec_d["table"] = str(root / job["table_folder"])
    spec = JobSpec.from_dict(spec_d)
    running = launch(spec, progress=progress)
    status = running.wait(timeout_s)
    if status != JobStatus.DONE:
        running.cancel()
        raise DataError(f"replay: job {job['name']} ended {status}: {running.error}")
    result.jobs[job["name"]] = out
    if not job.get("metrics"):
        result.training_matches[job["name"]] = None
        return

    def losses(text: str) -> list[tuple[int, str, float]]:
        recs = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        return [(int(r["epoch"]), str(r["split"]), float(r["loss"])) for r in recs]

    old = losses(zf.read(job["metrics"]).decode())
    new = losses((out / "metrics.jsonl").read_text())
    result.training_matches[job["name"]] = len(old) == len(new) and all(
        a[:2] == b[:2] and abs(a[2] - b[2]) <= 1e-5 * max(1.0, abs(a[2])) for a, b in zip(old, new))
