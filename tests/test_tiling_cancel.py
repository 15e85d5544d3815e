"""Cancel in normal use prints nothing alarming: a real tiling job on its own LocalCluster (the Lab's
Tiling tab runs it the same way, inside the kernel whose stderr is the Jupyter server's terminal) is
cancelled while its workers are busy; the process's stderr, which the worker processes share, must
hold no traceback and no error-level log line (issue 13.10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import json, sys, threading
from wsi_lab.testing import make_slide
from wsi_lab.tiling import TilingParams, start_tiling

slide = make_slide(sys.argv[1] + "/big.svs", 4096, 4096, tile=256, mpp=0.25, tissue_fraction=0.7, seed=4)
busy = threading.Event()
job = start_tiling([slide], TilingParams(tile_size=256, level=0, method=None), out=sys.argv[1] + "/out",
                   materialize="jpeg", chunk_tiles=4, n_workers=2,
                   progress=lambda ev: ev.tiles > 0 and busy.set())
assert busy.wait(180), "no tile was written"
job.cancel()
res = job.result(timeout=180)
left = sorted(str(p) for p in __import__("pathlib").Path(sys.argv[1], "out").rglob("*"))
print("RESULT " + json.dumps({"cancelled": res.cancelled, "tables": len(res.tables), "left": left,
                              "tiles": res.total_tiles}))
"""


def test_cancel_prints_no_worker_tracebacks(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("WSI_LAB_JPEG_PASSTHROUGH", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=400, env=env, cwd=tmp_path)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line is not None, proc.stderr[-4000:]
    res = json.loads(line[7:])
    assert res["cancelled"] and res["tables"] == 0 and res["left"] == [], res
    err = proc.stderr
    assert "Traceback" not in err, err[-4000:]
    bad = [ln for ln in err.splitlines() if " - ERROR - " in ln or " - CRITICAL - " in ln or "Exception" in ln]
    assert bad == [], err[-4000:]
