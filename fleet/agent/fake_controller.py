"""A small working fake of the fleet controller's device API, as an ``httpx.MockTransport`` handler.

Why it ships next to the client (STYLE rule 9, httpx's ``MockTransport``): the agent is tested against
the protocol without a server, a database or a port, and the fake is passed in through
``ControllerClient(transport=fake.transport())``, never monkeypatched. It keeps its state in memory and
speaks ``fleet.shared.protocol`` for real: one-time enrolment tokens, credentials checked per device, a
desired state with a revision, artifacts served with HTTP ranges, idempotent telemetry per
(buffer, seq). It records every request as a tuple in :attr:`FakeController.log` so a test asserts
the exact sequence of calls (STYLE rule 12).

Faults a test can switch on: :attr:`offline` (every request is a connection error), :attr:`untrusted`
(every TLS handshake fails certificate verification, as with a certificate from another CA), a truncated first
download of an artifact (:meth:`truncate_next_download`), status codes to answer next
(:attr:`fail_next`), and revoking a device's credential (:meth:`revoke`).

It is a fake for unit tests, not a controller: integration tests use ``fleet.controller``.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from fleet.shared.protocol import (
    API_PREFIX,
    Artifact,
    DesiredState,
    EnrolRequest,
    EnrolResponse,
    FieldSample,
    FieldSampleAck,
    FieldSampleBatch,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReport,
)

_DESIRED = re.compile(rf"^{API_PREFIX}/devices/([^/]+)/desired$")
_TELEMETRY = re.compile(rf"^{API_PREFIX}/devices/([^/]+)/telemetry$")
_FIELD_SAMPLES = re.compile(rf"^{API_PREFIX}/devices/([^/]+)/field-samples$")
_ARTIFACTS = f"{API_PREFIX}/artifacts/"
_RANGE = re.compile(r"^bytes=(\d+)-$")


class _BrokenStream(httpx.SyncByteStream):
    """A body that stops after ``data`` with a connection reset, as a dropped link does."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data
        raise httpx.ReadError("connection reset by peer (fake)")


@dataclass
class _Device:
    credential: str
    hardware_class: str
    desired: DesiredState


