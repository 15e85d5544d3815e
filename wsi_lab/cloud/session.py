"""Where the cloud layer talks to: a :class:`CloudSession` built from the usual AWS settings
(profile, region, ``endpoint_url`` or ``AWS_ENDPOINT_URL``), so the same code reaches AWS or a local
endpoint (moto). Credentials are left to boto3's own chain (environment, profile, instance role):
this module never reads, logs or stores them.

:func:`aws_call` is the one place where boto3/botocore exceptions become :class:`CloudError` with the
AWS error code and what to do."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wsi_lab.cloud.errors import CloudError, UnsupportedOperationError
from wsi_lab.errors import MissingDependencyError

log = logging.getLogger(__name__)

__all__ = ["CloudSession", "aws_call", "ACTIONS"]

R = TypeVar("R")

#: what to do for the AWS error codes users meet most (one table; messages add the resource)
ACTIONS: dict[str, str] = {
    "NoSuchBucket": "create the bucket (aws s3 mb s3://BUCKET) or fix sagemaker.bucket",
    "404": "create the bucket (aws s3 mb s3://BUCKET) or fix sagemaker.bucket",
    "403": "the credentials may not use this bucket; check the bucket policy and region",
    "AccessDenied": "the credentials lack this permission; check the IAM policy of the caller",
    "NoSuchEntity": "create the role (with AmazonSageMakerFullAccess) or fix sagemaker.role",
    "ValidationException": "SageMaker refused the request; the message names the field",
    "ResourceLimitExceeded": "ask for a higher quota for this instance type, or use fewer/smaller instances",
    "ResourceNotFound": "check the name and region of the SageMaker resource",
    "ResourceInUse": "the name is taken; choose another job_name (or let WSI Lab add a timestamp)",
    "ExpiredToken": "refresh the credentials (aws sso login / new session token)",
    "InvalidClientTokenId": "the access key is not valid in this region/account; check the profile",
    "NoCredentials": "configure credentials: aws configure, AWS_PROFILE, or an instance role",
    "EndpointConnectionError": "the endpoint cannot be reached; check endpoint_url / AWS_ENDPOINT_URL and the network",
}


def _boto3():
    try:
        import boto3
    except ImportError as exc:
        raise MissingDependencyError("boto3", "sagemaker", "SageMaker jobs") from exc
    return boto3


@dataclass
class CloudSession:
    """A boto3 session plus where to send requests. ``endpoint_url`` (or ``AWS_ENDPOINT_URL``, which boto3
    honours itself) points every client at one endpoint, e.g. ``http://127.0.0.1:5000`` for moto."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint_url = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        boto3 = _boto3()
        self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        self.region = self._session.region_name or "us-east-1"

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None = None, **overrides: Any) -> CloudSession:
        """A session from a spec's ``sagemaker`` block (``region``) and keyword overrides
        (``region``, ``profile``, ``endpoint_url``; ``None`` values are ignored)."""
        kw: dict[str, Any] = {"region": (settings or {}).get("region")}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def client(self, service: str) -> Any:
        """A cached boto3 client for ``service`` (``s3``, ``sagemaker``, ``logs``, ``iam``, ``sts``)."""
        if service not in self._clients:
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
            self._clients[service] = self._session.client(service, region_name=self.region,
                                                          endpoint_url=self.endpoint_url, config=cfg)
        return self._clients[service]

    def describe(self) -> str:
        """Where requests go, for logs (never credentials)."""
        return f"region {self.region}" + (f", endpoint {self.endpoint_url}" if self.endpoint_url else "")


def aws_call(operation: str, fn: Callable[..., R], *args: Any, what: str = "", **kwargs: Any) -> R:
    """Call ``fn(*args, **kwargs)``; translate botocore errors into :class:`CloudError` naming ``what``
    (the resource), the AWS error code and the action from :data:`ACTIONS`. A call the endpoint does not
    implement (HTTP 500/501 ``InternalFailure``/``NotImplemented``) is :class:`UnsupportedOperationError`."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    target = f" {what}" if what else ""
    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = err.get("Message") or str(exc)
        if status in (500, 501) and code in ("500", "501", "InternalFailure", "NotImplemented", "InternalError",
                                             "Unknown") or "not yet implemented" in message.lower():
            raise UnsupportedOperationError(
                f"{operation}{target}: this endpoint does not implement {operation} (HTTP {status})", code=code,
                operation=operation,
                action="a local endpoint (moto) lacks this call; on AWS it works, or stop the job in the console") from exc
        raise CloudError(f"{operation}{target}: {message}", code=code, operation=operation,
                         action=ACTIONS.get(code)) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise CloudError(f"{operation}{target}: no AWS credentials found", code="NoCredentials", operation=operation,
                         action=ACTIONS["NoCredentials"]) from exc
    except EndpointConnectionError as exc:
        raise CloudError(f"{operation}{target}: {exc}", code="EndpointConnectionError", operation=operation,
                         action=ACTIONS["EndpointConnectionError"]) from exc
    except BotoCoreError as exc:
        raise CloudError(f"{operation}{target}: {exc}", code=type(exc).__name__, operation=operation) from exc
