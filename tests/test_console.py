"""The Job console in the kernel: a job launched from the form (real subprocess, tiny small_cnn) fills
its row (charts, per-epoch grid, tiles/s, log tail); closing the console orphans nothing; cancel and
resume continue after the last checkpoint; tiling and inference jobs get one grid row per slide; core
errors show as readable messages, never tracebacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests._traindata import make_cohort  # noqa: E402
from wsi_lab.runs import JobStatus, ThreadJob  # noqa: E402
from wsi_lab.train import JobSpec  # noqa: E402
from wsi_lab.ui import console as console_mod  # noqa: E402
from wsi_lab.ui.console import JobConsole  # noqa: E402
from wsi_lab.ui.jobs import (  # noqa: E402
    get_job,
    metric_series,
    readable_error,
    register_job,
    registered_jobs,
    snapshot,
    start_prediction,
    status_rows,
)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("console"), slides=2, tile_size=32, read_size=64, width=256,
                       height=256)


def _form(c: JobConsole, table: Path, epochs: int = 2) -> JobConsole:
    c.source.value = "file"
    c.table_path.value = str(table)
    c.epochs.value, c.batch_size.value = epochs, 8
    return c


def _until(cond, timeout: float = 120, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_launch_from_the_form_fills_the_row_and_outlives_the_console(table, tmp_path):
    c = _form(JobConsole(jobs_root=tmp_path / "jobs"), table)
    spec = c.show_spec()
    assert spec.task == "classify" and spec.model_name == "small_cnn" and spec.table == str(table)
    assert '"epochs": 2' in c.spec_view.value
    saved = c.save_spec()
    assert JobSpec.read(saved) == spec and saved.name == "classify-small_cnn-1.json"
    entry = c.launch()
    assert entry is not None, c.errors.text
    assert entry.spec["out"] == str(tmp_path / "jobs" / "classify-small_cnn-1")
    c.close()  # the console goes; the job does not
    assert not entry.job.cancelled
    assert entry.job.wait(300) == JobStatus.DONE, entry.job.logs(tail=20)
    again = JobConsole(jobs_root=tmp_path / "jobs")
    try:
        row = again.rows[entry.id]  # a new console shows the job with its whole history
        again.refresh()
        assert row.charts is not None and row.charts.points() == 4  # 2 epochs x (train, val)
        assert [t.name for t in row.charts.loss.data] == ["train", "val"]
        assert list(row.charts.loss.data[0].x) == [1, 2]
        rows = status_rows(entry)
        assert [r["epoch"] for r in rows] == ["1", "2"] and {r["status"] for r in rows} == {"done"}
        assert "train loss" in rows[0] and "val accuracy" in rows[0]
        snap = snapshot(entry)
        assert snap.fraction == 1.0 and snap.tiles_per_s and snap.tiles_per_s > 0 and snap.error is None
        assert "tiles/s" in row.stats.value and "Training Loss" in row.logs.value
        assert "wsi-lab-job-done" in row.title.value and row.resume_button.disabled is False
        assert '"task": "classify"' in row.spec.value
    finally:
        again.close()


def test_cancel_then_resume_continues_after_the_last_checkpoint(table, tmp_path):
    c = _form(JobConsole(jobs_root=tmp_path / "jobs"), table, epochs=3)
    try:
        entry = c.launch()
        assert entry is not None, c.errors.text
        # the epoch's progress event comes after its checkpoint is written
        _until(lambda: entry.job.last_event is not None and entry.job.last_event.done >= 1)
        c.rows[entry.id].cancel_button.click()
        assert entry.job.wait(60) == JobStatus.CANCELLED
        first = entry.job
        done_before = max(metric_series(entry)[("train", "loss")][0])
        assert done_before < 3
        c.refresh()
        assert "cancelled" in c.rows[entry.id].title.value
        c.rows[entry.id].resume_button.click()
        assert entry.job is not first and entry.history == [first]
        assert entry.job.wait(300) == JobStatus.DONE, entry.job.logs(tail=20)
        assert any("resuming from" in ln for ln in entry.job.logs())
        epochs = metric_series(entry)[("train", "loss")][0]
        assert epochs == [1, 2, 3]  # each epoch once, across both runs
        c.refresh()
        assert c.rows[entry.id].charts.points() == 6
    finally:
        c.close()


def test_errors_are_readable_messages(table, tmp_path):
    import pandas as pd

    from wsi_lab.data.table import read_table, write_table

    c = JobConsole(jobs_root=tmp_path / "jobs")
    try:
        c.source.value = "lab"
        assert c.launch() is None and "no current Lab tiles" in c.errors.text
        c.source.value, c.table_path.value = "file", str(tmp_path / "missing.parquet")
        assert c.launch() is None and "no such table file" in c.errors.text
        unlabelled = read_table(table).drop(columns=["label"])
        write_table(unlabelled, tmp_path / "unlabelled.parquet")
        c._table = unlabelled
        c.source.value = "lab"
        assert c.launch() is None and "has no 'label' column" in c.errors.text
        c.source.value, c.table_path.value = "file", str(table)
        c.backend.value, c.nproc.value, c.batch_size.value = "torchrun", 3, 8
        assert c.show_spec() is None and "batch_size" in c.errors.text  # 8 does not divide over 3 processes
        assert "Traceback" not in c.errors.value
        # a job that fails in the worker: its row shows the typed error, without a traceback
        broken = make_cohort(tmp_path / "broken", slides=2, tile_size=32, read_size=64, width=256, height=256)
        (tmp_path / "broken" / "s0.svs").unlink()
        c.backend.value, c.table_path.value, c.epochs.value = "local", str(broken), 1
        entry = c.launch()
        assert entry is not None, c.errors.text
        assert entry.job.wait(300) == JobStatus.FAILED
        c.refresh()
        row = c.rows[entry.id]
        assert "missing slide" in row.errors.text and "Traceback" not in row.errors.value
        assert "failed" in row.title.value
        assert isinstance(pd.DataFrame(status_rows(entry)), pd.DataFrame)
    finally:
        c.close()


def test_readable_error_drops_traceback_lines():
    from wsi_lab.errors import TrainingError

    exc = TrainingError("the local job exited with status 1:\nTraceback (most recent call last):\n"
                        '  File "x.py", line 3, in <module>\n    boom()\nZeroDivisionError: division by zero')
    text = readable_error(exc)
    assert "Traceback" not in text and 'File "' not in text
    assert "exited with status 1" in text and "ZeroDivisionError: division by zero" in text


def test_tiling_and_inference_jobs_get_a_row_per_slide(table, tmp_path):
    from wsi_lab.tiling import TilingParams, start_tiling
    from wsi_lab.train import launch

    c = JobConsole(jobs_root=tmp_path / "jobs")
    try:
        slides = sorted(Path(table).parent.glob("*.svs"))
        tiling = c.watch(start_tiling(slides, TilingParams(tile_size=64, method="otsu", min_tissue=0.1),
                                      out=tmp_path / "tiles", n_workers=1), label="tiling 2 slides")
        assert tiling.kind == "tiling"
        assert tiling.job.wait(240) == JobStatus.DONE, tiling.job.logs(tail=20)
        c.refresh()
        grid = status_rows(tiling)
        assert {r["slide"] for r in grid} == {"s0", "s1"} and {r["status"] for r in grid} == {"done"}
        row = c.rows[tiling.id]
        assert "s0" in row.grid.value and row.charts is None
        assert "proxy/" in row.dashboard.value and "Dask dashboard" in row.dashboard.value
        # inference with a trained checkpoint: one row per slide as well
        job = launch(JobSpec.from_dict({"task": "classify", "table": str(table), "out": str(tmp_path / "m"),
                                        "epochs": 1, "batch_size": 8}))
        assert job.wait(300) == JobStatus.DONE
        pred = start_prediction(tmp_path / "m" / "checkpoints" / "last.pt", _read(table), out=tmp_path / "pred")
        assert pred.job.wait(240) == JobStatus.DONE, pred.job.logs(tail=20)
        c.refresh()
        assert {r["slide"]: r["status"] for r in status_rows(pred)} == {"s0": "done", "s1": "done"}
        assert pred.id in c.rows and "prob_" in ",".join(pred.job.result().table.columns)
        resumed = pred.resume()  # a re-run skips the complete slides
        assert resumed.wait(120) == JobStatus.DONE and sorted(resumed.result().skipped) == ["s0", "s1"]
    finally:
        c.close()


def _read(table: Path):
    from wsi_lab.data.table import read_table

    return read_table(table)


def test_the_registry_keeps_one_entry_per_job_and_refuses_to_forget_a_running_one(tmp_path):
    import threading

    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.ui.jobs import forget_job

    gate = threading.Event()
    job = ThreadJob(lambda j: gate.wait(30), name="waiting")
    entry = register_job(job, label="waiting")
    assert register_job(job) is entry and get_job(entry.id) is entry and entry.kind == "other"
    with pytest.raises(InvalidParameterError, match="still running"):
        forget_job(entry.id)
    with pytest.raises(InvalidParameterError, match="still"):
        entry.resume()
    gate.set()
    job.wait(10)
    forget_job(entry.id)
    assert entry not in registered_jobs()


def test_the_sagemaker_backend_is_offered_only_with_wsi_lab_cloud(tmp_path, monkeypatch):
    c = JobConsole(jobs_root=tmp_path)
    try:
        values = [v for _, v in c.backend.options]
        if console_mod.HAS_CLOUD:
            assert "sagemaker" in values
        else:
            assert values == ["local", "torchrun", "horovod"] and "wsi_lab.cloud" in c.backend_hint.value
        c.backend.value = "torchrun"
        assert c.nproc.layout.display is None
        c.backend.value = "local"
        assert c.nproc.layout.display == "none"
        c.task.value = "vae"
        assert list(c.model.options) == ["vae"]
    finally:
        c.close()


def test_dashboard_links_go_through_the_jupyter_server(monkeypatch):
    from wsi_lab.ui.dashboard import dashboard_links, proxied_url, server_base_url

    assert proxied_url("http://127.0.0.1:8787/status", "/user/ann/") == "/user/ann/proxy/8787/status"
    assert proxied_url("http://localhost:41234/status", "/") == "/proxy/41234/status"
    assert proxied_url("http://10.0.0.5:8787/status", "/") is None  # another host: the server cannot proxy it
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/bob")
    assert server_base_url() == "/user/bob/"
    links = dashboard_links("http://127.0.0.1:8787/status")
    assert links.proxied == "/user/bob/proxy/8787/status" and links.direct.endswith(":8787/status")
    json.dumps(links.__dict__)
