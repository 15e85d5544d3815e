"""Training jobs from a :class:`~wsi_lab.train.spec.JobSpec`: the same spec that runs locally, with a
``sagemaker`` block (see :mod:`wsi_lab.train.sagemaker_block`). :func:`launch` checks what can be
checked before spending anything (distribution vs instance type, bucket, role), uploads the table,
its slides and the code (skipping what is there), creates the job with the request the SageMaker
SDK's PyTorch estimator would send, and returns a :class:`~wsi_lab.cloud.job.SageMakerJob`.

:func:`training_request` is pure (no AWS call): the tests read it back with ``DescribeTrainingJob``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_lab.cloud.code import ENTRY_SCRIPT, build_source_bundle
from wsi_lab.cloud.entry import SPEC_KEYS
from wsi_lab.cloud.errors import CloudError, UploadError
from wsi_lab.cloud.instances import check_distribution
from wsi_lab.cloud.job import SageMakerJob
from wsi_lab.cloud.pipe_plan import VALIDATION_CHANNELS, check_pipe_task, pipe_processes, plan_pipe
from wsi_lab.cloud.session import CloudSession, aws_call
from wsi_lab.cloud.upload import check_bucket, is_s3, parse_s3_uri, s3_uri, upload_file, upload_tree
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.runs.progress import ProgressCallback
from wsi_lab.runs.spec import stable_hash
from wsi_lab.train.sagemaker_block import sagemaker_settings
from wsi_lab.train.spec import JobSpec

log = logging.getLogger(__name__)

__all__ = ["METRIC_DEFINITIONS", "SPEC_HYPERPARAMETERS", "TrainingInputs", "framework_image", "resolve_role",
           "training_request", "upload_training_inputs", "launch", "job_name_for"]

_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
#: what SageMaker parses from the entry point's stdout (wsi_lab.train.loop prints these lines)
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": f"Training Loss: {_NUMBER}"},
    {"Name": "validation:loss", "Regex": f"Validation Loss: {_NUMBER}"},
    {"Name": "validation:accuracy", "Regex": f"Validation Accuracy: {_NUMBER}"},
]
SPEC_HYPERPARAMETERS = SPEC_KEYS
_HP_MAX = 2500  # SageMaker's limit on one hyper-parameter value


@dataclass
class TrainingInputs:
    """Where a job's inputs are: the code archive, the table (a URI and the table's name in the channel),
    the slides prefix, the features prefix (MIL), and what was sent."""

    code_uri: str
    table_uri: str
    table_name: str
    slides_uri: str | None = None
    features_uri: str | None = None
    uploaded: list[Any] = field(default_factory=list)
    pipe_sources: list[dict[str, str]] = field(default_factory=list)  # Pipe: one S3DataSource per process
    pipe_hps: dict[str, Any] = field(default_factory=dict)            # Pipe: classes, tile size, promises
    pipe_validation: dict[str, str] | None = None                     # Pipe: the validation split's source

    @property
    def sent(self) -> int:
        return sum(1 for u in self.uploaded if u.sent)


def framework_image(region: str, framework_version: str, py_version: str, gpu: bool) -> str:
    """The AWS Deep Learning Container of PyTorch training for this region and device."""
    device = f"gpu-{py_version}-cu124" if gpu else f"cpu-{py_version}"
    return (f"763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-training:"
            f"{framework_version}-{device}-ubuntu22.04-sagemaker")


def job_name_for(spec: JobSpec, base: str | None = None) -> str:
    """``<base or wsi-lab-<task>>-<UTC timestamp>-<4 hex>``, at most 63 characters (SageMaker's limit)."""
    import secrets

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    head = (base or f"wsi-lab-{spec.task}").replace("_", "-")[: 63 - len(stamp) - 1]
    return f"{head}-{stamp}"


def resolve_role(session: CloudSession, role: str) -> str:
    """The role's ARN: an ARN is used as given; a bare name is looked up with IAM (``NoSuchEntity``:
    :class:`CloudError` saying to create it)."""
    if role.startswith("arn:"):
        if ":role/" not in role:
            raise InvalidParameterError(f"job spec key 'sagemaker.role': {role!r} is not an IAM role ARN "
                                        "(arn:aws:iam::<account>:role/<name>)")
        return role
    iam = session.client("iam")
    try:
        return aws_call("GetRole", iam.get_role, RoleName=role, what=f"role {role}")["Role"]["Arn"]
    except CloudError as exc:
        raise CloudError(f"IAM role {role!r} (sagemaker.role) cannot be found", code=exc.code, operation="GetRole",
                         action="create the SageMaker execution role or give its full ARN") from exc


def _hp(value: Any) -> str:
    return json.dumps(value)


def training_request(spec: JobSpec, inputs: TrainingInputs, job_name: str, role_arn: str,
                     region: str) -> dict[str, Any]:
    """The ``CreateTrainingJob`` request for ``spec`` (its ``sagemaker`` block filled with defaults)."""
    s = sagemaker_settings(spec.sagemaker)
    gpus = check_distribution(s["instance_type"], s["distribution"], s["processes_per_host"])
    hps: dict[str, str] = {
        "sagemaker_program": _hp(ENTRY_SCRIPT), "sagemaker_submit_directory": _hp(inputs.code_uri),
        "sagemaker_region": _hp(region), "sagemaker_container_log_level": _hp(logging.INFO),
        "sagemaker_job_name": _hp(job_name), "wsi_lab_table": _hp(inputs.table_name),
    }
    if s["distribution"] == "mpi":
        hps.update(sagemaker_mpi_enabled=_hp(True), sagemaker_mpi_num_of_processes_per_host=_hp(s["processes_per_host"]),
                   sagemaker_mpi_custom_mpi_options=_hp(""))
    elif s["distribution"] == "torch_distributed":
        hps["sagemaker_torch_distributed_enabled"] = _hp(True)
    if s["file_system"] is not None:
        hps["wsi_lab_fs_root"] = _hp(s["file_system"]["path"])
    d = spec.to_dict()
    for key in SPEC_HYPERPARAMETERS:
        hps[key] = _hp(d[key])
    long = [k for k, v in hps.items() if len(v) > _HP_MAX]
    if long:
        raise InvalidParameterError(f"job spec key {long[0]!r}: its value is longer than SageMaker's {_HP_MAX} "
                                    "characters per hyper-parameter")
    if s["input_mode"] == "Pipe":
        if not inputs.pipe_sources:
            raise InvalidParameterError("job spec key 'sagemaker.input_mode': Pipe streams TFRecord shards; 'table' "
                                        "must be a TFRecord export folder (wsi-lab export --format tfrecord)")
        for k, v in inputs.pipe_hps.items():
            hps[k] = _hp(v)
    image = s["image_uri"] or framework_image(region, s["framework_version"], s["py_version"], gpu=bool(gpus))
    channels = _channels(spec, s, inputs)
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": role_arn,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": s["input_mode"],
                                   "MetricDefinitions": METRIC_DEFINITIONS, "EnableSageMakerMetricsTimeSeries": True},
        "HyperParameters": hps,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": s3_uri(s["bucket"], s["prefix"], "jobs")},
        "ResourceConfig": {"InstanceType": s["instance_type"], "InstanceCount": s["instance_count"],
                           "VolumeSizeInGB": s["volume_gb"]},
        "StoppingCondition": {"MaxRuntimeInSeconds": s["max_run_s"]},
        "Tags": [{"Key": "wsi-lab:task", "Value": spec.task}, {"Key": "wsi-lab:spec-hash", "Value": spec.hash(16)},
                 *({"Key": k, "Value": v} for k, v in sorted(s["tags"].items()))],
    }
    if s["vpc"] is not None:
        request["VpcConfig"] = {"Subnets": s["vpc"]["subnets"], "SecurityGroupIds": s["vpc"]["security_group_ids"]}
    return request


