"""cuCIM in a process whose global symbol scope holds torch's libc10 (what ``import horovod.torch`` does): every
``read_region`` of the cuCIM wheel segfaulted there (std::regex code of two GCC versions mixed; see
``wsi_lab.slide.cucim_backend.preload_cucim``). Each case runs in a child process, so a crash fails the test
instead of killing pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

from wsi_lab.testing import make_slide

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(find_spec("cucim") is None or find_spec("torch") is None,
                                reason="needs cuCIM and torch (whose libc10 carries the clashing symbols)")

#: put torch's libc10 into the global symbol scope, as horovod.torch's RTLD_GLOBAL load of its mpi_lib does
POISON = """
import ctypes, pathlib, importlib.util
_lib = pathlib.Path(importlib.util.find_spec("torch").origin).parent / "lib" / "libc10.so"
ctypes.CDLL(str(_lib), mode=ctypes.RTLD_GLOBAL)
from wsi_lab.slide.cucim_backend import foreign_regex_provider
assert "libc10" in (foreign_regex_provider() or ""), foreign_regex_provider()
"""
READ = """
from wsi_lab import open_slide
with open_slide(SLIDE, backend="cucim") as s:
    assert s.backend == "cucim"
    box = s.read_region((256, 256), 0, (256, 256))
    assert box.shape == (256, 256, 3) and box.std() > 0
    assert s.get_thumbnail(64).ndim == 3 and s.associated_images["label"].size > 0
print("READ OK")
"""


def _child(code: str, slide: Path) -> str:
    """Run ``code`` in a fresh interpreter (this worktree first on the path); its stdout, or fail with why."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    src = f"SLIDE = {str(slide)!r}\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", src], capture_output=True, text=True,
                          timeout=240, env=env, cwd=REPO)
    why = "SIGSEGV" if proc.returncode == -11 else f"exit {proc.returncode}"
    assert proc.returncode == 0, f"child failed ({why}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return make_slide(tmp_path_factory.mktemp("cucim") / "s.svs", 1024, 768, seed=3, source="procedural")


@pytest.mark.parametrize("order", ["poisoned_before_wsi_lab", "poisoned_after_cucim_loaded"])
def test_cucim_reads_with_libc10_in_the_global_scope(slide, order):
    if order == "poisoned_before_wsi_lab":
        code = POISON + READ
    else:  # wsi_lab loads cuCIM (available_backends), then the clash arrives, then the reads
        code = "from wsi_lab.slide import available_backends\nassert 'cucim' in available_backends()\n" + POISON + READ
    assert "READ OK" in _child(code, slide)


@pytest.mark.skipif(find_spec("horovod") is None, reason="Horovod not installed")
def test_cucim_reads_after_import_horovod_torch(slide):
    """The trigger seen in the long test run: ``import horovod.torch`` in the same process."""
    assert "READ OK" in _child("import horovod.torch\n" + READ, slide)


def test_cucim_imported_before_wsi_lab_is_refused_with_a_typed_error_and_auto_still_reads(slide):
    """Too late for deep binding (libcucim already loaded): a clear error instead of a crash."""
    code = "import cucim.clara\n" + POISON + """
from wsi_lab import open_slide
from wsi_lab.errors import BackendUnavailableError
try:
    open_slide(SLIDE, backend="cucim")
except BackendUnavailableError as exc:
    assert "horovod.torch" in str(exc) and "libc10" in str(exc), exc
else:
    raise AssertionError("cuCIM opened although its reads would crash")
with open_slide(SLIDE) as s:
    assert s.backend != "cucim" and s.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
print("REFUSED OK")
"""
    assert "REFUSED OK" in _child(code, slide)
