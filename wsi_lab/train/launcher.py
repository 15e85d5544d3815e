"""``launch(spec) -> Job``: start the one entry point (``python -m wsi_lab.train --spec out/spec.json``)
under a backend and return the run layer's :class:`~wsi_lab.runs.Job`.

- ``local``: one subprocess;
- ``torchrun``: ``python -m torch.distributed.run --standalone --nproc_per_node N`` (DDP; gloo on
  CPU, nccl on GPU);
- ``horovod``: ``horovodrun -np N -H localhost:N`` (Gloo), refused with the install command when
  Horovod is missing.

Logs and metrics stream back through the job (``logs(tail)``, ``metrics()`` as a DataFrame, progress
events). A worker's typed error becomes the job's error (``status()`` = failed), with the same type.
No torch is imported here: the launcher runs in the notebook kernel, the training in the child.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wsi_lab import errors
from wsi_lab.errors import MissingDependencyError, TrainingError
from wsi_lab.runs.job import Failure, JobStatus, SubprocessJob
from wsi_lab.runs.progress import ProgressCallback
from wsi_lab.train.run import ERROR_PREFIX, prepare_out
from wsi_lab.train.spec import JobSpec

__all__ = ["launch", "command_for", "TrainJob", "HOROVOD_INSTALL"]

HOROVOD_INSTALL = "bash scripts/install_horovod.sh"
RESULT_PREFIX = "WSI_LAB_RESULT "
_RANK_PREFIX = re.compile(r"^\[\d+\]<std(?:out|err)>:")  # horovodrun prefixes each line with its rank


def command_for(spec: JobSpec, spec_path: str | os.PathLike, python: str = sys.executable) -> list[str]:
    """The command line that runs ``spec_path`` under ``spec.backend``; raises
    :class:`MissingDependencyError` (with the install command) when the backend's tool is missing."""
    entry = ["-m", "wsi_lab.train", "--spec", str(spec_path)]
    if spec.backend == "local":
        return [python, *entry]
    if spec.backend == "torchrun":
        if importlib.util.find_spec("torch") is None:
            raise MissingDependencyError("torch", "train", "backend 'torchrun'")
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc}", *entry]
    if spec.backend == "horovod":
        runner = shutil.which("horovodrun") or (str(Path(python).parent / "horovodrun")
                                                if (Path(python).parent / "horovodrun").exists() else None)
        if runner is None or importlib.util.find_spec("horovod") is None:
            raise MissingDependencyError("horovod", "horovod", f"backend 'horovod'; install it with {HOROVOD_INSTALL}")
        # Gloo's rendezvous waits 30 s by default: ranks importing TensorFlow on a loaded machine can be further apart
        timeout = os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", "180")
        return [runner, "-np", str(spec.nproc), "-H", f"localhost:{spec.nproc}", "--gloo", "--gloo-timeout-seconds",
                timeout, python, *entry]
    raise errors.InvalidParameterError(f"job spec key 'backend': {spec.backend!r} cannot be launched here")



def _last_reported(lines: Sequence[str], prefix: str) -> Any:
    """The JSON object after ``prefix`` on the last line that starts with it and parses; every rank prints
    one, and two ranks writing at once can put theirs on one line (``PREFIX {...}PREFIX {...}``): the first
    object of such a line is read."""
    decoder = json.JSONDecoder()
    for ln in reversed(lines):
        if ln.startswith(prefix):
            try:
                return decoder.raw_decode(ln[len(prefix):])[0]
            except ValueError:
                continue
    return None

class TrainJob(SubprocessJob):
    """A :class:`SubprocessJob` whose error is the worker's own typed error (``DataError``,
    ``CheckpointError``, ``TrainingError``...) and whose result is the recipe's summary dict."""

    def __init__(self, cmd: Sequence[str], spec: JobSpec, env: dict[str, str] | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.spec = spec
        super().__init__(cmd, name=f"train-{spec.task}", env=env, progress=progress)

    def _unwrap(self, line: str) -> str:
        """Lines horovodrun prefixes with ``[rank]<stdout>:`` are read like unprefixed ones."""
        m = _RANK_PREFIX.match(line)
        return line if m is None else line[m.end():]

    def _finish(self, result: Any = None, error: BaseException | None = None,
                status: JobStatus | None = None) -> None:
        lines = self.logs()
        summary = _last_reported(lines, RESULT_PREFIX)
        if isinstance(error, subprocess.CalledProcessError):
            reported = _last_reported(lines, ERROR_PREFIX)
            if reported is not None:
                cls = getattr(errors, reported["type"], None)
                cls = cls if isinstance(cls, type) and issubclass(cls, errors.WSILabError) else TrainingError
                try:
                    error = cls(reported["message"])
                except TypeError:  # an error class with another signature
                    error = TrainingError(f"{reported['type']}: {reported['message']}")
            else:
                tail = "\n".join(lines[-8:])
                error = TrainingError(f"the {self.spec.backend} job exited with status {error.returncode}:\n{tail}")
            self.add_failure(Failure.from_exception(self.spec.out, error))
        elif error is None and status is None and summary is not None:
            result = summary
        super()._finish(result=result, error=error, status=status)

    def metrics(self, split: str | None = None):
        """The epoch records (a DataFrame); ``split`` keeps one split (``train``, ``val``)."""
        df = super().metrics()
        return df[df["split"] == split].reset_index(drop=True) if split is not None and "split" in df else df


#: launchers of remote backends, registered by the layer that provides them (wsi_lab.cloud registers
#: "sagemaker" when imported): train sits below cloud and never imports it
REMOTE_LAUNCHERS: dict[str, Callable[..., Any]] = {}


def register_backend(name: str, launcher: Callable[..., Any]) -> None:
    """Let ``launch`` hand specs of backend ``name`` to ``launcher(spec, progress=...)``."""
    REMOTE_LAUNCHERS[name] = launcher


def launch(spec: JobSpec | dict | str | os.PathLike, progress: ProgressCallback | None = None,
           backend: str | None = None, nproc: int | None = None, env: dict[str, str] | None = None) -> TrainJob:
    """Start ``spec`` (a :class:`JobSpec`, its dict, or a spec file) and return its running Job.
    ``backend``/``nproc`` override the spec's. ``out/spec.json`` is written first (refused when the out
    folder holds another job), so the child and every rank read the same file."""
    if isinstance(spec, (str, os.PathLike)):
        spec = JobSpec.read(spec)
    elif isinstance(spec, dict):
        spec = JobSpec.from_dict(spec)
    spec = spec.with_changes(backend=backend, nproc=nproc)
    if spec.backend in REMOTE_LAUNCHERS:
        return REMOTE_LAUNCHERS[spec.backend](spec, progress=progress)
    if spec.backend == "sagemaker":
        raise MissingDependencyError("wsi_lab.cloud", "sagemaker", "backend 'sagemaker' (import wsi_lab.cloud, or "
                                     "call wsi_lab.cloud.train(spec))")
    cmd = command_for(spec, Path(spec.out) / "spec.json")
    out = prepare_out(spec)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    root = str(Path(__file__).resolve().parents[2])  # the package's own tree wins in the child too
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    job = TrainJob(cmd, spec, env=child_env, progress=progress)
    job.log(f"launched {' '.join(cmd)} (out: {out})")
    return job