def _s3_channel(name: str, uri: str, mode: str, sharded: bool = False, seed: int | None = None) -> dict[str, Any]:
    ch: dict[str, Any] = {
        "ChannelName": name, "InputMode": mode,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                        "S3DataDistributionType": "ShardedByS3Key" if sharded else "FullyReplicated"}}}
    if seed is not None:
        ch["ShuffleConfig"] = {"Seed": seed}
    return ch


def _channels(spec: JobSpec, s: Mapping[str, Any], inputs: TrainingInputs) -> list[dict[str, Any]]:
    mode = s["input_mode"]
    fs = s["file_system"]
    if fs is not None:
        return [{"ChannelName": "train", "InputMode": "File" if fs["type"] == "EFS" else mode,
                 "DataSource": {"FileSystemDataSource": {
                     "FileSystemId": fs["id"], "FileSystemType": fs["type"], "DirectoryPath": fs["path"],
                     "FileSystemAccessMode": fs.get("access_mode", "ro")}}}]
    if mode == "Pipe":
        # one pipe per process on each host (its own shards); ShardedByS3Key gives each host its share of them
        out = []
        for i, src in enumerate(inputs.pipe_sources):
            ch = _s3_channel(f"train_{i}", src["uri"], "Pipe", sharded=True, seed=spec.seed)
            ch["DataSource"]["S3DataSource"]["S3DataType"] = src["type"]
            out.append(ch)
        if inputs.pipe_validation is not None:  # every host gets it all; rank 0 evaluates it (wsi_lab.cloud.pipe)
            out.append(_s3_channel(VALIDATION_CHANNELS[0], inputs.pipe_validation["uri"], "Pipe"))
        return out
    # File / FastFile: every rank samples from the whole table (DistributedSampler), so every host gets all
    out = [_s3_channel("train", inputs.table_uri, mode)]
    if inputs.slides_uri:
        out.append(_s3_channel("slides", inputs.slides_uri, mode))
    if inputs.features_uri:
        out.append(_s3_channel("features", inputs.features_uri, mode))
    return out


