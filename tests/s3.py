"""A real S3-compatible server (moto) on loopback, for the object-store tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from s3fs import S3FileSystem

from tests.served import free_port


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """moto's server in its own process with ``bucket`` made; credentials and endpoint
    through the standard AWS environment variables, as a user would set them (restored
    after). Yields ``s3://bucket``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # s3fs keeps one filesystem per set of arguments, and the endpoint comes from the
    # environment: one made for an earlier server would still point there.
    S3FileSystem.clear_instance_cache()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
