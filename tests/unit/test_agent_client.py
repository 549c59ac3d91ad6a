"""fleet.agent.client and fleet.agent.download against the fake controller (httpx.MockTransport).

The fake is passed in through the constructor (STYLE rule 9); each test asserts the exact requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleet.agent.client import ControllerClient, pinned_context
from fleet.agent.errors import (
    AgentConfigError,
    BadResponse,
    ControllerUnreachable,
    DownloadFailed,
    Forbidden,
    InsecureTransport,
    Unauthorized,
    UntrustedController,
)
from fleet.agent.fake_controller import FakeController
from fleet.shared.latency import LatencyHistogram
from fleet.shared.protocol import Artifact, TelemetryBatch, TelemetryReport

URL = "http://127.0.0.1:8700"
DATA = bytes(range(256)) * 40  # 10 240 bytes


def new_client(fake: FakeController, **kwargs: object) -> tuple[ControllerClient, list[float]]:
    slept: list[float] = []
    client = ControllerClient(
        URL,
        transport=fake.transport(),
        sleep=slept.append,
        backoff_s=0.1,
        **kwargs,  # type: ignore[arg-type]
    )
    return client, slept


def enrolled(fake: FakeController, client: ControllerClient, device: str = "dev-1") -> str:
    return client.enrol(fake.issue_token(), device, "host-cpu", {"site": "lab"}).credential


def artifact(fake: FakeController, version: str = "v2", data: bytes = DATA) -> Artifact:
    return fake.publish(
        "digits", version, "int8", data, sha256=hashlib.sha256(data).hexdigest(), signature="c2ln"
    )


def report(seq: int) -> TelemetryReport:
    return TelemetryReport(
        seq=seq,
        buffer_id="b1",
        version="v1",
        window_start=0,
        window_end=1,
        inferences=1,
        errors=0,
        latency_ms=LatencyHistogram(bounds_ms=(1.0,), counts=(1, 0)),
    )


def test_enrol_then_desired_and_telemetry() -> None:
    fake = FakeController(public_key_pem="PEM")
    client, _ = new_client(fake)
    credential = enrolled(fake, client)
    state = client.desired("dev-1", credential, None, wait_s=1)
    again = client.desired("dev-1", credential, state.revision, wait_s=1)
    ack = client.send_telemetry("dev-1", credential, TelemetryBatch(reports=[report(1)]))
    dup = client.send_telemetry("dev-1", credential, TelemetryBatch(reports=[report(1), report(2)]))
    assert (state.revision, again.revision, state.artifact) == (0, 0, None)
    assert (ack.accepted, ack.duplicates) == ([1], [])
    assert (dup.accepted, dup.duplicates) == ([2], [1])
    assert fake.log == [
        ("enrol", "dev-1"),
        ("desired", "dev-1", None),
        ("desired", "dev-1", 0),
        ("telemetry", "dev-1", (1,)),
        ("telemetry", "dev-1", (1, 2)),
    ]


def test_credentials_are_checked() -> None:
    fake = FakeController(public_key_pem="PEM")
    client, _ = new_client(fake)
    token = fake.issue_token()
    mine = client.enrol(token, "dev-1", "host-cpu").credential
    with pytest.raises(Unauthorized):  # a used token
        client.enrol(token, "dev-2", "host-cpu")
    other = enrolled(fake, client, "dev-2")
    with pytest.raises(Forbidden):  # another device's credential
        client.desired("dev-1", other, None, wait_s=1)
    with pytest.raises(Unauthorized) as raised:
        client.desired("dev-1", "x" * 20, None, wait_s=1)
    assert raised.value.status_code == 401
    assert client.desired("dev-1", mine, None, wait_s=1).device_id == "dev-1"


def test_transport_errors_and_bad_answers_are_typed() -> None:
    fake = FakeController(public_key_pem="PEM")
    client, _ = new_client(fake)
    credential = enrolled(fake, client)
    fake.offline = True
    with pytest.raises(ControllerUnreachable) as offline:
        client.desired("dev-1", credential, None, wait_s=1)
    assert isinstance(offline.value.__cause__, httpx.ConnectError)
    fake.offline = False
    fake.fail_next = [503, 422]
    with pytest.raises(ControllerUnreachable) as unavailable:
        client.desired("dev-1", credential, None, wait_s=1)
    assert unavailable.value.status_code == 503
    with pytest.raises(BadResponse):
        client.desired("dev-1", credential, None, wait_s=1)


def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(InsecureTransport):
        ControllerClient("http://controller.example:8700")
    ControllerClient("http://controller.example:8700", allow_insecure=True).close()
    ControllerClient("http://localhost:8700").close()
    ControllerClient("https://controller.example").close()


def a_ca_pem(path: Path, name: str = "edgeloop unit CA") -> Path:
    """A self-signed CA certificate in PEM at ``path``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_pinned_ca_is_the_only_ca_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ca_file`` replaces the trust store: the context holds that one CA and no other, whatever
    the environment points OpenSSL at, and still checks the certificate and the host name."""
    import ssl

    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    monkeypatch.setenv("SSL_CERT_DIR", str(Path(certifi.where()).parent))
    context = pinned_context(a_ca_pem(tmp_path / "ca.pem"))
    assert context.cert_store_stats()["x509_ca"] == 1
    (only,) = context.get_ca_certs()
    assert only["subject"] == ((("commonName", "edgeloop unit CA"),),)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # the stores it replaces hold many: this is what "not the system store" rules out
    assert ssl.create_default_context(cafile=certifi.where()).cert_store_stats()["x509_ca"] > 1
    with pytest.raises(AgentConfigError, match="does not exist") as missing:
        ControllerClient("https://controller.example", verify=tmp_path / "nope.pem")
    assert missing.value.setting == "ca_file"
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(AgentConfigError, match="no usable PEM certificate"):
        ControllerClient("https://controller.example", verify=tmp_path / "junk.pem")


def test_a_certificate_that_fails_verification_is_untrusted_not_offline(tmp_path: Path) -> None:
    """Not retried as "offline": nothing was sent, and waiting will not make the certificate
    verify; the message names the pinned CA and the setting to fix."""
    fake = FakeController(public_key_pem="PEM")
    ca = a_ca_pem(tmp_path / "ca.pem")
    client = ControllerClient(
        "https://127.0.0.1:8700", transport=fake.transport(), verify=ca, backoff_s=0.01
    )
    fake.untrusted = True
    with pytest.raises(UntrustedController) as refused:
        client.enrol(fake.issue_token(), "dev-1", "host-cpu")
    assert not isinstance(refused.value, ControllerUnreachable)
    message = refused.value.message
    assert f"does not verify against the pinned CA {ca}" in message
    assert "unable to get local issuer certificate" in message
    assert "EDGELOOP_AGENT_CA_FILE" in message and "nothing was sent" in message
    assert fake.devices == {}


def test_long_poll_read_timeout_covers_the_wait() -> None:
    seen: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"device_id": "d", "revision": 3})

    client = ControllerClient(URL, transport=httpx.MockTransport(handler), timeout=5)
    client.desired("d", "c", 2, wait_s=30)
    assert seen == [{"connect": 5, "read": 40.0, "write": 5, "pool": 5}]


def test_download_resumes_with_range_after_a_dropped_link(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    client, slept = new_client(fake)
    credential = enrolled(fake, client)
    art = artifact(fake)
    fake.truncate_next_download(art, 4000)
    fake.log.clear()

    dest = client.download(art, tmp_path / "v2.part", credential)

    assert dest.read_bytes() == DATA
    assert fake.log == [("download", "v2", None), ("download", "v2", "bytes=4000-")]
    assert slept == [0.1]


def test_download_resumes_a_partial_file_from_an_earlier_run(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    client, _ = new_client(fake)
    credential = enrolled(fake, client)
    art = artifact(fake)
    dest = tmp_path / "v2.part"
    dest.write_bytes(DATA[:1000])
    fake.log.clear()
    client.download(art, dest, credential)
    assert dest.read_bytes() == DATA
    assert fake.log == [("download", "v2", "bytes=1000-")]


def test_download_starts_over_when_the_partial_file_is_too_long(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    client, _ = new_client(fake)
    credential = enrolled(fake, client)
    art = artifact(fake)
    dest = tmp_path / "v2.part"
    dest.write_bytes(DATA + b"junk")
    fake.log.clear()
    client.download(art, dest, credential)
    assert dest.read_bytes() == DATA
    assert fake.log == [("download", "v2", None)]


def test_download_gives_up_after_bounded_retries_and_keeps_the_partial(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    client, slept = new_client(fake, download_retries=2)
    credential = enrolled(fake, client)
    art = artifact(fake)
    fake.truncate_next_download(art, 3000)
    fake.log.clear()
    dest = tmp_path / "v2.part"
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        fake.offline = calls >= 2  # the link dies after the first attempt
        return fake.handle(request)

    client = ControllerClient(
        URL, transport=httpx.MockTransport(flaky), sleep=slept.append, download_retries=2
    )
    with pytest.raises(DownloadFailed) as failed:
        client.download(art, dest, credential)
    assert (failed.value.received, failed.value.expected) == (3000, len(DATA))
    assert dest.stat().st_size == 3000  # kept for the next call to resume
    assert len(slept) == 2
    calls = -10
    client.download(art, dest, credential)
    assert dest.read_bytes() == DATA
    assert [e[2] if e[0] == "download" else e[0] for e in fake.log] == [
        None,
        "offline",
        "offline",
        "bytes=3000-",
    ]


def test_download_of_a_missing_artifact_fails_at_once(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    client, slept = new_client(fake)
    credential = enrolled(fake, client)
    art = artifact(fake).model_copy(update={"url": "/v1/artifacts/digits/v9/int8"})
    with pytest.raises(DownloadFailed) as failed:
        client.download(art, tmp_path / "x", credential)
    assert failed.value.status_code == 404 and slept == []
    with pytest.raises(Unauthorized):
        client.download(artifact(fake), tmp_path / "y", "wrong" * 5)


# --- a download redirected to an object store ----------------------------------------------------

OBJECTS = "https://objects.example"


def object_store_behind(
    fake: FakeController, seen: list[tuple[str, str | None, str | None]], *, location: str = OBJECTS
) -> httpx.MockTransport:
    """The fake controller, whose artifact downloads answer 307 to a presigned-looking URL under
    ``location``, and that object store, which serves ranges and records (path, Authorization,
    Range) of every request it gets; the first request it gets breaks off after 3000 bytes."""
    broken = [True]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == httpx.URL(location).host:
            seen.append(
                (
                    request.url.path,
                    request.headers.get("authorization"),
                    request.headers.get("range"),
                )
            )
            data = fake.artifacts[request.url.path]
            start = int((request.headers.get("range") or "bytes=0-")[6:-1])
            if broken.pop() if broken else False:
                return httpx.Response(
                    200, headers={"Content-Length": str(len(data))}, stream=BrokenBody(data[:3000])
                )
            if start:
                return httpx.Response(
                    206,
                    headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                    content=data[start:],
                )
            return httpx.Response(200, content=data)
        answer = fake.handle(request)
        if request.url.path.startswith("/v1/artifacts/") and answer.status_code < 300:
            signed = f"{location}{request.url.path}?X-Amz-Signature=abc"
            return httpx.Response(307, headers={"Location": signed})
        return answer

    return httpx.MockTransport(handle)


class BrokenBody(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        raise httpx.ReadError("connection reset by peer (test)")


def test_a_download_follows_the_redirect_to_an_object_store_and_resumes_there(
    tmp_path: Path,
) -> None:
    """The controller answers with a presigned URL: the agent follows that one hop without its
    credential, and after a dropped link asks the controller again and resumes with Range."""
    fake = FakeController(public_key_pem="PEM")
    seen: list[tuple[str, str | None, str | None]] = []
    client = ControllerClient(URL, transport=object_store_behind(fake, seen), sleep=lambda _: None)
    credential = enrolled(fake, client)
    art = artifact(fake)
    fake.log.clear()
    dest = client.download(art, tmp_path / "v2.part", credential)
    assert dest.read_bytes() == DATA
    assert seen == [(art.url, None, None), (art.url, None, "bytes=3000-")]  # never the credential
    assert fake.log == [("download", "v2", None), ("download", "v2", "bytes=3000-")]


def test_a_redirect_to_plain_http_off_loopback_is_refused(tmp_path: Path) -> None:
    fake = FakeController(public_key_pem="PEM")
    seen: list[tuple[str, str | None, str | None]] = []
    transport = object_store_behind(fake, seen, location="http://objects.example")
    client = ControllerClient(URL, transport=transport, sleep=lambda _: None)
    credential = enrolled(fake, client)
    with pytest.raises(InsecureTransport):
        client.download(artifact(fake), tmp_path / "v2.part", credential)
    assert seen == []


def test_other_calls_follow_no_redirect() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": f"{OBJECTS}/elsewhere"})

    client = ControllerClient(URL, transport=httpx.MockTransport(handle))
    with pytest.raises(BadResponse):
        client.desired("dev-1", "c" * 20, None, 0)