def _table_files(table: Path) -> list[Path]:
    if table.is_dir():
        return sorted(table.glob("*/tiles.parquet")) or sorted(table.glob("*.parquet"))
    return [table]


def upload_training_inputs(spec: JobSpec, session: CloudSession, workdir: str | os.PathLike) -> TrainingInputs:
    """Upload the code archive, the spec's table (file or tiling folder), the slides the table points to and
    the MIL features folder, each skipped when already in S3; inputs given as ``s3://`` URIs are used as
    they are. Raises :class:`UploadError` for data that is neither in S3 nor on this disk."""
    s = sagemaker_settings(spec.sagemaker)
    bucket, prefix = s["bucket"], s["prefix"]
    code = build_source_bundle(Path(workdir) / "sourcedir.tar.gz")
    from wsi_lab.io import file_sha256

    code_up = upload_file(session, code, s3_uri(bucket, prefix, "code", file_sha256(code)[:16], code.name))
    ups = [code_up]
    if s["file_system"] is not None:  # data lives on EFS/FSx: nothing to upload but the code
        rel = os.path.relpath(spec.table, s["file_system"]["path"]) if os.path.isabs(spec.table) else spec.table
        return TrainingInputs(code_up.uri, "", rel, uploaded=ups)
    if s["input_mode"] == "Pipe":
        return _pipe_inputs(spec, session, s, code_up)
    features_uri = None
    if spec.features:
        features_uri = spec.features if is_s3(spec.features) else None
        if features_uri is None:
            tag = stable_hash(sorted(p.name for p in Path(spec.features).glob("*.npz")))[:16]
            features_uri = s3_uri(bucket, prefix, "features", tag)
            ups += upload_tree(session, spec.features, features_uri, "*.npz")
    if is_s3(spec.table):  # data already in S3: the table (a .parquet object or a prefix), slides under prefix/slides/
        if spec.table.endswith(".parquet"):
            where, name = spec.table.rsplit("/", 1)
            table_uri = where + "/"
        else:
            table_uri, name = spec.table.rstrip("/") + "/", ""
        return TrainingInputs(code_up.uri, table_uri, name, s3_uri(bucket, prefix, "slides") + "/", features_uri, ups)
    table = Path(spec.table)
    if not table.exists():
        raise UploadError(f"{table}: the spec's table is not in S3 and not on this disk, so it cannot be uploaded",
                          operation="PutObject", action="fix 'table' in the spec or give an s3:// URI")
    files = _table_files(table)
    if not files:
        raise DataError(f"{table}: no TileTable in this folder (expected */tiles.parquet or *.parquet)")
    from wsi_lab.io import file_sha256 as sha

    tag = stable_hash([sha(f) for f in files])[:16]
    table_uri = s3_uri(bucket, prefix, "tables", tag) + "/"
    for f in files:
        rel = f.relative_to(table).as_posix() if table.is_dir() else f.name
        ups.append(upload_file(session, f, table_uri + rel))
    name = "" if table.is_dir() else table.name
    slides = _slide_files(spec)
    slides_uri = None
    if slides:
        stag = stable_hash(sorted((p.name, p.stat().st_size) for p in slides))[:16]
        slides_uri = s3_uri(bucket, prefix, "slides", stag) + "/"
        for p in slides:
            ups.append(upload_file(session, p, slides_uri + p.name))
            companion = p.with_suffix("")  # MRXS and friends keep their data in a sibling folder
            if companion.is_dir():
                ups += upload_tree(session, companion, slides_uri + companion.name)
    return TrainingInputs(code_up.uri, table_uri, name, slides_uri, features_uri, ups)


