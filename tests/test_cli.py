"""The ``wsi-lab`` command package: command modules register themselves, one error contract."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from wsi_lab.cli import build_parser, command_modules, main
from wsi_lab.tissue import METHODS

HEAVY = {"torch", "tensorflow", "napari", "ipywidgets", "anywidget", "distributed", "dask", "PySide6",
         "jupyterlab", "pandas", "pyarrow", "scipy"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_module_registers_commands_with_handlers():
    seen: dict[str, str] = {}
    for module in command_modules():
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        assert sub.choices, f"{module.__name__} registers no command"
        for name, p in sub.choices.items():
            assert name not in seen, f"{name} registered by {seen.get(name)} and {module.__name__}"
            seen[name] = module.__name__
            assert callable(p.get_default("func")), f"{name} has no handler"
    expected = {"info", "thumbnail", "doctor", "tissue", "tile", "split", "export", "overlay", "napari", "demo"}
    assert expected <= set(seen)
    assert set(_subcommands(build_parser())) == set(seen)


def test_tissue_method_choices_come_from_the_tissue_table():
    cmds = _subcommands(build_parser())
    method = {c: next(a for a in cmds[c]._actions if a.dest == "method") for c in ("tissue", "tile")}
    assert tuple(method["tissue"].choices) == METHODS
    assert tuple(method["tile"].choices) == (*METHODS, "none")


def test_building_the_parser_stays_light():
    code = ("import sys; from wsi_lab.cli import build_parser; build_parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"wsi-lab --help imports heavy modules: {out}"


def test_python_dash_m_runs_the_same_command():
    res = subprocess.run([sys.executable, "-m", "wsi_lab.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for name in ("info", "tile", "export", "demo"):
        assert name in res.stdout


def test_wsi_lab_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.svs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsi-lab: error: ") and err.count("\n") == 1


def test_bad_tissue_threshold_is_a_typed_error_not_a_traceback(tmp_path, capsys):
    from wsi_lab.testing import make_slide

    slide = make_slide(tmp_path / "s.svs", 512, 512)
    assert main(["tissue", str(slide), "-o", str(tmp_path / "m.png"), "--method", "background",
                 "--threshold", "999"]) == 2
    err = capsys.readouterr().err
    assert "background_threshold" in err and err.count("\n") == 1


@pytest.mark.parametrize("method", METHODS)
def test_cli_threshold_goes_to_the_methods_keyword(tmp_path, method, capsys):
    from wsi_lab.testing import make_slide
    from wsi_lab.tissue import TISSUE_METHODS, TissueMask

    slide = make_slide(tmp_path / "s.svs", 2048, 2048)
    value = {"otsu": 10.0, "variance": 50.0, "background": 230.0}[method]
    assert main(["tissue", str(slide), "-o", str(tmp_path / "m.png"), "--method", method,
                 "--threshold", str(value)]) == 0
    mask = TissueMask.load(tmp_path / "m.png")
    assert mask.params[TISSUE_METHODS[method].threshold_param] == value
