"""The layering rule: every ``wsi_lab`` module imports only from its own layer or below.

Imports are read with :mod:`ast` from the source (module-level imports and the lazy imports inside
functions alike), so the rule holds for code paths the tests never run. A module that is not in
:data:`LAYERS` fails the test: a new package declares its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsi_lab

PACKAGE = Path(wsi_lab.__file__).resolve().parent

#: the one table of layers (first name below ``wsi_lab`` -> layer); a module may import its layer and below
LAYERS: dict[str, int] = {
    # 0: foundations
    "_version": 0, "_lazy": 0, "errors": 0, "io": 0, "locations": 0,
    # 1: slides
    "slide": 1,
    # 2: what works on one slide, and the run layer
    "tissue": 2, "runs": 2, "progress": 2, "testing": 2, "testing_stains": 2,
    # 3: tiles, tables, exports, overlays and the viewing module
    "tiling": 3, "data": 3, "overlays": 3, "viewing": 3, "deepzoom": 3, "annotations": 3,
    # 4: models
    "models": 4,
    # 5: jobs built on models and tiles
    "train": 5, "infer": 5, "demo": 5, "demo_ml": 5,
    # 6: cloud jobs; review decisions and session bundles (over tables, specs and predictions)
    "cloud": 6, "review": 6, "sessions": 6,
    # 7: servers and viewers outside the notebook; the environment report
    "server": 7, "napari": 7, "doctor": 7,
    # 8: widgets
    "ui": 8,
    # 9: the command line
    "cli": 9,
}

#: imports that break the rule today, as (importing module, imported module); each is reported to its
#: owner and removed from here when fixed (the test fails when an entry no longer occurs)
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve_from_root(name: str) -> str:
    """The module a ``from wsi_lab import name`` really reaches (submodule, lazy public name or root)."""
    if f"wsi_lab.{name}" in MODULES:
        return f"wsi_lab.{name}"
    if name == "__version__":
        return "wsi_lab._version"
    lazy = getattr(wsi_lab, "_LAZY", {})
    if name in lazy:
        return lazy[name]
    if name in ("Slide", "SlideInfo", "open_slide", "find_slides"):
        return "wsi_lab.slide"
    return "wsi_lab"


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported ``wsi_lab`` module) for every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "wsi_lab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "wsi_lab":
                continue
            if target == "wsi_lab":
                found += [(node.lineno, _resolve_from_root(a.name)) for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def violations() -> list[tuple[str, int, str, str]]:
    """(file:line, importer, imported, why) for every upward import."""
    out = []
    for module, path in MODULES.items():
        if module == "wsi_lab":
            continue  # the package facade re-exports the public API lazily (checked by test_package)
        mine = layer_of(module)
        for line, target in imports_of(module, path):
            theirs = layer_of(target) if target != "wsi_lab" else max(LAYERS.values())
            if mine is None or theirs is None or theirs <= mine:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            out.append((where, module.split(".")[1], target.split(".")[1] if "." in target else target,
                        f"layer {mine} imports layer {theirs}"))
    return out


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in MODULES if m != "wsi_lab" and layer_of(m) is None})
    assert not missing, f"add these wsi_lab modules to LAYERS in {__file__}: {missing}"


def test_nothing_imports_upward():
    found = violations()
    new = [v for v in found if (v[1], v[2]) not in KNOWN_VIOLATIONS]
    assert not new, "upward imports (importer layer < imported layer):\n" + "\n".join(
        f"  {where}: wsi_lab.{a} imports wsi_lab.{b} ({why})" for where, a, b, why in new)


def test_known_violations_still_exist():
    """An entry of KNOWN_VIOLATIONS that no longer occurs must be removed (the list only shrinks)."""
    current = {(a, b) for _, a, b, _ in violations()}
    assert KNOWN_VIOLATIONS <= current, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(KNOWN_VIOLATIONS - current)}"


def test_the_import_parser_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom . import sibling\ndef f():\n    from wsi_lab.ui import lab\n"
                   "    import wsi_lab.cli\nfrom ..slide import open_slide\nfrom wsi_lab import detect_tissue\n")
    got = imports_of("wsi_lab.tiling.m", src)
    assert got == [(2, "wsi_lab.tiling"), (6, "wsi_lab.slide"), (7, "wsi_lab.tissue"),
                   (4, "wsi_lab.ui"), (5, "wsi_lab.cli")] or sorted(got) == sorted(
        [(2, "wsi_lab.tiling"), (6, "wsi_lab.slide"), (7, "wsi_lab.tissue"), (4, "wsi_lab.ui"), (5, "wsi_lab.cli")])


@pytest.mark.parametrize("importer,imported,allowed", [
    ("slide", "errors", True), ("slide", "tissue", False), ("tissue", "slide", True), ("runs", "tiling", False),
    ("tiling", "runs", True), ("models", "tiling", True), ("tiling", "models", False), ("train", "models", True),
    ("cloud", "train", True), ("train", "cloud", False), ("ui", "train", True), ("cli", "ui", True),
    ("viewing", "overlays", True), ("overlays", "ui", False), ("io", "slide", False),
])
def test_the_table_encodes_the_rule(importer, imported, allowed):
    assert (LAYERS[imported] <= LAYERS[importer]) is allowed
