"""Session bundles: export a workshop folder (tiling outputs, a job, review decisions, display settings),
replay it into a new folder, and get the same tile table (and the same training losses); bad bundles
and changed slides are refused with typed errors, and a failed export leaves the previous bundle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from wsi_lab.cli import main
from wsi_lab.data.table import read_table
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.sessions import FORMAT, export_session, read_session, replay, tables_equal
from wsi_lab.testing import make_slide
from wsi_lab.tiling import TilingParams, run_tiling


@pytest.fixture(scope="module")
def workshop(tmp_path_factory, client) -> Path:
    """A workshop folder: two generated slides tiled at 128 px, display settings and a review decision."""
    root = tmp_path_factory.mktemp("workshop")
    slides = root / "slides"
    slides.mkdir()
    for i in range(2):
        make_slide(slides / f"s{i}.svs", 1024, 768, tile=256, seed=i, source="procedural", tissue_fraction=0.6,
                   associated=False)
    res = run_tiling(sorted(slides.glob("*.svs")), TilingParams(tile_size=128, method="otsu", min_tissue=0.3),
                     out=root / "tiles", client=client)
    assert res.ok and res.total_tiles > 4, res.summary()
    (root / "overrides.json").write_text(json.dumps({"s0": {"tile_size": 128}}))
    (root / "review").mkdir()
    (root / "review" / "decisions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return root


def test_export_then_replay_gives_the_same_tile_tables(workshop, tmp_path, client):
    bundle = export_session(workshop, tmp_path / "session.zip", note="workshop day 1")
    s = read_session(bundle)
    assert s["format"] == FORMAT and s["note"] == "workshop day 1"
    assert {e["slide_id"] for e in s["tiling"]} == {"s0", "s1"}
    assert all(len(r["sha256"]) == 64 and r["bytes"] > 0 for r in s["slides"])
    assert s["packages"]["numpy"] and s["packages"]["python"]
    assert s["tiling"][0]["params"]["tile_size"] == 128
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
    assert {"review/decisions.geojson", "display/overrides.json", "tables/tiles/s0/tiles.parquet"} <= names
    result = replay(bundle, tmp_path / "again", train=False, client=client)
    assert result.ok and result.matches == {"s0": True, "s1": True}, result.summary()
    for sid in ("s0", "s1"):
        new = read_table(result.tables[sid])
        old = read_table(workshop / "tiles" / sid / "tiles.parquet")
        assert len(new) == len(old) > 0
        ok, why = tables_equal(new, old)
        assert ok, why
    assert "s0: same table" in result.summary()


def test_replay_reports_progress_in_the_run_protocol(workshop, tmp_path, client):
    """replay's long steps (checksums, tiling, training) are ProgressEvents counting steps, with tiling's own
    events forwarded (tiles, finer fraction) and a message as each step ends: what `wsi-lab tile` renders."""
    from wsi_lab.runs.progress import ItemStatus

    bundle = export_session(workshop, tmp_path / "p.zip")
    events = []
    result = replay(bundle, tmp_path / "again", train=False, client=client, progress=events.append)
    assert result.ok
    assert {e.unit for e in events} == {"steps"} and {e.total for e in events} == {4}  # 2 checksums + 2 tilings
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[0] < 0.25
    last = events[-1]
    assert last.finished and last.done == 4 and last.fraction == 1.0 and last.message == "replay matched"
    assert last.items == {"check s0": ItemStatus.DONE, "check s1": ItemStatus.DONE, "tile s0": ItemStatus.DONE,
                          "tile s1": ItemStatus.DONE}
    during = [e for e in events if e.current == "tile s1" and e.done == 3]
    assert max(e.tiles for e in during) > 0 and all(e.fraction >= 0.75 for e in during)  # tiling's own events
    assert any(e.dashboard for e in during) and any("s1:" in e.message and "tiles" in e.message for e in during)
    assert [e.message for e in events if "same table" in e.message] == [
        f"s0: same table ({len(read_table(result.tables['s0']))} tiles)",
        f"s1: same table ({len(read_table(result.tables['s1']))} tiles)"]
    # a refused slide ends its step FAILED, with the reason as the message
    other = tmp_path / "other"
    other.mkdir()
    (other / "s0.svs").write_bytes(b"not the same slide")
    moved = json.loads(zipfile.ZipFile(bundle).read("session.json"))
    for rec in moved["slides"]:
        rec["path"] = str(tmp_path / "gone" / rec["name"])
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tmp_path / "moved.zip", "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, json.dumps(moved) if name == "session.json" else zin.read(name))
    events.clear()
    with pytest.raises(DataError):
        replay(tmp_path / "moved.zip", tmp_path / "r", slides=other, train=False, client=client, progress=events.append)
    assert events[-1].items["check s0"] == ItemStatus.FAILED and "not the slide the session used" in events[-1].message


def test_a_step_s_own_fraction_is_scaled_into_its_share():
    from wsi_lab.runs.progress import ProgressEvent
    from wsi_lab.sessions.replay import _Steps

    seen = []
    steps = _Steps(["tile a", "train b"], seen.append)
    steps.start("tile a")
    steps.inner(ProgressEvent(done=0, total=1, fraction=0.5, metrics={"tiles": 7}))
    assert seen[-1].fraction == 0.25 and seen[-1].tiles == 7 and seen[-1].current == "tile a"
    steps.end("tile a", "a done")
    steps.start("train b")
    steps.inner(ProgressEvent(done=1, total=4, fraction=0.5, metrics={"loss": 0.3}))
    assert seen[-1].fraction == 0.75 and seen[-1].metrics["loss"] == 0.3 and seen[-1].done == 1


def test_tables_equal_sees_a_changed_value():
    a = pd.DataFrame({"x": [0, 128], "y": [0, 0], "tissue_fraction": [0.5, 0.9]})
    b = a.copy()
    assert tables_equal(a, b[["y", "x", "tissue_fraction"]]) == (True, "")
    b.loc[1, "tissue_fraction"] = 0.8
    ok, why = tables_equal(a, b)
    assert not ok and why
    assert tables_equal(a, a.iloc[:1])[1] == "2 rows vs 1"


def test_a_changed_slide_is_refused_before_anything_runs(workshop, tmp_path, client):
    import shutil

    bundle = export_session(workshop, tmp_path / "s.zip")
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (workshop / "slides").glob("*.svs"):
        shutil.copy(p, moved / p.name)
    s = read_session(bundle)
    for rec in s["slides"]:  # the slides "moved": recorded paths no longer exist
        rec["path"] = str(tmp_path / "gone" / rec["name"])
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tmp_path / "moved.zip", "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, json.dumps(s) if item == "session.json" else zin.read(item))
    with pytest.raises(DataError, match="not found"):
        replay(tmp_path / "moved.zip", tmp_path / "r1", train=False, client=client)
    assert replay(tmp_path / "moved.zip", tmp_path / "r2", slides=moved, train=False, client=client).ok  # found by name
    (moved / "s1.svs").write_bytes((moved / "s1.svs").read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(DataError, match="not the slide the session used"):
        replay(tmp_path / "moved.zip", tmp_path / "r3", slides=moved, train=False, client=client)
    assert not (tmp_path / "r3").exists()  # refused before tiling wrote anything


def test_bad_inputs_are_typed_errors_and_a_bundle_is_written_atomically(workshop, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no tiling outputs"):
        export_session(tmp_path, tmp_path / "x.zip")
    with pytest.raises(InvalidParameterError, match=".zip"):
        export_session(workshop, tmp_path / "x.tar")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a WSI Lab session bundle"):
        read_session(tmp_path / "junk.zip")
    good = export_session(workshop, tmp_path / "keep.zip")
    before = good.read_bytes()
    real_write, calls = zipfile.ZipFile.write, []

    def failing_write(self, *args, **kwargs):  # the disk fills up half-way through the bundle
        calls.append(args)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        export_session(workshop, good)
    monkeypatch.undo()
    assert good.read_bytes() == before  # the failed export left the previous bundle whole
    assert not list(tmp_path.glob(".keep.zip.*.part"))


def test_replay_reruns_the_training_job_to_the_same_losses(tmp_path):
    pytest.importorskip("torch")
    from tests._traindata import make_cohort
    from wsi_lab.runs import JobStatus
    from wsi_lab.train import JobSpec, launch

    work = tmp_path / "work"
    table = make_cohort(work / "data", slides=2, tile_size=32, read_size=64, width=256, height=256)
    spec = JobSpec.from_dict({"task": "classify", "table": str(table), "out": str(work / "jobs" / "cls"), "epochs": 1,
                              "batch_size": 8, "seed": 5, "model": {"name": "small_cnn", "dropout": 0.0,
                                                                   "dense_dropout": 0.0}})
    assert launch(spec).wait(300) == JobStatus.DONE
    bundle = export_session(work, tmp_path / "train.zip")
    s = read_session(bundle)
    assert s["seeds"] == {"jobs/cls": 5} and s["training"][0]["checkpoint_sha256"]
    events = []
    result = replay(bundle, tmp_path / "again", progress=events.append)
    assert result.training_matches == {"jobs/cls": True}, result.summary()
    # the training step's own per-epoch events come through, inside the step's share
    epochs = [e for e in events if e.current == "train jobs/cls" and "epoch 1/1" in e.message]
    assert epochs and list(epochs[0].items) == ["train jobs/cls"] and epochs[0].done == 0  # the job is the only step
    assert events[-1].finished and events[-1].message == "replay matched"
    assert "job jobs/cls: same losses" in [e.message for e in events]
    assert (tmp_path / "again" / "jobs" / "cls" / "checkpoints" / "last.pt").is_file()


def test_the_cli_commands(workshop, tmp_path, capsys):
    assert main(["export-session", str(workshop), "--out", str(tmp_path / "b.zip")]) == 0
    assert "2 tiling table(s)" in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "b.zip"), "--out", str(tmp_path / "r"), "--no-train"]) == 0
    out, err = capsys.readouterr()
    assert "s1: same table" in out and "4/4 steps" in err and "s0: same table (" in err  # the progress bar
    assert main(["replay", str(tmp_path / "b.zip"), "--out", str(tmp_path / "r2"), "--no-train", "-q"]) == 0
    assert "steps" not in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "r")]) == 2
    assert "no such session bundle" in capsys.readouterr().err
