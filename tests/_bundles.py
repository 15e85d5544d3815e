"""The committed widget bundles (``wsi_lab/static/*.js``, and the stylesheets the build copies) against what
``npm run build`` makes from ``widgets/src`` now (skipped without ``widgets/node_modules``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WIDGETS = REPO / "widgets"
STATIC = REPO / "wsi_lab" / "static"


def assert_bundle_matches(entry: str, out_dir: Path, css: str | None = None) -> None:
    """``static/<entry>.js`` is esbuild's bundle of ``widgets/src/<entry>.ts`` with the build's flags (made in
    ``out_dir``); with ``css``, ``static/<css>`` is a copy of ``widgets/src/<css>``."""
    esbuild = WIDGETS / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.skip("widgets/node_modules not installed (cd widgets && npm ci)")
    out = out_dir / f"{entry}.js"
    subprocess.run([str(esbuild), f"src/{entry}.ts", "--bundle", "--format=esm", "--minify", "--target=es2020",
                    "--legal-comments=eof", f"--outfile={out}", "--log-level=warning"], cwd=WIDGETS, check=True,
                   timeout=60)
    assert out.read_bytes() == (STATIC / f"{entry}.js").read_bytes(), "run: cd widgets && npm run build"
    if css is not None:
        assert (WIDGETS / "src" / css).read_bytes() == (STATIC / css).read_bytes(), "run: cd widgets && npm run build"