def _pipe_inputs(spec: JobSpec, session: CloudSession, s: Mapping[str, Any], code_up: Any) -> TrainingInputs:
    """Pipe mode: upload the training and validation shards of the TFRecord export ``spec.table`` (skipping
    what is there) and plan the channels (:func:`wsi_lab.cloud.pipe_plan.plan_pipe`): process ``i`` of each
    host streams the shards ``k`` with ``k % processes == i`` (an S3 manifest file when there are several
    processes), rank 0 the validation shards; the job learns the classes, tile size and per-epoch promise."""
    from wsi_lab.runs.manifest import read_manifest

    root = Path(spec.table)
    manifest = read_manifest(root) if root.is_dir() else None
    if not manifest or manifest.get("kind") != "export_tfrecord":
        raise InvalidParameterError(f"job spec key 'table': Pipe mode streams TFRecord shards; {root} is not a finished "
                                    "TFRecord export folder (wsi-lab export --format tfrecord)")
    gpus = check_distribution(s["instance_type"], s["distribution"], s["processes_per_host"])
    pph = pipe_processes(s["distribution"], s["processes_per_host"], gpus)
    plan = plan_pipe(root, manifest, spec.task, spec.train_split, spec.val_split, pph, s["instance_count"],
                     spec.batch_size)
    base = s3_uri(s["bucket"], s["prefix"], "tfrecords", str(manifest.get("inputs_hash", ""))[:16]) + "/"
    ups = [code_up] + [upload_file(session, root / rel, base + rel)
                       for rel in [p for ch in plan.channels for p in ch] + plan.val_shards]
    if pph == 1:
        sources = [{"uri": base + spec.train_split + "/", "type": "S3Prefix"}]
    else:
        sources = []
        for i, shards in enumerate(plan.channels):
            body = json.dumps([{"prefix": base}, *shards]).encode()
            key = parse_s3_uri(base + f"channels/train_{i}.manifest")
            aws_call("PutObject", session.client("s3").put_object, Bucket=key.bucket, Key=key.key, Body=body,
                     what=base)
            sources.append({"uri": base + f"channels/train_{i}.manifest", "type": "ManifestFile"})
    val = {"uri": base + spec.val_split + "/", "type": "S3Prefix"} if plan.val_shards else None
    return TrainingInputs(code_up.uri, base, "", uploaded=ups, pipe_sources=sources, pipe_hps=plan.hyperparameters(),
                          pipe_validation=val)


