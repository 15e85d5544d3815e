"""A real local AWS endpoint for the cloud tests: ``moto_server`` on 127.0.0.1 with fake credentials
(session-scoped; skipped with a reason when moto[server] is not installed)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testingAccessKeyId", "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
            "AWS_SESSION_TOKEN": "testing-token", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


#: the execution role the SageMaker tests name (moto checks only its shape)
SAGEMAKER_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def session_with_bucket(endpoint: str, bucket: str):
    """A ``CloudSession`` (us-east-1) on the moto ``endpoint``, with ``bucket`` created in its S3."""
    from wsi_lab.cloud import CloudSession

    s = CloudSession(region="us-east-1", endpoint_url=endpoint)
    s.client("s3").create_bucket(Bucket=bucket)
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVER: dict = {}  # one moto server per test process, however many modules ask for the fixture


def _start() -> str:
    exe = Path(sys.executable).with_name("moto_server")
    exe_path = str(exe) if exe.exists() else shutil.which("moto_server")
    if exe_path is None:
        pytest.skip("moto[server] is not installed (pip install 'moto[server]')")
    _SERVER["saved"] = {k: os.environ.get(k) for k in [*FAKE_ENV, "AWS_PROFILE", "AWS_ENDPOINT_URL"]}
    os.environ.update(FAKE_ENV)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    port = _free_port()
    proc = subprocess.Popen([exe_path, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _SERVER.update(proc=proc, url=f"http://127.0.0.1:{port}", users=0)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return _SERVER["url"]
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop()
                pytest.fail(f"moto_server did not start on port {port}")
            time.sleep(0.2)


def _stop() -> None:
    proc = _SERVER.pop("proc")
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    for k, v in _SERVER.pop("saved").items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _SERVER.clear()


@pytest.fixture(scope="session")
def moto_endpoint():
    """``http://127.0.0.1:<port>`` of a moto server started for this session; fake credentials in the
    environment (restored afterwards); the server is killed when the last user is done."""
    pytest.importorskip("boto3")
    url = _SERVER["url"] if "proc" in _SERVER else _start()
    _SERVER["users"] += 1
    try:
        yield url
    finally:
        _SERVER["users"] -= 1
        if _SERVER["users"] == 0:
            _stop()
