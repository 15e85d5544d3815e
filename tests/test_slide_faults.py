"""Malformed files and hostile folders never hang or crash the slide layer (issue 14, items 2, 4, 7, 8, 10):
the TIFF structure is checked before any backend sees a file, every open a listing does is bounded in
time, symlink loops are skipped, library warnings stay out of stderr, and errors carry the file as context.
Hangs are bounded: each risky call runs in a subprocess with a time limit, so a regression fails, not hangs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests import _slide_variants as sv
from wsi_lab.errors import SlideOpenError, WSILabError
from wsi_lab.slide import describe_slide, find_slides, open_slide, register_backend
from wsi_lab.slide.backend import unregister_backend
from wsi_lab.slide.bounded import stuck_opens
from wsi_lab.slide.tiff_check import check_tiff_structure
from wsi_lab.testing import make_slide

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    return {"loop": sv.planar_self_loop(d / "loop.tif"), "mismatch": sv.size_beyond_tiles(d / "mismatch.tif"),
            "eof": sv.ifd_past_eof(d / "eof.tif")}


@pytest.mark.parametrize("kind, words", [("loop", "loops"), ("mismatch", "needs"), ("eof", "outside the file")])
def test_structure_check_refuses_before_any_backend(bad, kind, words):
    with pytest.raises(SlideOpenError, match=words) as info:
        check_tiff_structure(bad[kind])
    assert info.value.file == bad[kind] and words in info.value.reason


@pytest.mark.parametrize("kind", ["loop", "mismatch", "eof"])
@pytest.mark.parametrize("backend", ["auto", "tifffile", "openslide", "cucim"])
def test_malformed_tiff_gives_a_typed_error_promptly_on_every_backend(bad, kind, backend):
    """Before the fix: the planar loop hung for good under auto (cuCIM spins) and the size mismatch opened
    as 10^7 x 10^7 px, then failed with a raw IndexError in get_thumbnail."""
    out = _run(f"""
        import json, time
        from wsi_lab import open_slide
        from wsi_lab.errors import WSILabError
        t = time.monotonic()
        try:
            with open_slide({str(bad[kind])!r}, backend={backend!r}) as s:
                s.get_thumbnail(256)
            print(json.dumps({{"error": None}}))
        except WSILabError as exc:
            print(json.dumps({{"error": type(exc).__name__, "s": time.monotonic() - t}}))
    """, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["error"] == "BackendUnavailableError":
        pytest.skip(f"{backend} not installed")
    assert res["error"] == "SlideOpenError" and res["s"] < 5
    assert out.stderr == ""  # no library warnings printed uninvited


def test_good_files_pass_the_structure_check(tmp_path):
    variants = sv.all_variants(tmp_path)
    for make in variants.values():
        v = make()
        check_tiff_structure(v.path)  # every layout the readers support (planar, strips, SubIFDs, BigTIFF...)
    check_tiff_structure(make_slide(tmp_path / "s.svs", 2048, 1536, tile=256))


@pytest.fixture
def hanging_backend():
    """A backend whose open blocks until released, claiming files whose name contains 'hang'."""
    release = threading.Event()

    class Hang:
        name, extensions, default_priority = "hang", {".svs": 1000}, 0

        @classmethod
        def available(cls):
            return True

        @classmethod
        def can_read(cls, path):
            return "hang" in path.name

        @classmethod
        def open(cls, path):
            release.wait(30)
            raise SlideOpenError.at(path, "released")

    register_backend("hang", lambda: Hang)
    yield release
    release.set()
    unregister_backend("hang")


def test_open_is_bounded_and_a_stuck_file_does_not_pile_up_workers(tmp_path, hanging_backend):
    p = make_slide(tmp_path / "hang.svs", 512, 384, tile=128)
    t = time.monotonic()
    with pytest.raises(SlideOpenError, match="timed out after 0.5 s") as info:
        open_slide(p, timeout=0.5)
    assert time.monotonic() - t < 3 and info.value.file == p
    threads = threading.active_count()
    t = time.monotonic()
    with pytest.raises(SlideOpenError, match="still running"):
        open_slide(p, timeout=0.5)  # the first open is still stuck: fail at once, start nothing
    assert time.monotonic() - t < 0.3 and threading.active_count() == threads and stuck_opens() == 1
    infos = {i.name: i for i in find_slides(tmp_path, timeout=0.5)}
    assert infos["hang.svs"].error_type == "SlideOpenError" and "timed out" in infos["hang.svs"].error
    hanging_backend.set()
    deadline = time.monotonic() + 10
    while stuck_opens() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stuck_opens() == 0


def test_bounded_open_returns_the_slide(tmp_path):
    p = make_slide(tmp_path / "ok.svs", 512, 384, tile=128, mpp=0.5)
    with open_slide(p, timeout=30) as s:
        assert s.dimensions == (512, 384)


def test_symlink_loops_are_skipped_with_a_warning(tmp_path, caplog):
    make_slide(tmp_path / "good.svs", 512, 384, tile=128)
    (tmp_path / "self.svs").symlink_to(tmp_path / "self.svs")
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    (tmp_path / "dirloop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "dangling.svs").symlink_to(tmp_path / "gone.svs")
    with caplog.at_level(logging.WARNING, logger="wsi_lab.slide"):
        assert [i.name for i in find_slides(tmp_path, metadata=False)] == ["good.svs"]
        assert [(i.name, i.error) for i in find_slides(tmp_path)] == [("good.svs", None)]
    assert any("self.svs" in r.getMessage() for r in caplog.records)


def test_errors_carry_the_file_and_name_it_relative_to_a_root(tmp_path, bad):
    root = tmp_path / "root"
    (root / "cases").mkdir(parents=True)
    p = root / "cases" / "x.tif"
    p.write_bytes(bad["mismatch"].read_bytes())
    with pytest.raises(SlideOpenError) as info:
        open_slide(p)
    err = info.value
    assert err.file == p and str(p) in str(err) and str(root) not in err.reason
    assert err.message_for(root).startswith("cases/x.tif: ") and str(root) not in err.message_for(root)
    (root / "t.svs").write_text("not a slide")
    with pytest.raises(WSILabError) as info:
        open_slide(root / "t.svs")
    assert info.value.file == root / "t.svs" and str(root) not in info.value.message_for(root)


def test_one_summary_record_for_good_and_unreadable_files(tmp_path, bad):
    good = describe_slide(make_slide(tmp_path / "g.svs", 1024, 768, tile=256, mpp=0.5))
    assert good.readable and (good.width, good.height) == (1024, 768) and good.mpp == pytest.approx((0.5, 0.5))
    assert good.level_dimensions[0] == (1024, 768) and good.level_count == len(good.level_dimensions)
    d = good.as_dict()
    assert json.loads(json.dumps(d))["level_dimensions"][0] == [1024, 768] and d["error"] is None
    broken = describe_slide(bad["loop"])
    assert not broken.readable and broken.error_type == "SlideOpenError" and "loops" in broken.error
    assert str(bad["loop"].parent) not in broken.error  # the reason, not the path
    assert broken.width is broken.height is broken.level_count is broken.mpp is None
    assert broken.size_bytes == bad["loop"].stat().st_size and broken.slide_id == "loop"


def test_library_warnings_go_to_logging_not_stderr(capfd, caplog):
    from wsi_lab.slide._logs import route_library_logs

    route_library_logs()
    with caplog.at_level(logging.INFO, logger="wsi_lab.slide.libs"):
        logging.getLogger("tifffile").warning("<tifffile.TiffPages @8> invalid circular reference")
    assert "invalid circular reference" not in capfd.readouterr().err
    assert any(r.name == "wsi_lab.slide.libs.tifffile" and "circular" in r.getMessage() for r in caplog.records)


def test_real_slides_pass_the_structure_check(slide_path):
    check_tiff_structure(slide_path)


@pytest.mark.parametrize("kind", ["loop", "mismatch"])
def test_cli_reports_one_line_and_returns(bad, kind):
    """Before the fix `wsi-lab info` on the planar loop never returned, and tifffile's warnings added
    lines to the one-line error."""
    out = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "info", str(bad[kind])], capture_output=True,
                         text=True, timeout=60, env=ENV, cwd=REPO)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsi-lab: error: ") and str(bad[kind]) in lines[0], out.stderr