def _slide_files(spec: JobSpec) -> list[Path]:
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.train.data import load_job_table

    if spec.task == "mil":
        return []  # MIL reads the feature files, not the slides
    table = load_job_table(spec.table)
    paths = slide_paths_of(table)
    missing = {sid: p for sid, p in paths.items() if not Path(p).is_file()}
    if missing:
        sid, p = next(iter(missing.items()))
        raise UploadError(f"slide {sid} of the table ({p}) is not on this disk, so it cannot be uploaded "
                          f"({len(missing)} missing)", operation="PutObject",
                          action="fix the table's slide paths (re-tile) or put the slides in S3 and give an s3:// table")
    names: dict[str, str] = {}
    for sid, p in paths.items():
        other = names.setdefault(Path(p).name, sid)
        if other != sid:
            raise DataError(f"slides {other} and {sid} share the file name {Path(p).name}; the slides channel "
                            "holds one folder, so rename one of them")
    return sorted({Path(p) for p in paths.values()})


def launch(spec: JobSpec | dict | str | os.PathLike, session: CloudSession | None = None,
           progress: ProgressCallback | None = None, job_name: str | None = None, **session_kw: Any) -> SageMakerJob:
    """Create a SageMaker training job for ``spec`` (a JobSpec, its dict or a spec file) and return its
    handle. Checks first (nothing is uploaded when one fails): the block is complete, the instance type can
    run the distribution, the batch divides over the processes, the bucket exists, the role resolves.
    ``session_kw`` (``region``, ``profile``, ``endpoint_url``) build the session when none is given."""
    if isinstance(spec, (str, os.PathLike)):
        spec = JobSpec.read(spec)
    elif isinstance(spec, dict):
        spec = JobSpec.from_dict(spec)
    if spec.sagemaker is None:
        raise InvalidParameterError("job spec key 'sagemaker': a SageMaker job needs the block "
                                    "{'bucket', 'role', 'instance_type', ...}")
    s = sagemaker_settings(spec.sagemaker)
    gpus = check_distribution(s["instance_type"], s["distribution"], s["processes_per_host"])
    if s["distribution"] == "torch_distributed" and gpus and spec.batch_size % (gpus * s["instance_count"]):
        raise InvalidParameterError(f"job spec key 'batch_size': torch_distributed starts {gpus} process(es) on each "
                                    f"of {s['instance_count']} instance(s); the global batch {spec.batch_size} must "
                                    "divide over them")
    if s["input_mode"] == "Pipe" and s["file_system"] is None:
        check_pipe_task(spec.task)
    session = session or CloudSession.from_settings(s, **session_kw)
    check_bucket(session, s["bucket"])
    role = resolve_role(session, s["role"])
    name = job_name or job_name_for(spec, s["job_name"])
    with tempfile.TemporaryDirectory(prefix="wsi-lab-sm-") as work:
        inputs = upload_training_inputs(spec, session, work)
    request = training_request(spec, inputs, name, role, session.region or "us-east-1")
    job = SageMakerJob(session, "training", name, METRIC_DEFINITIONS, progress=progress)
    job.request = request  # type: ignore[attr-defined]
    job.log(f"{inputs.sent} file(s) uploaded, {len(inputs.uploaded) - inputs.sent} already in S3 ({session.describe()})")
    aws_call("CreateTrainingJob", session.client("sagemaker").create_training_job, what=name, **request)
    job.log(f"created training job {name} on {s['instance_count']} x {s['instance_type']} "
            f"({s['distribution'] or 'one process per host'}, input {s['input_mode']})")
    return job
