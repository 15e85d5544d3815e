"""The ``sagemaker`` block of a :class:`~wsi_lab.train.spec.JobSpec`: which keys it takes, their
defaults, and the structural checks (types, choices). Refusals name the key (``sagemaker.<key>``).

What needs AWS knowledge (which instance types have GPUs, whether the bucket or role exists) is
checked by :mod:`wsi_lab.cloud` before anything is uploaded or created. Credentials never belong in
a spec: keys that look like credentials, and values that look like access keys, are refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from wsi_lab.errors import InvalidParameterError

__all__ = ["SAGEMAKER_DEFAULTS", "DISTRIBUTIONS", "INPUT_MODES", "FILE_SYSTEMS", "check_sagemaker_block",
           "sagemaker_settings"]

DISTRIBUTIONS = ("torch_distributed", "mpi")
INPUT_MODES = ("File", "FastFile", "Pipe")
FILE_SYSTEMS = ("EFS", "FSxLustre")

#: every key of the block and its default (``None``: not set; ``bucket`` and ``role`` are required)
SAGEMAKER_DEFAULTS: dict[str, Any] = {
    "bucket": None, "prefix": "wsi-lab", "role": None, "region": None,
    "instance_type": "ml.g5.xlarge", "instance_count": 1,
    "distribution": None, "processes_per_host": 1,
    "input_mode": "File", "image_uri": None, "file_system": None,
    "framework_version": "2.5.1", "py_version": "py311",
    "max_run_s": 86_400, "volume_gb": 50, "job_name": None, "tags": {},
    "vpc": None,                      # {"subnets": [...], "security_group_ids": [...]}: needed by file_system
}
_CREDENTIAL_KEY = re.compile(r"(access_key|secret|session_token|password|credential)", re.I)
_ACCESS_KEY_VALUE = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bad(key: str, why: str) -> InvalidParameterError:
    return InvalidParameterError(f"job spec key 'sagemaker.{key}': {why}")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def check_sagemaker_block(block: Any, batch_size: int = 1) -> None:
    """Refuse a malformed block (naming ``sagemaker.<key>``); ``batch_size`` (the global batch) must
    divide over ``instance_count * processes_per_host`` processes."""
    if not isinstance(block, Mapping):
        raise InvalidParameterError(f"job spec key 'sagemaker': must be an object, got {type(block).__name__}")
    for key in block:
        if _CREDENTIAL_KEY.search(str(key)):
            raise _bad(str(key), "credentials never go in a spec; use an AWS profile, the environment or an "
                                 "instance role (boto3 finds them)")
    unknown = sorted(set(block) - set(SAGEMAKER_DEFAULTS))
    if unknown:
        raise InvalidParameterError(f"job spec key 'sagemaker': unknown key(s) {unknown}; known: "
                                    f"{sorted(SAGEMAKER_DEFAULTS)}")
    for text in _strings(block):
        if _ACCESS_KEY_VALUE.search(text):
            raise InvalidParameterError("job spec key 'sagemaker': a value looks like an AWS access key id; "
                                        "credentials never go in a spec")
    s = sagemaker_settings(block)
    for key in ("bucket", "role"):
        if not isinstance(s[key], str) or not s[key].strip():
            raise _bad(key, f"is required (the S3 bucket / the IAM role SageMaker runs as), got {s[key]!r}")
    if not _BUCKET.match(s["bucket"]):
        raise _bad("bucket", f"{s['bucket']!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
    if not isinstance(s["prefix"], str):
        raise _bad("prefix", f"must be a string, got {s['prefix']!r}")
    if not isinstance(s["instance_type"], str) or not s["instance_type"].startswith("ml."):
        raise _bad("instance_type", f"must be a SageMaker instance type such as 'ml.g5.xlarge', got {s['instance_type']!r}")
    for key in ("instance_count", "processes_per_host", "max_run_s", "volume_gb"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _bad(key, f"must be an integer >= 1, got {v!r}")
    if s["distribution"] not in (None, *DISTRIBUTIONS):
        raise _bad("distribution", f"{s['distribution']!r} is not one of {', '.join(DISTRIBUTIONS)} (or null)")
    if s["distribution"] is None and s["processes_per_host"] != 1:
        raise _bad("processes_per_host", "more than one process per host needs distribution 'mpi' or "
                                         "'torch_distributed'")
    if s["input_mode"] not in INPUT_MODES:
        raise _bad("input_mode", f"{s['input_mode']!r} is not one of {', '.join(INPUT_MODES)}")
    for key in ("image_uri", "region", "job_name"):
        if s[key] is not None and (not isinstance(s[key], str) or not s[key]):
            raise _bad(key, f"must be a non-empty string or null, got {s[key]!r}")
    if not isinstance(s["tags"], Mapping) or not all(isinstance(v, str) for v in s["tags"].values()):
        raise _bad("tags", f"must be an object of strings, got {s['tags']!r}")
    fs = s["file_system"]
    if fs is not None:
        if not isinstance(fs, Mapping) or set(fs) - {"id", "type", "path", "access_mode"}:
            raise _bad("file_system", f"must be {{'id', 'type', 'path', 'access_mode'}}, got {fs!r}")
        if fs.get("type") not in FILE_SYSTEMS:
            raise _bad("file_system.type", f"{fs.get('type')!r} is not one of {', '.join(FILE_SYSTEMS)}")
        if not str(fs.get("id", "")).startswith("fs-"):
            raise _bad("file_system.id", f"must be a file system id 'fs-...', got {fs.get('id')!r}")
        if not str(fs.get("path", "")).startswith("/"):
            raise _bad("file_system.path", f"must be an absolute directory path, got {fs.get('path')!r}")
        if fs.get("access_mode", "ro") not in ("ro", "rw"):
            raise _bad("file_system.access_mode", f"{fs.get('access_mode')!r} is not 'ro' or 'rw'")
    vpc = s["vpc"]
    if vpc is not None and (not isinstance(vpc, Mapping) or set(vpc) != {"subnets", "security_group_ids"}
                            or not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                                       for v in vpc.values())):
        raise _bad("vpc", f"must be {{'subnets': [...], 'security_group_ids': [...]}} (non-empty lists), got {vpc!r}")
    if fs is not None and vpc is None:
        raise _bad("vpc", "a file_system input (EFS/FSx) is reached through a VPC: give its subnets and "
                          "security_group_ids")
    world = s["instance_count"] * s["processes_per_host"]
    if batch_size % world:
        raise InvalidParameterError(f"job spec key 'batch_size': the global batch {batch_size} must divide evenly "
                                    f"over {world} SageMaker processes (instance_count x processes_per_host)")


def sagemaker_settings(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """The block with every default filled in (a new dict)."""
    return {**SAGEMAKER_DEFAULTS, **dict(block or {})}
