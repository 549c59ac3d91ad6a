"""A real controller process with its artifacts in S3-compatible object storage: a real moto
standalone server (``python -m moto.server`` from the dev extra's ``moto[server]``), started by
this module on a free port, with dummy credentials handed to the controller in the standard AWS
environment variables.

Through the operator's admin client and the device's own client: a signed artifact is uploaded
(streamed) and lands in the bucket under its sha256; a tampered one (its multipart upload already
under way) is refused with a 422 and leaves no object and no open upload; a device's partial
download resumes with ``Range``, streamed through the controller or, with
``EDGELOOP_FLEET_ARTIFACT_REDIRECT_S``, from a presigned URL the controller redirects it to.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builders import sign
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from s3_server import S3Server, moto_s3
from servers import Controller, write_public_key

from fleet.admin import AdminClient, AdminError
from fleet.controller.artifacts.s3 import PART
from fleet.shared.admin_protocol import ArtifactRegistration
from fleet.shared.protocol import Artifact

pytestmark = pytest.mark.integration

CLS = "s3-cpu"
VARIANT = f"{CLS}-int8"
PREFIX = "fleet/artifacts/"
KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def s3_controller(root: Path, s3: S3Server, **env: str) -> Iterator[Controller]:
    ctl = Controller(
        root,
        f"sqlite:///{root / 'fleet.db'}",
        write_public_key(KEY, root / "k.pem"),
        env={**s3.controller_env(PREFIX), **env},
    )
    ctl.start()
    yield ctl
    ctl.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Controller]:
    yield from s3_controller(tmp_path_factory.mktemp("streaming"), s3)


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Controller]:
    yield from s3_controller(
        tmp_path_factory.mktemp("redirecting"), s3, EDGELOOP_FLEET_ARTIFACT_REDIRECT_S="60"
    )


def upload(
    controller: Controller, path: Path, model: str, version: str, signed_bytes: bytes
) -> Artifact | None:
    """Register ``path`` through the admin client with a claim signed over ``signed_bytes``."""
    registration = ArtifactRegistration(
        model=model, version=version, variant=VARIANT, hardware_class=CLS,
        sha256=hashlib.sha256(signed_bytes).hexdigest(), release=int(version),
        signature=sign(KEY, VARIANT, signed_bytes, model=model, version=version),
    )  # fmt: skip
    admin = AdminClient(controller.base, "test-admin-token")
    try:
        return admin.register_artifact(registration, path)
    finally:
        admin.close()


def test_a_signed_upload_lands_in_the_bucket_and_a_tampered_one_leaves_nothing(
    streaming: Controller, s3: S3Server, tmp_path: Path
) -> None:
    data = os.urandom(PART + 500_000)  # two parts: the refusal comes after a part went up
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    before = s3.keys()

    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # changed after signing
    with pytest.raises(AdminError) as refused:
        upload(streaming, path, "s3m", "1", data)
    assert refused.value.status == 422
    assert f"says {sha}" in str(refused.value) and "nothing was stored" in str(refused.value)
    assert s3.keys() == before and s3.open_uploads() == []

    path.write_bytes(data)
    artifact = upload(streaming, path, "s3m", "1", data)
    assert isinstance(artifact, Artifact)
    assert artifact.sha256 == sha and artifact.size_bytes == len(data)
    assert s3.keys() == sorted({*before, f"{PREFIX}{sha}"})
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"{PREFIX}{sha}")["Body"].read()
    assert body == data and s3.open_uploads() == []
    assert not (streaming.artifact_dir / sha[:2]).exists()  # nothing on the controller's disk


def device_download(
    controller: Controller, model: str, data: bytes, tmp_path: Path
) -> list[tuple[str, str | None, str | None]]:
    """A device of ``CLS`` downloads ``model`` version 1 with 123,456 bytes already on disk, through
    the agent's client; every request it made: (host, Authorization, Range)."""
    path = tmp_path / f"{model}.onnx"
    path.write_bytes(data)
    upload(controller, path, model, "1", data)
    credential = controller.enrol(f"{model}-dev", CLS)
    artifact = Artifact(
        model=model, version="1", variant=VARIANT, sha256=hashlib.sha256(data).hexdigest(),
        signature="unused", release=1, size_bytes=len(data), url=f"/v1/artifacts/{model}/1/{VARIANT}",
    )  # fmt: skip
    requests: list[tuple[str, str | None, str | None]] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            requests.append(
                (f"{request.url.host}:{request.url.port}", request.headers.get("authorization"),
                 request.headers.get("range"))
            )  # fmt: skip
            return super().handle_request(request)

    dest = tmp_path / "part.onnx"
    dest.write_bytes(data[:123_456])  # the link dropped here last time
    with controller.client(transport=Recording()) as client:
        client.download(artifact, dest, credential)
    assert dest.read_bytes() == data
    return requests


def test_a_download_streamed_from_the_bucket_resumes_with_range(
    streaming: Controller, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    requests = device_download(streaming, "s3dl", data, tmp_path)
    assert [(host, rng) for host, _, rng in requests] == [
        (f"127.0.0.1:{streaming.port}", "bytes=123456-")
    ]
    credential = requests[0][1]
    assert credential is not None
    url = f"{streaming.base}/v1/artifacts/s3dl/1/{VARIANT}"
    headers = {"Authorization": credential}
    r = httpx.get(url, headers={**headers, "Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    r = httpx.get(url, headers={**headers, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    whole = httpx.get(url, headers=headers)
    assert whole.status_code == 200 and whole.content == data
    r = httpx.get(url, headers={**headers, "If-None-Match": whole.headers["etag"]})
    assert r.status_code == 304


def test_a_download_redirected_to_a_presigned_url_resumes_there(
    redirecting: Controller, s3: S3Server, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    requests = device_download(redirecting, "s3redirect", data, tmp_path)
    moto = s3.endpoint_url.removeprefix("http://")
    controller = f"127.0.0.1:{redirecting.port}"
    assert [(host, auth is not None, rng) for host, auth, rng in requests] == [
        (controller, True, "bytes=123456-"),  # asks the controller
        (moto, False, "bytes=123456-"),  # resumes from the bucket, without the credential
    ]
