"""The run layer (wsi_lab.runs): specs, progress events, manifests, Job handles, executors."""

from __future__ import annotations

import dataclasses
import io
import socket
import sys
import threading
import time

import pytest

from wsi_lab.errors import InvalidParameterError
from wsi_lab.runs import (
    Failure,
    ItemStatus,
    JobCancelledError,
    JobStatus,
    ProgressEvent,
    ProgressTracker,
    Spec,
    SubprocessJob,
    TextProgressBar,
    ThreadJob,
    manifest,
)
from wsi_lab.runs.executors import (
    SchedulerUnreachableError,
    TooManyWorkersWarning,
    check_scheduler_reachable,
    check_workers,
    normalize_scheduler_address,
)


# -- Spec --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Inner(Spec):
    k: int = 2

    def validate(self):
        if self.k < 0:
            raise InvalidParameterError(f"k must be ≥ 0, got {self.k}")
        return self


@dataclasses.dataclass(frozen=True)
class Outer(Spec):
    name: str = "a"
    inner: Inner | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def validate(self):
        if self.inner is not None:
            self.inner.validate()
        return self


def test_spec_round_trip_hash_and_refusals():
    s = Outer("x", Inner(3), {"b": 1, "a": [1, 2]})
    assert Outer.from_json(s.to_json()) == s and Outer.from_dict(s.to_dict()) == s
    assert s.to_dict()["inner"] == {"k": 3}
    assert s.hash() == Outer.from_json(s.to_json(indent=2)).hash() and len(s.hash()) == 64
    assert s.hash() == Outer("x", Inner(3), {"a": [1, 2], "b": 1}).hash()  # key order does not matter
    assert s.hash() != Outer("x", Inner(4), s.extra).hash() and s.hash(12) == s.hash()[:12]
    with pytest.raises(InvalidParameterError, match="'bogus'"):
        Outer.from_dict({"name": "x", "bogus": 1})
    with pytest.raises(InvalidParameterError, match="k must"):
        Outer.from_dict({"inner": {"k": -1}})
    with pytest.raises(InvalidParameterError, match="'zz'"):
        Outer.from_dict({"inner": {"zz": 1}})
    with pytest.raises(InvalidParameterError, match="JSON"):
        Outer.from_json("{nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "y"  # type: ignore[misc]
    assert s.replace(name="z").name == "z"


def test_tiling_params_is_a_spec():
    from wsi_lab.tiling import TilingParams, TwoStage

    p = TilingParams(tile_size=128, mpp=0.5, two_stage=TwoStage(128, 32), method_params={"threshold": 5})
    assert isinstance(p, Spec) and TilingParams.from_json(p.to_json()) == p
    assert isinstance(TilingParams.from_dict(p.to_dict()).two_stage, TwoStage)
    with pytest.raises(InvalidParameterError, match="tile_sise"):
        TilingParams.from_dict({"tile_sise": 3})
    with pytest.raises(InvalidParameterError, match="tile_size"):
        TilingParams.from_dict({"tile_size": 0})


# -- progress ----------------------------------------------------------------------------------------
def test_tracker_metrics_items_rates_and_eta():
    events: list[ProgressEvent] = []
    t = ProgressTracker(4, events.append, unit="slides", items=["a", "b"], rates=("tiles",))
    t.update("start", item="a", status="running")
    time.sleep(0.01)
    t.update(add={"tiles": 100}, fraction=0.25, item="a", status=ItemStatus.DONE, add_done=1)
    t.update(item="b", status=ItemStatus.FAILED, add_done=1)
    ev = events[-1]
    assert ev.done == 2 and ev.tiles == 100 and ev.tiles_per_s > 0 and ev.failed == 1
    assert ev.items == {"a": ItemStatus.DONE, "b": ItemStatus.FAILED} and ev.eta_s is not None
    assert ev.fraction == 0.5 and ev.as_dict()["items"]["b"] == "failed"
    last = t.update("end", finished=True)
    assert last.finished and last.fraction == 1.0 and last.eta_s == 0.0

    def broken(_ev):
        raise RuntimeError("view broke")

    ProgressTracker(1, broken).update("survives")  # a broken view does not stop the run


def test_text_bar_renders_metrics():
    buf = io.StringIO()
    bar = TextProgressBar(buf)
    t = ProgressTracker(2, bar, unit="slides", rates=("tiles",))
    t.update(metrics={"tiles": 5, "tiles_done": 10, "tiles_expected": 40})
    t.update("all done", done=2, finished=True)
    out = buf.getvalue()
    assert "2/2 slides" in out and "tiles/s" in out and "10/40 tiles read" in out and "all done" in out


# -- manifest ----------------------------------------------------------------------------------------
def test_manifest_complete_only_when_hashes_and_files_match(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"y" * 50)
    m = manifest.write_manifest(tmp_path, "demo", inputs_hash="i1", params_hash="p1",
                                files=["a.bin", {"path": "sub/b.jpg", "split": "train"}], n=2)
    assert m["n"] == 2 and m["files"][1]["split"] == "train" and m["files"][0]["bytes"] == 100
    assert manifest.check_manifest(tmp_path, "demo", inputs_hash="i1", params_hash="p1") == m
    assert manifest.check_manifest(tmp_path, "demo", inputs_hash="i2", params_hash="p1") is None
    assert manifest.check_manifest(tmp_path, "other", inputs_hash="i1", params_hash="p1") is None
    # same size, other bytes: caught by the hash
    (tmp_path / "sub" / "b.jpg").write_bytes(b"z" * 50)
    assert manifest.check_manifest(tmp_path, "demo", inputs_hash="i1", params_hash="p1") is None
    assert manifest.check_manifest(tmp_path, "demo", verify_hashes=False) is not None
    # truncated: caught by the size
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    assert manifest.check_manifest(tmp_path, "demo", verify_hashes=False) is None
    (tmp_path / "manifest.json").write_text("{broken")
    assert manifest.read_manifest(tmp_path) is None
    with pytest.raises(InvalidParameterError, match="reserved"):
        manifest.write_manifest(tmp_path, "demo", inputs_hash="", params_hash="", files=[], completed_at=1)


def test_clean_unlisted_removes_orphans_and_part_files(tmp_path):
    (tmp_path / "tiles").mkdir()
    for name in ("1.jpg", "2.jpg", "orphan.jpg", ".3.jpg.abc.part"):
        (tmp_path / "tiles" / name).write_bytes(b"j")
    (tmp_path / "user-notes.txt").write_text("mine")
    m = manifest.write_manifest(tmp_path, "t", inputs_hash="", params_hash="", files=["tiles/1.jpg", "tiles/2.jpg"])
    removed = manifest.clean_unlisted(tmp_path, m, owned=("tiles/*",))
    assert sorted(p.name for p in removed) == [".3.jpg.abc.part", "orphan.jpg"]
    assert (tmp_path / "user-notes.txt").exists() and (tmp_path / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["1.jpg", "2.jpg"]


# -- Job ---------------------------------------------------------------------------------------------
def test_thread_job_lifecycle_logs_metrics_failures():
    gate = threading.Event()
    seen: list[ProgressEvent] = []

    def body(job):
        job.log("hello")
        job.record_metrics(step=1, loss=0.5)
        job.record_metrics(step=2, loss=0.25)
        job.add_failure(Failure.from_exception("slide-b", ValueError("bad tile")))
        job.emit(ProgressEvent(1, 2, message="half"))
        gate.wait(10)
        return 42

    job = ThreadJob(body, name="demo", progress=seen.append)
    assert job.status() == JobStatus.RUNNING
    with pytest.raises(TimeoutError):
        job.result(timeout=0.05)
    gate.set()
    assert job.result(timeout=10) == 42 and job.status() == JobStatus.DONE and job.wait(1) == JobStatus.DONE
    assert job.logs(tail=2) == ["FAILED slide-b: ValueError: bad tile", "half"] and job.logs()[0] == "hello"
    df = job.metrics()
    assert list(df["loss"]) == [0.5, 0.25] and "time" in df.columns
    assert job.failures == [Failure("slide-b", "ValueError", "bad tile")] and seen[0].message == "half"


def test_thread_job_failed_and_cancelled():
    job = ThreadJob(lambda j: 1 / 0, name="boom")
    assert job.wait(10) == JobStatus.FAILED
    with pytest.raises(ZeroDivisionError):
        job.result()

    def loop(j):
        while not j.cancel_event.wait(0.01):
            pass
        return None

    job = ThreadJob(loop, name="loop")
    job.cancel()
    assert job.wait(10) == JobStatus.CANCELLED
    with pytest.raises(JobCancelledError):
        job.result()


def test_subprocess_job_streams_logs_and_metrics():
    code = ("import json, sys\nprint('starting')\nprint('WSI_LAB_METRIC ' + json.dumps({'step': 1, 'loss': 0.5}))\n"
            "print('WSI_LAB_PROGRESS ' + json.dumps({'done': 1, 'total': 1, 'unit': 'epochs'}))\n")
    seen = []
    job = SubprocessJob([sys.executable, "-c", code], name="child", progress=seen.append)
    assert job.result(timeout=60) == 0 and job.status() == JobStatus.DONE
    assert job.logs() == ["starting"] and job.metrics()["loss"].tolist() == [0.5] and seen[0].unit == "epochs"
    bad = SubprocessJob([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"])
    assert bad.wait(60) == JobStatus.FAILED
    with pytest.raises(Exception, match="3"):
        bad.result()
    slow = SubprocessJob([sys.executable, "-c", "import time; time.sleep(60)"], grace_s=2)
    slow.cancel()
    assert slow.wait(30) == JobStatus.CANCELLED


def test_a_subprocess_job_whose_finishing_fails_ends_failed_not_running():
    class Broken(SubprocessJob):
        def _finish(self, result=None, error=None, status=None):
            raise RuntimeError("cannot read the summary")

    job = Broken([sys.executable, "-c", "print('done')"])
    assert job.wait(60) == JobStatus.FAILED
    with pytest.raises(RuntimeError, match="summary"):
        job.result()


def test_a_training_job_reads_the_result_two_ranks_printed_on_one_line():
    """Two torchrun ranks writing at once can put both result lines on one (the job stayed 'running')."""
    from wsi_lab.train.launcher import RESULT_PREFIX, _last_reported

    line = RESULT_PREFIX + '{"epochs_run": 2}' + RESULT_PREFIX + '{"epochs_run": 2}'
    assert _last_reported(["x", line, ""], RESULT_PREFIX) == {"epochs_run": 2}
    assert _last_reported([RESULT_PREFIX + '{"a": 1}', RESULT_PREFIX + "{broken"], RESULT_PREFIX) == {"a": 1}
    assert _last_reported(["nothing"], RESULT_PREFIX) is None


# -- executors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("127.0.0.1:8786", "tcp://127.0.0.1:8786"), ("tcp://10.0.0.5:9000", "tcp://10.0.0.5:9000"),
    ("  myhost ", "tcp://myhost:8786"), ("[::1]:8786", "tcp://[::1]:8786"), ("tls://h:1/", "tls://h:1")])
def test_scheduler_address_normalised(given, expected):
    assert normalize_scheduler_address(given) == expected


@pytest.mark.parametrize("bad", [":", "tcp://", "", "   ", "http://host:80", "host:port", "host:0", ":8786", "a b:1"])
def test_bad_scheduler_addresses_refused(bad):
    with pytest.raises(InvalidParameterError, match="scheduler address"):
        normalize_scheduler_address(bad)


def test_unreachable_scheduler_fails_fast_and_says_so():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(SchedulerUnreachableError, match=rf"cannot reach tcp://127.0.0.1:{port} within 5 s"):
        check_scheduler_reachable(f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 3
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        addr = f"127.0.0.1:{srv.getsockname()[1]}"
        assert check_scheduler_reachable(addr, timeout=2) == f"tcp://{addr}"


def test_worker_count_above_cores_warns():
    import os

    with pytest.warns(TooManyWorkersWarning, match="core"):
        check_workers((os.cpu_count() or 1) + 1)
    with pytest.raises(InvalidParameterError):
        check_workers(0)
    assert check_workers(None) == (os.cpu_count() or 1)


def _worker_settings() -> tuple:
    import dask

    return (dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.worker.memory.monitor-interval"))


def test_own_local_cluster_runs_with_low_overhead_settings():
    import dask
    import distributed  # noqa: F401 - its config defaults

    from wsi_lab.runs.executors import LOCAL_CLUSTER_CONFIG, dask_client

    before = dask.config.get("distributed.worker.profile.enabled")
    with dask_client(None, 1) as c:
        # the worker processes (spawned by their nannies) got the settings; this process's config is as it was
        assert set(c.run(_worker_settings).values()) == {
            (False, LOCAL_CLUSTER_CONFIG["distributed.worker.memory.monitor-interval"])}
        assert dask.config.get("distributed.worker.profile.enabled") == before
        assert c.submit(sum, [1, 2]).result() == 3