@dataclass
class FakeController:
    """In-memory controller state; call :meth:`transport` for the ``httpx.MockTransport``."""

    public_key_pem: str
    tokens: dict[str, int] = field(default_factory=dict)
    devices: dict[str, _Device] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    telemetry: dict[tuple[str, str, int], TelemetryReport] = field(default_factory=dict)
    field_samples: list[tuple[str, FieldSample, int]] = field(default_factory=list)
    """(device, sample, the batch's ``dropped_total``) in the order received."""
    log: list[tuple[object, ...]] = field(default_factory=list)
    offline: bool = False
    untrusted: bool = False
    fail_next: list[int] = field(default_factory=list)
    refuse_seqs: set[int] = field(default_factory=set)
    """Telemetry sequence numbers answered 422 with their whole batch, as a controller refuses a
    report its database cannot hold."""
    out_of_scope_versions: set[str] = field(default_factory=set)
    """Reports of these versions are acknowledged as ``refused`` (not stored), as the controller
    answers reports of a version the device was not told to run."""
    max_body_bytes: int | None = None
    """Telemetry bodies longer than this are answered 413, as a controller's body limit does."""
    store_unavailable: bool = False
    """Artifact downloads are answered 503, as a controller whose artifact store is unreachable
    answers them; every other call works."""
    _truncate: dict[str, int] = field(default_factory=dict)

    # --- what a test sets up ---------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def issue_token(self, uses: int = 1) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = uses
        return token

    def publish(
        self,
        model: str,
        version: str,
        variant: str,
        data: bytes,
        *,
        sha256: str,
        signature: str,
        release: int = 1,
    ) -> Artifact:
        """Make ``data`` downloadable and return the artifact a desired state names."""
        url = f"{_ARTIFACTS}{model}/{version}/{variant}"
        self.artifacts[url] = data
        return Artifact(
            model=model,
            version=version,
            variant=variant,
            sha256=sha256,
            signature=signature,
            release=release,
            size_bytes=len(data),
            url=url,
        )

    def target(
        self,
        device_id: str,
        artifact: Artifact | None,
        rollout_id: str | None = None,
        *,
        rollback: bool = False,
    ) -> int:
        """Point ``device_id`` at ``artifact`` (``rollback``: as the controller's rollback path
        does); returns the new revision."""
        device = self.devices[device_id]
        device.desired = DesiredState(
            device_id=device_id,
            revision=device.desired.revision + 1,
            artifact=artifact,
            rollout_id=rollout_id,
            rollback=rollback,
        )
        return device.desired.revision

    def truncate_next_download(self, artifact: Artifact, after_bytes: int) -> None:
        """The next full download of ``artifact`` breaks off after ``after_bytes`` bytes."""
        self._truncate[artifact.url] = after_bytes

    def revoke(self, device_id: str) -> None:
        self.devices[device_id].credential = secrets.token_urlsafe(24)

    def reports(self, device_id: str) -> list[TelemetryReport]:
        return [r for (d, _, _), r in sorted(self.telemetry.items()) if d == device_id]

    # --- the handler -----------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.offline:
            self.log.append(("offline", request.method, request.url.path))
            raise httpx.ConnectError("connection refused (fake offline)", request=request)
        if self.untrusted:
            self.log.append(("untrusted", request.method, request.url.path))
            failed = ssl.SSLCertVerificationError(1, "certificate verify failed (fake)")
            failed.verify_message = "unable to get local issuer certificate"
            try:
                raise failed
            except ssl.SSLCertVerificationError as exc:  # chained as httpcore chains it
                raise httpx.ConnectError(str(exc), request=request) from exc
        if self.fail_next:
            code = self.fail_next.pop(0)
            self.log.append(("fail", request.method, request.url.path, code))
            return httpx.Response(code, json={"detail": "injected"})
        path = request.url.path
        if request.method == "POST" and path == f"{API_PREFIX}/enrol":
            return self._enrol(request)
        if request.method == "GET" and (match := _DESIRED.match(path)):
            return self._desired(request, match.group(1))
        if request.method == "POST" and (match := _TELEMETRY.match(path)):
            return self._telemetry(request, match.group(1))
        if request.method == "POST" and (match := _FIELD_SAMPLES.match(path)):
            return self._field_samples(request, match.group(1))
        if request.method == "GET" and path.startswith(_ARTIFACTS):
            if self.store_unavailable:
                self.log.append(("unavailable", path))
                return httpx.Response(503, json={"detail": "the artifact store is unreachable"})
            return self._artifact(request, path)
        return httpx.Response(404, json={"detail": f"no route {request.method} {path}"})

    def _authenticated(self, request: httpx.Request, device_id: str) -> httpx.Response | None:
        header = request.headers.get("Authorization", "")
        credential = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        device = self.devices.get(device_id)
        if device is None or not credential:
            return httpx.Response(401, json={"detail": "unknown credential"})
        if not secrets.compare_digest(device.credential, credential):
            others = [d for d, dev in self.devices.items() if dev.credential == credential]
            return httpx.Response(403 if others else 401, json={"detail": "not this device"})
        return None

    def _device_of(self, request: httpx.Request) -> str | None:
        header = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return next((d for d, dev in self.devices.items() if dev.credential == header), None)

    def _enrol(self, request: httpx.Request) -> httpx.Response:
        try:
            body = EnrolRequest.model_validate_json(request.content)
        except ValidationError as exc:
            return httpx.Response(422, json={"detail": exc.errors(include_url=False)})
        self.log.append(("enrol", body.device_id))
        if self.tokens.get(body.token, 0) < 1:
            return httpx.Response(401, json={"detail": "enrolment token unknown or used"})
        self.tokens[body.token] -= 1
        credential = secrets.token_urlsafe(32)
        self.devices[body.device_id] = _Device(
            credential=credential,
            hardware_class=body.hardware_class,
            desired=DesiredState(device_id=body.device_id, revision=0),
        )
        response = EnrolResponse(
            device_id=body.device_id, credential=credential, public_key_pem=self.public_key_pem
        )
        return httpx.Response(200, content=response.model_dump_json())

    def _desired(self, request: httpx.Request, device_id: str) -> httpx.Response:
        raw = request.url.params.get("revision")
        self.log.append(("desired", device_id, None if raw is None else int(raw)))
        refused = self._authenticated(request, device_id)
        if refused is not None:
            return refused
        # A real controller would hold the request until the revision changes or ``wait`` passes;
        # the fake answers at once either way, which is what a long-poll looks like on timeout.
        return httpx.Response(200, content=self.devices[device_id].desired.model_dump_json())

    def _telemetry(self, request: httpx.Request, device_id: str) -> httpx.Response:
        refused = self._authenticated(request, device_id)
        if refused is not None:
            self.log.append(("telemetry", device_id, ()))
            return refused
        if self.max_body_bytes is not None and len(request.content) > self.max_body_bytes:
            self.log.append(("too-large", device_id, len(request.content)))
            return httpx.Response(413, json={"detail": "request body too large"})
        try:
            batch = TelemetryBatch.model_validate_json(request.content)
        except ValidationError as exc:
            self.log.append(("telemetry", device_id, ()))
            return httpx.Response(422, json={"detail": json.loads(exc.json(include_url=False))})
        seqs = tuple(r.seq for r in batch.reports)
        self.log.append(("telemetry", device_id, seqs))
        if self.refuse_seqs & set(seqs):
            bad = sorted(self.refuse_seqs & set(seqs))
            return httpx.Response(422, json={"detail": [{"msg": f"report {bad} refused"}]})
        accepted, duplicates, out_of_scope = [], [], []
        for report in batch.reports:
            key = (device_id, report.buffer_id, report.seq)
            if report.version in self.out_of_scope_versions:
                out_of_scope.append(report.seq)
            elif key in self.telemetry:
                duplicates.append(report.seq)
            else:
                self.telemetry[key] = report
                accepted.append(report.seq)
        ack = TelemetryAck(accepted=accepted, duplicates=duplicates, refused=out_of_scope)
        return httpx.Response(200, content=ack.model_dump_json())

    def _field_samples(self, request: httpx.Request, device_id: str) -> httpx.Response:
        refused = self._authenticated(request, device_id)
        if refused is not None:
            return refused
        try:
            batch = FieldSampleBatch.model_validate_json(request.content)
        except ValidationError as exc:
            return httpx.Response(422, json={"detail": json.loads(exc.json(include_url=False))})
        self.log.append(("field-samples", device_id, len(batch.samples)))
        self.field_samples += [(device_id, s, batch.dropped_total) for s in batch.samples]
        ack = FieldSampleAck(stored=len(batch.samples), dropped_oldest=0)
        return httpx.Response(200, content=ack.model_dump_json())

    def _artifact(self, request: httpx.Request, path: str) -> httpx.Response:
        range_header = request.headers.get("Range")
        version = path.removeprefix(_ARTIFACTS).split("/")[1] if path.count("/") > 4 else path
        self.log.append(("download", version, range_header))
        device_id = self._device_of(request)
        if device_id is None:
            return httpx.Response(401, json={"detail": "unknown credential"})
        data = self.artifacts.get(path)
        if data is None:
            return httpx.Response(404, json={"detail": "no such artifact"})
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{len(data)}-{hash(data) & 0xFFFF:x}"'}
        match = _RANGE.match(range_header or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return httpx.Response(206, headers=headers, content=data[start:])
        cut = self._truncate.pop(path, None)
        if cut is not None:
            headers["Content-Length"] = str(len(data))
            return httpx.Response(200, headers=headers, stream=_BrokenStream(data[:cut]))
        return httpx.Response(200, headers=headers, content=data)
