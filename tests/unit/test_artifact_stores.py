"""Both artifact stores (fleet.controller.artifacts) through the one interface: the local folder,
and the S3 store against a real S3-speaking server, moto's standalone server (``moto_server``,
installed by the dev extra's ``moto[server]``) started by this module on a free port.

Every test runs on both stores: a commit publishes the bytes under their sha256 and nothing else;
bytes that do not hash to the name they were opened for, and a discarded upload, leave nothing
behind (no file, no object, no open multipart upload); reads by range are what a resumed
download asks for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from s3_server import CREDENTIALS, S3Server, moto_s3

from fleet.controller.artifacts import (
    ArtifactMissing,
    ArtifactStore,
    ArtifactStoreUnavailable,
    LocalArtifactStore,
    open_store,
)
from fleet.controller.artifacts import s3 as s3_module
from fleet.controller.artifacts.s3 import S3ArtifactStore
from fleet.controller.settings import FleetSettings
from fleet.shared.ports import free_port

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)  # boto3's own credential chain, as in production
        with moto_s3(tmp_path_factory.mktemp("moto")) as server:
            yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalArtifactStore(tmp_path / "store")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    prefix = f"{request.node.name}/"
    yield S3ArtifactStore(server.bucket, prefix, endpoint_url=server.endpoint_url)


def stored_names(store: ArtifactStore) -> list[str]:
    """Every file (local, temporary ones included) or object and open upload (S3) of the store."""
    if isinstance(store, LocalArtifactStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    assert isinstance(store, S3ArtifactStore)
    s3 = store._s3
    objects = s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(
        [o["Key"].removeprefix(store.prefix) for o in objects]
        + [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])]
    )


def write(store: ArtifactStore, data: bytes, sha256: str, chunk: int = 64 * 1024) -> None:
    with store.begin(sha256) as pending:
        for i in range(0, len(data), chunk):
            pending.write(data[i : i + chunk])
        pending.commit()


def test_a_committed_object_is_published_under_its_sha256_and_read_by_range(
    store: ArtifactStore,
) -> None:
    assert store.size(SHA) is None
    write(store, DATA, SHA)
    assert store.size(SHA) == len(DATA)
    assert b"".join(store.read(SHA)) == DATA
    assert b"".join(store.read(SHA, 123_456)) == DATA[123_456:]
    assert b"".join(store.read(SHA, 10, 20)) == DATA[10:20]
    assert b"".join(store.read(SHA, 5, 5)) == b""
    expected = [f"{SHA[:2]}/{SHA}"] if isinstance(store, LocalArtifactStore) else [SHA]
    assert stored_names(store) == expected
    write(store, DATA, SHA)  # the same bytes again (another class's variant): one object
    assert stored_names(store) == expected


def test_bytes_that_do_not_hash_to_their_name_are_never_published(store: ArtifactStore) -> None:
    other = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ValueError, match=f"have sha256 {SHA}, not {other}"):
        write(store, DATA, other)
    assert store.size(other) is None
    assert stored_names(store) == []


def test_a_discarded_upload_leaves_nothing(store: ArtifactStore) -> None:
    with store.begin(SHA) as pending:
        pending.write(DATA)
        assert pending.sha256 == SHA and pending.size == len(DATA)
        # leaving the block without a commit: a refused signature, a client that went away
    assert store.size(SHA) is None
    with pytest.raises(ArtifactMissing):
        store.read(SHA)
    assert stored_names(store) == []


def test_a_name_that_is_not_a_sha256_is_refused(store: ArtifactStore) -> None:
    for bad in ("../../etc/passwd", SHA.upper(), SHA[:-1], f"{SHA}/x"):
        with pytest.raises(ValueError, match="not a sha256"):
            store.begin(bad)
        with pytest.raises(ValueError, match="not a sha256"):
            store.size(bad)


def test_a_large_object_goes_up_in_parts_and_an_abandoned_one_is_aborted(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over one part, the S3 store sends parts as they fill (it never holds the file): completed
    on commit, aborted on discard, so an abandoned upload leaves no object and no open upload."""
    store = S3ArtifactStore(s3_server.bucket, "parts/", endpoint_url=s3_server.endpoint_url)
    sent: list[int] = []
    real = store._s3.upload_part

    def counted(**kwargs: object) -> object:
        body = kwargs["Body"]
        assert isinstance(body, bytes)
        sent.append(len(body))
        return real(**kwargs)

    monkeypatch.setattr(store._s3, "upload_part", counted)
    big = os.urandom(2 * s3_module.PART + 12_345)
    sha = hashlib.sha256(big).hexdigest()
    with store.begin(sha) as pending:
        for i in range(0, len(big), 1 << 20):
            pending.write(big[i : i + (1 << 20)])
        assert sent == [s3_module.PART, s3_module.PART]  # sent while the bytes arrived
        assert stored_names(store) == [f"upload:parts/{sha}"]  # nothing readable yet
        pending.discard()
    assert stored_names(store) == []
    write(store, big, sha, chunk=1 << 20)
    assert sent[2:] == [s3_module.PART, s3_module.PART, 12_345]
    assert stored_names(store) == [sha]
    assert b"".join(store.read(sha, len(big) - 100)) == big[-100:]


def test_the_s3_store_presigns_urls_that_honour_range(s3_server: S3Server) -> None:
    plain = S3ArtifactStore(s3_server.bucket, "signed/", endpoint_url=s3_server.endpoint_url)
    assert plain.download_url(SHA) is None  # the controller streams the bytes itself
    store = S3ArtifactStore(
        s3_server.bucket, "signed/", endpoint_url=s3_server.endpoint_url, redirect_s=60
    )
    write(store, DATA, SHA)
    url = store.download_url(SHA)
    assert (
        url is not None and "Signature=" in url and CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in url
    )
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == DATA
    part = httpx.get(url, headers={"Range": "bytes=250000-"})
    assert part.status_code == 206 and part.content == DATA[250_000:]
    assert part.headers["content-range"] == f"bytes 250000-{len(DATA) - 1}/{len(DATA)}"
    # (moto does not check signatures, so a forged URL is not refused here as it is by S3)


def test_an_s3_server_that_does_not_answer_is_unavailable_not_missing() -> None:
    store = S3ArtifactStore("b", "p/", endpoint_url=f"http://127.0.0.1:{free_port()}", client=None)
    with pytest.raises(ArtifactStoreUnavailable, match="GetObject on s3://b/p/"):
        store.read(SHA)
    with pytest.raises(ArtifactStoreUnavailable):
        store.size(SHA)


def test_the_settings_choose_the_store(tmp_path: Path, s3_server: S3Server) -> None:
    local = open_store(FleetSettings(artifact_dir=tmp_path / "a"))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "a"
    remote = open_store(
        FleetSettings(
            artifact_store="s3",
            s3_bucket=s3_server.bucket,
            s3_prefix="from-settings/",
            s3_endpoint_url=s3_server.endpoint_url,
            artifact_redirect_s=30,
        )
    )
    assert isinstance(remote, S3ArtifactStore)
    assert (
        remote.describe() == f"s3://{s3_server.bucket}/from-settings/ at {s3_server.endpoint_url}"
    )
    with pytest.raises(ValueError, match="needs s3_bucket"):
        FleetSettings(artifact_store="s3")
