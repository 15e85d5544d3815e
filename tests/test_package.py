"""Packaging, public API, CLI basics and set-up files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wsi_lab
from wsi_lab import errors
from wsi_lab.cli import main
from wsi_lab.cli.slides import INFO_KEYS

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "tensorflow", "napari", "ipywidgets", "anywidget", "distributed", "PySide6", "jupyterlab"}


def test_import_is_light():
    code = f"import sys, wsi_lab; print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import wsi_lab pulled in heavy modules: {out}"


def test_all_is_exactly_the_public_api():
    assert len(wsi_lab.__all__) == len(set(wsi_lab.__all__))
    for name in wsi_lab.__all__:
        assert getattr(wsi_lab, name) is not None, name
    public = {n for n in dir(wsi_lab) if not n.startswith("_")} | {"__version__"}
    assert public == set(wsi_lab.__all__)
    with pytest.raises(AttributeError):
        wsi_lab.no_such_name  # noqa: B018


def test_error_hierarchy_refines_builtins():
    assert issubclass(errors.SlideNotFoundError, FileNotFoundError)
    assert issubclass(errors.UnsupportedFormatError, ValueError)
    assert issubclass(errors.InvalidParameterError, ValueError)
    assert issubclass(errors.RegionTooLargeError, errors.InvalidParameterError)
    assert issubclass(errors.PathSecurityError, PermissionError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.WSILabError)


def test_environment_yml_in_sync_with_pyproject():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_environment.py"), "--check"])
    assert res.returncode == 0, "environment.yml is stale: run python scripts/sync_environment.py"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_info_json_has_exactly_the_documented_keys(cmu_path, capsys):
    assert main(["info", str(cmu_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert tuple(record) == INFO_KEYS
    assert (record["width"], record["height"]) == (2220, 2967)
    assert record["mpp_x"] == pytest.approx(0.499) and record["magnification"] == 20
    assert record["vendor"] == "aperio"
    assert set(record["associated_images"]) == {"label", "macro", "thumbnail"}


def test_info_table_lists_every_slide(slide_path, capsys):
    assert main(["info", str(slide_path)]) == 0
    out = capsys.readouterr().out
    assert slide_path.name in out and "µm/px" in out


def test_thumbnail_command_writes_an_image(cmu_path, tmp_path):
    out = tmp_path / "t.png"
    assert main(["thumbnail", str(cmu_path), "-o", str(out), "--max-size", "200"]) == 0
    img = np.asarray(Image.open(out))
    assert max(img.shape[:2]) == 200 and img.std() > 5


@pytest.mark.parametrize("make", ["missing", "directory", "empty", "text"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, make):
    target = {"missing": tmp_path / "nope.svs", "directory": tmp_path, "empty": tmp_path / "e.svs",
              "text": tmp_path / "t.svs"}[make]
    if make == "empty":
        target.write_bytes(b"")
    if make == "text":
        target.write_text("this is not a slide\n" * 10)
    res = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "info", str(target)], capture_output=True, text=True)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsi-lab: error:") and str(target.name) in lines[0]
    assert "Traceback" not in res.stderr


def test_doctor_reports_every_part(capsys):
    assert main(["doctor", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in checks}
    assert {"OpenSlide", "cuCIM", "torch", "TensorFlow", "napari", "Dask distributed"} <= names
    for c in checks:
        assert c["ok"] or c["hint"], c


def test_demo_job_runs_the_pipeline(tmp_path, shared_slides):

    res = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "demo", "--slides", str(shared_slides), "--out",
                          str(tmp_path), "--workers", "1", "--no-train"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "CMU-1-Small-Region.svs" in res.stdout and "INFO distributed" not in res.stderr
    assert Image.open(tmp_path / "montage.png").size[0] > 300
    from wsi_lab.data.table import read_table

    table = read_table(tmp_path / "tiles" / "CMU-1-Small-Region" / "tiles.parquet")
    assert len(table) > 10 and (table["tissue_fraction"] >= 0.5).all()
    overview = np.asarray(Image.open(tmp_path / "overlays" / "CMU-1-Small-Region.png"))
    assert overview.shape[0] == 1024


def test_the_test_command_runs_lint_and_type_checks():
    import shutil
    import tomllib

    script = (REPO / "scripts" / "test.sh").read_text()
    assert "ruff check" in script and "mypy" in script and script.index("mypy") < script.index("pytest")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev = " ".join(meta["project"]["optional-dependencies"]["dev"])
    assert "ruff==" in dev and "mypy==" in dev
    assert (REPO / "wsi_lab" / "py.typed").exists()
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    res = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(REPO)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, f"ruff check finds problems:\n{res.stdout[-3000:]}"
