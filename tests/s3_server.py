"""A real S3-speaking server for tests: moto's standalone server (``python -m moto.server``, from
the dev extra's ``moto[server]``) in its own process on a free loopback port.

Why a server and not moto's in-process mock: the controller under test is a separate process, and
even in-process the store should be tested over the wire the way it talks to MinIO or AWS (HTTP,
SigV4, ranges, multipart uploads, presigned URLs). The credentials are moto's dummy ones, handed
over the standard AWS environment variables, as an operator would hand real ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleet.shared.ports import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "edgeloop-test",
    "AWS_SECRET_ACCESS_KEY": "edgeloop-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Dummy credentials (moto accepts any): the variables boto3 reads, never a command line."""


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    pid: int = 0
    """moto's process (the leader of its own process group)."""

    def controller_env(self, prefix: str = "edgeloop/artifacts/") -> dict[str, str]:
        """A controller's settings for its artifact store in this bucket (and the credentials)."""
        return {
            **CREDENTIALS,
            "EDGELOOP_FLEET_ARTIFACT_STORE": "s3",
            "EDGELOOP_FLEET_S3_BUCKET": self.bucket,
            "EDGELOOP_FLEET_S3_PREFIX": prefix,
            "EDGELOOP_FLEET_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def stop(self) -> None:
        """Stop the server as an outage does: every connection to it is refused from now on."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def client(self) -> Any:
        """A boto3 client of the server, with :data:`CREDENTIALS`."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def open_uploads(self) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        listed = self.client().list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in listed.get("Uploads", [])]


@contextmanager
def moto_s3(log_dir: Path) -> Iterator[S3Server]:
    """moto's server with one empty bucket; stopped (its process group) on exit."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = log_dir / "moto-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"moto server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"moto server not up: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        server = S3Server(endpoint, f"edgeloop-{uuid.uuid4().hex[:8]}", proc.pid)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
