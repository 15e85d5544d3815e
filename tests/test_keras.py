"""The TensorFlow/Keras path (cases in ``keras_cases.py``), run in an interpreter of its own.

TensorFlow loaded into the test process makes napari's OpenGL calls crash later in the same process
(a segmentation fault in ``glClear`` under Xvfb), so the Keras cases never import TensorFlow here: a child
``pytest`` runs them and its outcome is this test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("keras_cases.py")


def test_keras_cases_in_their_own_process():
    if find_spec("tensorflow") is None or find_spec("torch") is None:
        pytest.skip("tensorflow and torch are needed (pip install 'wsi-lab[tf,train]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(CASES.parents[1]), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(CASES)],
                          cwd=CASES.parents[1], env=env, capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"Keras cases failed ({summary}):\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    # only the Horovod case may skip (Horovod or Keras 2 not installed: WSI_LAB_SKIP_HOROVOD=1); TensorFlow is here
    skips = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert "passed" in summary and all("Horovod" in ln for ln in skips), summary + "\n" + "\n".join(skips)
