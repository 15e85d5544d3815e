"""Uploads to ``s3://bucket/prefix/...`` that skip what is already there: an object with the same
size and the same SHA-256 (kept in the object's metadata, ``x-amz-meta-sha256``) is not sent again,
so a re-run uploads nothing new. Local files are only read, never moved or deleted."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from wsi_lab.cloud.errors import CloudError, UploadError
from wsi_lab.cloud.session import ACTIONS, CloudSession, aws_call
from wsi_lab.io import file_sha256

log = logging.getLogger(__name__)

__all__ = ["S3Object", "Uploaded", "s3_uri", "parse_s3_uri", "is_s3", "check_bucket", "upload_file", "upload_tree",
           "download_tree"]


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Uploaded:
    """One local file and where it is in S3; ``sent`` is False when an identical object was already there."""

    path: Path
    uri: str
    size: int
    sha256: str
    sent: bool


def s3_uri(bucket: str, *parts: str) -> str:
    """``s3://bucket/a/b/c`` from key parts (empty parts and duplicate slashes dropped)."""
    key = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return f"s3://{bucket}/{key}"


def is_s3(path: object) -> bool:
    return isinstance(path, str) and path.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Object:
    """``s3://bucket/key`` -> :class:`S3Object`; refuses anything else."""
    from wsi_lab.errors import InvalidParameterError

    if not is_s3(uri) or len(uri) <= 5 or uri[5:].startswith("/"):
        raise InvalidParameterError(f"{uri!r} is not an S3 URI (s3://bucket/key)")
    bucket, _, key = uri[5:].partition("/")
    return S3Object(bucket, key)


def check_bucket(session: CloudSession, bucket: str) -> None:
    """Raise :class:`CloudError` (code ``NoSuchBucket``, ``403``...) unless ``bucket`` exists and is reachable."""
    try:
        aws_call("HeadBucket", session.client("s3").head_bucket, Bucket=bucket, what=f"s3://{bucket}")
    except CloudError as exc:
        code = "NoSuchBucket" if exc.code in ("404", "NoSuchBucket", "NotFound") else exc.code
        raise CloudError(f"bucket s3://{bucket} does not exist or cannot be reached", code=code,
                         operation="HeadBucket",
                         action=(ACTIONS.get(code or "") or "check sagemaker.bucket").replace("BUCKET", bucket)) from exc


def upload_file(session: CloudSession, path: str | os.PathLike, uri: str) -> Uploaded:
    """Upload one file to ``uri`` unless an object of the same size and SHA-256 is there already."""
    p = Path(path)
    if not p.is_file():
        raise UploadError(f"{p}: not found, so it cannot be uploaded to {uri}", operation="PutObject",
                          action="fix the path in the spec, or give an s3:// URI of data already in S3")
    dest = parse_s3_uri(uri)
    try:
        size, digest = p.stat().st_size, file_sha256(p)
    except OSError as exc:
        raise UploadError(f"{p}: cannot be read ({exc})", operation="PutObject",
                          action="check the file's permissions") from exc
    s3 = session.client("s3")
    try:
        head = aws_call("HeadObject", s3.head_object, Bucket=dest.bucket, Key=dest.key, what=uri)
        if head.get("ContentLength") == size and head.get("Metadata", {}).get("sha256") == digest:
            log.debug("%s: already in %s (same size and SHA-256)", p, uri)
            return Uploaded(p, uri, size, digest, sent=False)
    except CloudError as exc:
        if exc.code not in ("404", "NoSuchKey", "NotFound"):
            raise
    from boto3.exceptions import S3UploadFailedError

    try:
        aws_call("PutObject", s3.upload_file, str(p), dest.bucket, dest.key, what=uri,
                 ExtraArgs={"Metadata": {"sha256": digest}})
    except S3UploadFailedError as exc:
        code = "NoSuchBucket" if "NoSuchBucket" in str(exc) else "S3UploadFailed"
        raise UploadError(f"{p} -> {uri}: {exc}", code=code, operation="PutObject",
                          action=ACTIONS.get(code, "check the bucket and the credentials' S3 permissions")
                          .replace("BUCKET", dest.bucket)) from exc
    log.info("uploaded %s -> %s (%d bytes)", p, uri, size)
    return Uploaded(p, uri, size, digest, sent=True)


def upload_tree(session: CloudSession, folder: str | os.PathLike, uri: str,
                pattern: str = "**/*") -> list[Uploaded]:
    """Upload every file under ``folder`` matching ``pattern`` to ``uri/<relative path>`` (hidden files and
    ``.part`` temporaries skipped), each skipped when already there."""
    root = Path(folder)
    if not root.is_dir():
        raise UploadError(f"{root}: not a folder, so it cannot be uploaded to {uri}", operation="PutObject",
                          action="fix the path, or give an s3:// URI of data already in S3")
    files = sorted(f for f in root.glob(pattern) if f.is_file() and not f.name.endswith(".part")
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    return [upload_file(session, f, uri.rstrip("/") + "/" + f.relative_to(root).as_posix()) for f in files]


def download_tree(session: CloudSession, uri: str, folder: str | os.PathLike) -> list[Path]:
    """Download every object under the prefix ``uri`` into ``folder`` (keys relative to the prefix)."""
    src = parse_s3_uri(uri)
    prefix = src.key.rstrip("/") + "/" if src.key else ""
    s3, out = session.client("s3"), []
    pages = aws_call("ListObjectsV2", lambda: list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=src.bucket, Prefix=prefix)), what=uri)
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            target = Path(folder) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            aws_call("GetObject", s3.download_file, src.bucket, obj["Key"], str(target), what=f"s3://{src.bucket}/{obj['Key']}")
            out.append(target)
    return out
