"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph, ...), through boto3.

Objects are ``<prefix><sha256>`` in one bucket. The key is the digest the upload claims, known
before the first byte, so the bytes go straight to their final key, and nothing is visible until
the API has checked them: an artifact of one part (up to :data:`PART` bytes) is buffered and sent
with one ``PutObject`` on commit; a larger one is a multipart upload, its parts sent as they fill
(the controller holds one part in memory, never the file) and completed on commit or aborted on
discard. S3 never shows an object whose multipart upload was not completed. Give the bucket a
lifecycle rule that aborts incomplete multipart uploads after a day, for uploads a crash
interrupted.

Credentials are boto3's own chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, the config
files, an instance role): never a setting, never on a command line. With ``redirect_s`` a device's
download is answered with a presigned ``GetObject`` URL valid that long, which honours ``Range``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fleet.controller.artifacts.interface import (
    CHUNK,
    ArtifactMissing,
    ArtifactStore,
    ArtifactStoreUnavailable,
    Pending,
    check_sha256,
)

PART = 8 << 20
"""Bytes per part of a multipart upload (S3's minimum is 5 MiB for every part but the last)."""

_MISSING = {"404", "NoSuchKey", "NotFound"}


@contextlib.contextmanager
def _unavailable(what: str, where: str) -> Iterator[None]:
    """boto3's errors become :class:`ArtifactStoreUnavailable`, naming the operation and bucket."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise ArtifactStoreUnavailable(f"{what} on {where} failed: {code}: {exc}") from exc
    except BotoCoreError as exc:
        raise ArtifactStoreUnavailable(f"{what} on {where} failed: {exc}") from exc


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        redirect_s: int = 0,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.redirect_s = redirect_s
        self.endpoint_url = endpoint_url
        # path-style addressing for a server of our own (MinIO, a test's moto): its buckets are
        # rarely DNS names; AWS itself takes the default
        style = {"s3": {"addressing_style": "path"}} if endpoint_url else {}
        config = Config(signature_version="s3v4", retries={"mode": "standard"}, **style)
        self._s3 = client or boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{check_sha256(sha256)}"

    def begin(self, sha256: str) -> Pending:
        return _S3Pending(self, sha256)

    def size(self, sha256: str) -> int | None:
        try:
            with _unavailable("HeadObject", self.describe()):
                found = self._s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ArtifactStoreUnavailable as exc:
            if _missing(exc):
                return None
            raise
        return int(found["ContentLength"])

    def read(self, sha256: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        if stop is not None and stop <= start:
            return iter(())
        byte_range = f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"
        try:
            with _unavailable("GetObject", self.describe()):
                answer = self._s3.get_object(
                    Bucket=self.bucket, Key=self.key(sha256), Range=byte_range
                )
        except ArtifactStoreUnavailable as exc:
            if _missing(exc):
                raise ArtifactMissing(f"no object {sha256} in {self.describe()}") from exc
            raise
        return _body(answer["Body"], self.describe())

    def download_url(self, sha256: str) -> str | None:
        if not self.redirect_s:
            return None
        with _unavailable("presigning GetObject", self.describe()):
            url: str = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(sha256)},
                ExpiresIn=self.redirect_s,
            )
        return url

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def _missing(exc: ArtifactStoreUnavailable) -> bool:
    cause = exc.__cause__
    return (
        isinstance(cause, ClientError)
        and cause.response.get("Error", {}).get("Code", "") in _MISSING
    )


def _body(body: Any, where: str) -> Iterator[bytes]:
    try:
        with _unavailable("reading an object", where):
            yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


class _S3Pending(Pending):
    def __init__(self, store: S3ArtifactStore, sha256: str) -> None:
        super().__init__(sha256)
        self._store = store
        self._key = store.key(sha256)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART:
            self._send_part(bytes(self._buffer[:PART]))
            del self._buffer[:PART]

    def _send_part(self, data: bytes) -> None:
        s3, bucket, where = self._store._s3, self._store.bucket, self._store.describe()
        with _unavailable("a multipart upload", where):
            if self._upload_id is None:
                started = s3.create_multipart_upload(
                    Bucket=bucket, Key=self._key, ContentType="application/octet-stream"
                )
                self._upload_id = str(started["UploadId"])
            number = len(self._parts) + 1
            sent = s3.upload_part(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
                Body=data,
            )  # fmt: skip
            self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def _commit(self) -> None:
        s3, bucket, where = self._store._s3, self._store.bucket, self._store.describe()
        if self._upload_id is None:
            with _unavailable("PutObject", where):
                s3.put_object(
                    Bucket=bucket, Key=self._key, Body=bytes(self._buffer),
                    ContentType="application/octet-stream",
                )  # fmt: skip
            return
        if self._buffer:
            self._send_part(bytes(self._buffer))
        with _unavailable("completing a multipart upload", where):
            s3.complete_multipart_upload(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )  # fmt: skip
        self._buffer.clear()

    def _discard(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            with (
                contextlib.suppress(ArtifactStoreUnavailable),
                _unavailable("aborting a multipart upload", self._store.describe()),
            ):
                self._store._s3.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
                )
