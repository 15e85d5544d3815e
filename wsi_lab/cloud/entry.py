"""What runs inside SageMaker's containers (``python -m wsi_lab.cloud.entry train|serve``).

``train``: the job spec is rebuilt from the hyper-parameters (``SM_HPS``, or
``/opt/ml/input/config/hyperparameters.json`` in an image without the training toolkit) with the
container's paths: the table from ``SM_CHANNEL_TRAIN``, slide paths re-pointed at ``SM_CHANNEL_SLIDES``
(or at the EFS/FSx mount), ``out`` = ``SM_MODEL_DIR`` (SageMaker packs it into ``model.tar.gz``), the
backend from the distribution (``mpi`` -> horovod, ``torch_distributed`` -> torchrun). Then WSI Lab's one
entry point runs it (``wsi_lab.train.run.main``: the ``Training Loss:`` lines SageMaker's metric
definitions parse). A typed error is also written to ``/opt/ml/output/failure`` (SageMaker's
``FailureReason``). Channels ``train_<i>`` in Pipe mode (``SM_INPUT_DATA_CONFIG``) stream TFRecord shards
instead (one per process of a host, plus an optional ``validation`` channel): :mod:`wsi_lab.cloud.pipe`
trains ``classify`` or ``vae`` on them with the same loop, every rank the same number of steps per epoch.

``serve``: the model server (``/ping``, ``/invocations``) over the checkpoint in ``SM_MODEL_DIR``, on
port 8080 (``SAGEMAKER_BIND_TO_PORT``) of every interface (``WSI_LAB_SERVE_HOST`` to change it).

Processing jobs need no entry here: they run ``wsi-lab tile`` itself (see :mod:`wsi_lab.cloud.processing`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SPEC_KEYS", "container_spec", "pipe_spec", "find_checkpoint", "hyperparameters", "main"]

#: the spec keys a training job carries as hyper-parameters (paths, backend and the block are the container's)
SPEC_KEYS = ("task", "model", "epochs", "batch_size", "lr", "weight_decay", "seed", "num_workers", "precision",
              "device", "max_tiles", "label_column", "split_column", "train_split", "val_split", "horovod")


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def hyperparameters(env: Mapping[str, str]) -> dict[str, Any]:
    """The job's hyper-parameters, decoded: ``SM_HPS`` (the toolkit's JSON) or SageMaker's config file."""
    if env.get("SM_HPS"):
        return {k: _decode(v) for k, v in json.loads(env["SM_HPS"]).items()}
    path = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "hyperparameters.json"
    return {k: _decode(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def _world(env: Mapping[str, str]) -> int:
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE"):
        if env.get(key):
            return int(env[key])
    return 1


def container_spec(env: Mapping[str, str] | None = None, workdir: str | os.PathLike | None = None):
    """The :class:`~wsi_lab.train.spec.JobSpec` this container runs (see the module docstring); the table
    with re-pointed slide paths is written to ``workdir`` (default: a temporary folder)."""
    from wsi_lab.data.table import write_table
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.train.data import load_job_table
    from wsi_lab.train.spec import JobSpec

    env = dict(os.environ if env is None else env)
    hps = hyperparameters(env)
    channel = Path(env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    table_path = channel / hps["wsi_lab_table"] if hps.get("wsi_lab_table") else channel
    slides_dir, fs_root = env.get("SM_CHANNEL_SLIDES"), hps.get("wsi_lab_fs_root")
    table = load_job_table(str(table_path))
    meta = table.attrs.setdefault("wsi_lab", {})
    if hps.get("task") != "mil":
        moved = {}
        for sid, p in slide_paths_of(table).items():
            if slides_dir:
                moved[sid] = str(Path(slides_dir) / Path(p).name)
            elif fs_root and str(p).startswith(str(fs_root)):
                moved[sid] = str(channel / os.path.relpath(p, fs_root))
            else:
                moved[sid] = p
        meta["slides"] = {sid: {**(meta.get("slides", {}).get(sid) or {}), "path": p} for sid, p in moved.items()}
        meta.pop("slide_path", None)
    work = Path(workdir or tempfile.mkdtemp(prefix="wsi-lab-job-"))
    local_table = write_table(table, work / "table.parquet")
    d = {k: hps[k] for k in SPEC_KEYS if k in hps}
    d.update(table=str(local_table), out=env.get("SM_MODEL_DIR", "/opt/ml/model"), backend=_backend(hps, env),
             nproc=_world(env))
    if env.get("SM_CHANNEL_FEATURES"):
        d["features"] = env["SM_CHANNEL_FEATURES"]
    return JobSpec.from_dict(d), work


def pipe_spec(env: Mapping[str, str]):
    """The spec of a Pipe-mode job (its ``train*`` channels stream TFRecord shards): the hyper-parameters'
    keys, ``table`` = the FIFO folder, ``out`` = ``SM_MODEL_DIR``, the backend from the distribution."""
    from wsi_lab.cloud.pipe_plan import check_pipe_task
    from wsi_lab.train.spec import JobSpec

    hps = hyperparameters(env)
    check_pipe_task(str(hps.get("task")))  # before the spec, whose checks would name a missing key instead
    d = {k: hps[k] for k in SPEC_KEYS if k in hps}
    d.update(table=env.get("SM_INPUT_DIR", "/opt/ml/input") + "/data", out=env.get("SM_MODEL_DIR", "/opt/ml/model"),
             backend=_backend(hps, env), nproc=_world(env))
    return JobSpec.from_dict(d), hps


def _backend(hps: Mapping[str, Any], env: Mapping[str, str]) -> str:
    if hps.get("sagemaker_mpi_enabled"):
        return "horovod"
    if hps.get("sagemaker_torch_distributed_enabled") or _world(env) > 1:
        return "torchrun"
    return "local"


def find_checkpoint(model_dir: str | os.PathLike) -> Path:
    """The checkpoint a model folder serves: ``checkpoints/best.pt``, else ``last.pt``, else the one ``*.pt``."""
    from wsi_lab.errors import CheckpointError

    root = Path(model_dir)
    for cand in (root / "checkpoints" / "best.pt", root / "checkpoints" / "last.pt", root / "best.pt"):
        if cand.is_file():
            return cand
    found = sorted(root.rglob("*.pt"))
    if len(found) == 1:
        return found[0]
    raise CheckpointError(f"{root}: no checkpoint to serve (expected checkpoints/best.pt; found {len(found)} .pt files)")


def _train(env: Mapping[str, str]) -> int:
    from wsi_lab.errors import WSILabError
    from wsi_lab.train.run import main as train_main

    out_dir = Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    from wsi_lab.cloud.pipe import pipe_channels

    if pipe_channels(env):
        return _train_pipe(env, out_dir)
    try:
        spec, work = container_spec(env)
        spec_path = spec.write(Path(work) / "spec.json")
    except WSILabError as exc:
        _failure(out_dir, f"{type(exc).__name__}: {exc}")
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"wsi-lab: running {spec.task} ({spec.backend}, {spec.nproc} process(es)) into {spec.out}", flush=True)
    rc = train_main(["--spec", str(spec_path)])
    if rc != 0:
        _failure(out_dir, f"the training entry point exited with status {rc}; see the job's log")
    return rc


def _train_pipe(env: Mapping[str, str], out_dir: Path) -> int:
    """Pipe mode: TFRecord shards streamed through FIFOs, trained with the torch loop (:mod:`wsi_lab.cloud.pipe`)."""
    from wsi_lab.cloud.pipe import run_pipe
    from wsi_lab.errors import WSILabError
    from wsi_lab.train.run import ERROR_PREFIX

    try:
        spec, hps = pipe_spec(env)
        print(f"wsi-lab: running {spec.task} ({spec.backend}, {spec.nproc} process(es)) into {spec.out}", flush=True)
        result = run_pipe(spec, hps, env)
    except WSILabError as exc:
        _failure(out_dir, f"{type(exc).__name__}: {exc}")
        print(ERROR_PREFIX + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    print("WSI_LAB_RESULT " + json.dumps(result, default=str), flush=True)
    return 0


def _failure(out_dir: Path, text: str) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "failure").write_text(text[:1024] + "\n")
    except OSError as exc:
        print(f"cannot write {out_dir / 'failure'}: {exc}", file=sys.stderr)


def _serve(env: Mapping[str, str]) -> int:
    from wsi_lab.infer.serve import serve

    ckpt = find_checkpoint(env.get("SM_MODEL_DIR", "/opt/ml/model"))
    serve(ckpt, env.get("WSI_LAB_SERVE_HOST", "0.0.0.0"), int(env.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` or ``serve`` (SageMaker runs images as ``docker run IMAGE train|serve``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("train", "serve"):
        print("usage: python -m wsi_lab.cloud.entry train|serve", file=sys.stderr)
        return 2
    return _train(os.environ) if args[0] == "train" else _serve(os.environ)


if __name__ == "__main__":
    sys.exit(main())
