"""The edge agent's loop: enrol, long-poll the desired state, converge the slots, send telemetry.

Why this boundary exists: the libraries below it raise (``ControllerClient``, ``ModelStore``) or
return outcomes (``SlotManager.install``); this loop is the one place that decides what each means for
a device in the field, and it never dies of one (STYLE rule 5). Every error becomes :class:`AgentStatus`
(a phase and a message) and a back-off. The device's first duty is to keep serving the model it has:

- offline (transport errors, 5xx): keep serving, keep buffering telemetry on disk (bounded; drops are
  counted by the buffer and carried by every later report), back off, send on reconnect;
- a prediction whose ground truth comes back (``POST /label``: a class label, or a regressor's target
  values) is counted in the telemetry of the version that made it (the accuracy or MAE gate); a
  classifier's also becomes a field sample (the row, the prediction, the label, the version): kept in a second bounded outbox on disk and sent with the
  telemetry (``POST /v1/devices/{id}/field-samples``, the outbox's drop count in each batch), so the
  training side can pull labelled field data;
- a rejected artifact (sha256, signature, load, smoke) is never served; the device stays on its model,
  records the rejection and does not fetch the same bytes again for ``reject_retry_s``;
- a 401 is not answered by enrolling again: the enrolment token is one-time, and a revoked device
  must not let itself back in. The status says what a person must do.

Convergence prefers what is on disk: a desired version that is in the previous slot or in the store
(with the announced sha256) is activated without a download, so a rollback reaches the stable version
in one long-poll round trip. Anything else is downloaded (resumably) and installed through the slots'
verify, load, smoke, swap sequence.

Every step is reported to an event sink as a tuple (STYLE rule 12): ``("enrol", device)``,
``("desired", revision)``, ``("activate", version)``, ``("download", version)``,
``("install", version, outcome)``, ``("reject", version, reason)``, ``("send", n_reports)``, ...

``main`` wires it from ``EDGELOOP_AGENT_*`` settings; ``python -m fleet.agent.agent`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fleet.agent.client import ControllerClient
from fleet.agent.config import ENV_PREFIX, AgentConfig, settings_help
from fleet.agent.errors import (
    AgentConfigError,
    AgentError,
    ArtifactRejected,
    BadResponse,
    ControllerCallFailed,
    ControllerUnreachable,
    DownloadFailed,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    NoModelServing,
    NotStored,
    StoreError,
    TelemetryError,
    Unauthorized,
    UntrustedController,
)
from fleet.agent.slots import Candidate, SlotManager
from fleet.agent.store import ArtifactRef, ModelStore
from fleet.agent.telemetry import RESERVED_KEYS, FeedbackPair, TelemetryBuffer
from fleet.shared.backoff import backoff_delay
from fleet.shared.body_limit import too_large_detail
from fleet.shared.drift import DeviceDetector, DriftReference, local_action
from fleet.shared.latency import LatencyHistogram, p95_ms
from fleet.shared.modelspec import ModelSpec
from fleet.shared.protocol import (
    MAX_FIELD_SAMPLES_PER_BATCH,
    MAX_REFUSALS,
    Artifact,
    DesiredState,
    EnrolResponse,
    FieldSample,
    FieldSampleBatch,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReport,
    values_prefix,
)

log = logging.getLogger(__name__)

EventSink = Callable[[tuple[str, ...]], None]


def log_event(event: tuple[str, ...]) -> None:
    log.info("agent: %s", " ".join(event))


# --- the credential on disk ----------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What enrolment gave this device; stored 0600 in the state directory, read on every start."""

    device_id: str
    credential: str
    public_key_pem: str

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"the credential file {path} cannot be read: {exc}") from exc
        try:
            return cls(str(raw["device_id"]), str(raw["credential"]), str(raw["public_key_pem"]))
        except (KeyError, TypeError) as exc:
            raise StoreError(f"the credential file {path} is incomplete: {exc!r}") from exc

    def save(self, path: Path) -> None:
        """Write atomically, readable by this user only (0600) from the first byte on."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        body = json.dumps(
            {
                "device_id": self.device_id,
                "credential": self.credential,
                "public_key_pem": self.public_key_pem,
            }
        ).encode()
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)  # whatever the umask said
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot store the credential in {path}: {exc}") from exc


# --- status --------------------------------------------------------------------------------------


class AgentPhase(StrEnum):
    """Where the agent stands with its controller after the last iteration."""

    STARTING = "starting"
    """No iteration has run yet."""
    ONLINE = "online"
    """The last exchange with the controller succeeded."""
    OFFLINE = "offline"
    """The controller could not be reached; serving and buffering go on, retried after a back-off."""
    UNAUTHORIZED = "unauthorized"
    """The token or credential was refused; a person must act (the agent does not re-enrol itself)."""
    UNTRUSTED = "untrusted"
    """The controller's TLS certificate does not verify against the pinned CA; a person must act."""
    FAILING = "failing"
    """Something else went wrong (a bad answer, a disk error); retried after a back-off."""

    def needs_person(self) -> bool:
        """Whether waiting will not fix it."""
        return self in (AgentPhase.UNAUTHORIZED, AgentPhase.UNTRUSTED)


@dataclass
class AgentStatus:
    """What the last iteration found; ``message`` says what is wrong, if anything."""

    phase: AgentPhase = AgentPhase.STARTING
    message: str = ""
    revision: int | None = None
    active: ArtifactRef | None = None
    last_rejection: str | None = None
    failures: int = 0
    sent: int = 0
    invalid_reports: int = 0
    out_of_scope_reports: int = 0
    """Reports the controller did not take: of a version this device was not told to run."""
    field_samples_sent: int = 0
    invalid_field_samples: int = 0
    history: list[str] = field(default_factory=list)


# --- the loop ------------------------------------------------------------------------------------


class Agent:
    """One device's agent; see the module docstring. Not thread-safe: one loop drives it.

    ``clock`` (seconds, monotonic) times the cool-down of rejected artifacts; ``sleep`` waits out
    back-offs in :meth:`run_forever`. Both are injected so tests run instantly.
    """

    def __init__(
        self,
        config: AgentConfig,
        client: ControllerClient,
        slots: SlotManager,
        buffer: TelemetryBuffer,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        *,
        events: EventSink = log_event,
        rng: random.Random | None = None,
        detector: DeviceDetector | None = None,
        field_buffer: TelemetryBuffer | None = None,
    ) -> None:
        self.config = config
        self.field_buffer = field_buffer
        self.detector = detector
        self.client = client
        self.slots = slots
        self.buffer = buffer
        self._clock = clock
        self._sleep = sleep
        self._events = events
        self._rng = rng or random.Random()
        self.status = AgentStatus()
        self.credentials = Credentials.load(config.credential_path)
        self._refused_token: str | None = None
        self._rejected: dict[tuple[ArtifactRef, str], float] = {}
        self._fell_back: dict[ArtifactRef, float] = {}  # left by a local fallback, and when
        self._refusals: deque[dict[str, str]] = deque(maxlen=MAX_REFUSALS)  # for the next report

    # --- one iteration ---------------------------------------------------------------------------

    def run_once(self) -> float:
        """Enrol if needed, long-poll, converge, flush and send telemetry; returns the seconds to
        wait before the next iteration (0 after a successful long-poll, a back-off after a failure).
        Never raises for a controller, model or disk problem: those become :attr:`status`."""
        online = False
        download_failed: DownloadFailed | None = None
        try:
            credentials = self._enrolled()
            if credentials is not None:
                desired = self.client.desired(
                    credentials.device_id,
                    credentials.credential,
                    self.status.revision,
                    min(self.config.long_poll_s, self.config.report_interval_s),
                )
                self._emit("desired", str(desired.revision))
                self.status.revision = desired.revision
                try:
                    self._converge(desired, credentials)
                except DownloadFailed as exc:  # the controller answered: still send the reports
                    download_failed = exc
                online = True
        except ControllerCallFailed as exc:
            self._failed(exc)
        except AgentError as exc:  # a disk or store problem: keep serving, say it
            self._set(AgentPhase.FAILING, exc.message)
        self._buffer_windows()
        if online and self.credentials is not None:
            try:
                self._send_pending(self.credentials)
                self._send_field_samples(self.credentials)
            except ControllerCallFailed as exc:
                online = False
                self._failed(exc)
        self.status.active = self.slots.active
        if online and download_failed is not None:
            self._failed(download_failed)  # the old model serves; the download waits a back-off
            return self._backoff()
        if online:
            self.status.failures = 0
            if self.status.phase is not AgentPhase.ONLINE:
                self._set(AgentPhase.ONLINE, "")
            return 0.0
        return self._backoff()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Iterate until ``stop_event`` is set; back-offs wait on ``self.sleep``."""
        while not stop_event.is_set():
            delay = self.run_once()
            if delay > 0 and not stop_event.is_set():
                self._sleep(delay)

    # --- the steps -------------------------------------------------------------------------------

    def _enrolled(self) -> Credentials | None:
        if self.credentials is not None:
            return self.credentials
        token = self.config.enrolment_token
        if token is None:
            self._set(
                AgentPhase.UNAUTHORIZED,
                f"not enrolled and no enrolment token: set {ENV_PREFIX}ENROLMENT_TOKEN",
            )
            return None
        secret = token.get_secret_value()
        if secret == self._refused_token:
            return None  # refused once: never sent again; the status already says so
        try:
            response: EnrolResponse = self.client.enrol(
                secret, self.config.device_id, self.config.hardware_class, self.config.labels
            )
        except Unauthorized as exc:
            self._refused_token = secret
            raise Unauthorized(
                "the enrolment token was refused (used up, expired or wrong); it will not be "
                f"sent again: give this device a fresh {ENV_PREFIX}ENROLMENT_TOKEN and restart it",
                status_code=exc.status_code,
            ) from exc
        credentials = Credentials(response.device_id, response.credential, response.public_key_pem)
        credentials.save(self.config.credential_path)
        self.credentials = credentials
        self._emit("enrol", response.device_id)
        return credentials

    def _converge(self, desired: DesiredState, credentials: Credentials) -> None:
        self.slots.plan_shadow(desired.shadow)
        artifact = desired.artifact
        if artifact is None:
            return
        ref = ArtifactRef(artifact.model, artifact.version, artifact.variant)
        if self.slots.active == ref:
            return
        if not desired.rollback:  # refused before any download, and not kept as a bad download
            older = self.slots.refuse_older(ref, artifact.release)
            if older is not None:
                self._record(older.outcome.value, ref, older.rejection, None)
                return
        key = (ref, artifact.sha256)
        rejected_at = self._rejected.get(key, self._fell_back.get(ref))
        if rejected_at is not None and self._clock() - rejected_at < self.config.reject_retry_s:
            return
        if self._on_disk(ref, artifact.sha256):
            self._emit("activate", ref.version)
            try:
                result = self.slots.activate(ref, allow_older=desired.rollback)
            except NotStored:  # pruned between the check and now: fetch it
                result = None
            if result is not None:
                self._record(result.outcome.value, ref, result.rejection, key)
                return
        dest = self._download_path(ref)
        self._emit("download", ref.version)
        self.client.download(artifact, dest, credentials.credential)
        try:
            result = self.slots.install(_candidate(artifact, dest), allow_older=desired.rollback)
        finally:
            dest.unlink(missing_ok=True)
        self._record(result.outcome.value, ref, result.rejection, key)

    def _record(
        self,
        outcome: str,
        ref: ArtifactRef,
        rejection: ArtifactRejected | None,
        key: tuple[ArtifactRef, str] | None,
    ) -> None:
        """``key``: the download a rejection keeps away for ``reject_retry_s`` (None: none)."""
        self._emit("install", ref.version, outcome)
        if rejection is not None:
            self._refusals.append(
                {
                    "version": ref.version,
                    "variant": ref.variant,
                    "reason": rejection.reason.value,
                    "detail": rejection.message[:500],
                }
            )
            if key is not None:
                self._rejected[key] = self._clock()
            self.status.last_rejection = rejection.message
            self._emit("reject", ref.version, rejection.reason.value)
            log.warning("agent: %s; still serving %s", rejection.message, self.slots.active)

    def _on_disk(self, ref: ArtifactRef, sha256: str) -> bool:
        try:
            return self.slots.store.get(ref).sha256 == sha256.lower()
        except StoreError:
            return False

    def _download_path(self, ref: ArtifactRef) -> Path:
        return self.config.downloads_dir / ref.model / ref.version / f"{ref.variant}.onnx.part"

    def _buffer_windows(self) -> None:
        try:
            for report in self.slots.flush_telemetry():
                if report.get("running") and self.detector is not None:
                    report["events"] = self._detect(self.detector, report)
                if report.get("running") and self._refusals:  # the controller hears at once
                    report["refusals"] = list(self._refusals)
                    self._refusals.clear()
                self.buffer.append(report)
        except TelemetryError as exc:
            log.error("agent: a telemetry report could not be buffered: %s", exc)

    def _detect(self, detector: DeviceDetector, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The detectors' events for the running version's report; an event whose policy says
        ``fallback`` swaps the previous model back in at once and keeps the model it left out of
        service for ``reject_retry_s`` (the controller learns why from the event's ``action``)."""
        latency = report["latency_ms"]
        detector.observe_window(
            inferences=report["inferences"],
            errors=report["errors"],
            p95_ms=p95_ms(LatencyHistogram.model_validate(latency)),
            window_s=report["window_end"] - report["window_start"],
        )
        events = detector.take_events()
        if local_action(events) == "fallback" and self.slots.previous is not None:
            left = self.slots.active
            restored = self.slots.rollback_local()
            if left is not None:  # not re-activated before the cool-down, even if still desired
                self._fell_back[left] = self._clock()
            self._emit("fallback", restored.version, ",".join(e.kind for e in events))
        return [e.to_dict() for e in events]

    def _send_pending(self, credentials: Credentials) -> None:
        """Send what the outbox holds, batch by batch; forget a report only once the controller
        acknowledged it (stored now, or before)."""
        batch_size = self.config.telemetry_batch
        for _ in range(self.buffer.stats().pending // batch_size + 2):
            pending = self.buffer.pending(batch_size)
            if not pending:
                return
            reports, invalid = [], []
            for raw in pending:
                try:
                    reports.append(TelemetryReport.model_validate(raw))
                except ValidationError as exc:
                    invalid.append(int(raw["seq"]))
                    log.error("agent: report %s breaks the protocol, dropped: %s", raw["seq"], exc)
            if invalid:  # it would block the outbox forever; counted, then forgotten
                self.status.invalid_reports += len(invalid)
                self.buffer.ack(invalid)
            if not reports:
                continue
            try:
                ack = self.client.send_telemetry(
                    credentials.device_id, credentials.credential, TelemetryBatch(reports=reports)
                )
            except BadResponse as exc:
                if exc.status_code not in (413, 422):  # too large or invalid: one at a time
                    raise
                ack = self._send_each(credentials, reports)
            acked = self.buffer.ack([*ack.accepted, *ack.duplicates, *ack.refused])
            self.status.sent += len(ack.accepted)
            if ack.refused:  # of a version it was not told to run: sending them again is no use
                self.status.out_of_scope_reports += len(ack.refused)
                log.error(
                    "agent: the controller did not take reports %s: out of scope", ack.refused
                )
            self._emit("send", str(len(reports)))
            if acked == 0:
                return  # nothing moved; do not spin

    def _send_each(self, credentials: Credentials, reports: list[TelemetryReport]) -> TelemetryAck:
        """One report a request, after the controller refused a batch as invalid (422): a report
        it refuses alone is counted and forgotten, like one that breaks the protocol here, so one
        bad report cannot hold back the outbox behind it forever."""
        accepted: list[int] = []
        duplicates: list[int] = []
        refused: list[int] = []
        for report in reports:
            try:
                ack = self.client.send_telemetry(
                    credentials.device_id, credentials.credential, TelemetryBatch(reports=[report])
                )
            except BadResponse as exc:
                if exc.status_code not in (413, 422):
                    raise
                self.status.invalid_reports += 1
                self.buffer.ack([report.seq])
                log.error(
                    "agent: the controller refused report %s, dropped: %s", report.seq, exc.detail
                )
                continue
            accepted += ack.accepted
            duplicates += ack.duplicates
            refused += ack.refused
        return TelemetryAck(accepted=accepted, duplicates=duplicates, refused=refused)

    def _send_field_samples(self, credentials: Credentials) -> None:
        """Send the field-sample outbox in batches; forget a batch once the controller stored it."""
        buffer = self.field_buffer
        if buffer is None:
            return
        for _ in range(buffer.stats().pending + 2):
            pending = buffer.pending(MAX_FIELD_SAMPLES_PER_BATCH)
            if not pending:
                return
            pending = pending[: values_prefix([len(raw.get("features", ())) for raw in pending])]
            samples, invalid = [], []
            for raw in pending:
                try:
                    samples.append(
                        FieldSample.model_validate(
                            {k: v for k, v in raw.items() if k not in RESERVED_KEYS}
                        )
                    )
                except ValidationError as exc:  # e.g. a label out of range: it would block
                    invalid.append(int(raw["seq"]))
                    log.error("agent: field sample %s dropped: %s", raw["seq"], exc)
            if invalid:
                self.status.invalid_field_samples += len(invalid)
                buffer.ack(invalid)
            if not samples:
                continue
            batch = FieldSampleBatch(samples=samples, dropped_total=buffer.dropped)
            self.client.send_field_samples(credentials.device_id, credentials.credential, batch)
            buffer.ack(int(raw["seq"]) for raw in pending)
            self.status.field_samples_sent += len(samples)
            self._emit("send-field-samples", str(len(samples)))

    # --- status and back-off ---------------------------------------------------------------------

    def _failed(self, exc: ControllerCallFailed) -> None:
        if isinstance(exc, Unauthorized | Forbidden):
            message = exc.message
            if self.credentials is not None and self.config.enrolment_token is not None:
                message += (
                    f"; the agent does not re-enrol by itself: to enrol again, remove "
                    f"{self.config.credential_path} and restart with a fresh "
                    f"{ENV_PREFIX}ENROLMENT_TOKEN"
                )
            elif self.credentials is not None:
                message += (
                    f"; to enrol again, remove {self.config.credential_path} and restart with a "
                    f"fresh {ENV_PREFIX}ENROLMENT_TOKEN"
                )
            self._set(AgentPhase.UNAUTHORIZED, message)
        elif isinstance(exc, UntrustedController):
            self._set(AgentPhase.UNTRUSTED, exc.message)
        elif isinstance(exc, ControllerUnreachable):
            self._set(AgentPhase.OFFLINE, exc.message)
        else:
            self._set(AgentPhase.FAILING, exc.message)
        self.status.failures += 1

    def _set(self, phase: AgentPhase, message: str) -> None:
        if (phase, message) != (self.status.phase, self.status.message):
            self.status.history.append(phase.value)
            if message:
                log.warning("agent %s: %s", phase.value, message)
        self.status.phase, self.status.message = phase, message

    def _backoff(self) -> float:
        config = self.config
        if self.status.phase.needs_person():
            return config.backoff_max_s
        return backoff_delay(
            max(1, self.status.failures),
            initial_s=config.backoff_initial_s,
            max_s=config.backoff_max_s,
            jitter=config.backoff_jitter,
            rng=self._rng,
        )

    def _emit(self, *event: str) -> None:
        self._events(tuple(event))


def _candidate(artifact: Artifact, path: Path) -> Candidate:
    return Candidate(
        model=artifact.model,
        version=artifact.version,
        variant=artifact.variant,
        path=path,
        sha256=artifact.sha256,
        signature=artifact.signature,
        release=artifact.release,
    )


def field_sample_sink(buffer: TelemetryBuffer) -> Callable[[ArtifactRef, FeedbackPair], None]:
    """``SlotManager``'s ``on_label``: each labelled prediction goes to the field-sample outbox (a
    row that is not finite is left out: the controller would refuse it)."""

    def keep(ref: ArtifactRef, pair: FeedbackPair) -> None:
        if not isinstance(pair.predicted, int) or not isinstance(pair.label, int):
            return  # a regressor's targets are not field samples (they carry class labels)
        if pair.inputs is None or not np.isfinite(pair.inputs).all():
            return
        sample = {
            "model": ref.model,
            "version": ref.version,
            "features": [float(v) for v in pair.inputs],
            "predicted": pair.predicted,
            "label": pair.label,
        }
        try:
            buffer.append(sample)
        except TelemetryError as exc:
            log.error("agent: a field sample could not be kept: %s", exc)

    return keep


# --- the local prediction server -----------------------------------------------------------------


class PredictServer:
    """``POST /predict`` (``{"inputs": [[...], ...]}`` flat rows, ``{"inputs": {"NAME": nested
    arrays}}`` by input name, or one ``.npy`` tensor with ``Content-Type: application/x-npy``;
    a request that does not fit the model's contract gets 400 naming the input, the expected and
    the received shape), ``POST /label`` (``{"prediction_id": ..., "label": n}`` for a
    classifier, ``{"prediction_id": ..., "target": x}`` or ``[x, ...]`` for a regressor; a value
    that does not fit the prediction is a 400 naming what was expected) and ``GET /healthz`` on a
    local port, in a thread.

    Why stdlib ``http.server``: the device's applications are on the same machine, the server must
    cost nothing to install, and every request goes straight to ``SlotManager.predict``, which reads
    the active slot once, so a swap never mixes two models in one answer. Bind to loopback.
    """

    def __init__(
        self,
        slots: SlotManager,
        host: str = "127.0.0.1",
        port: int = 0,
        detector: DeviceDetector | None = None,
    ) -> None:
        handler = _handler_for(slots, detector)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> PredictServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _handler_for(
    slots: SlotManager, detector: DeviceDetector | None = None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive: an application on the device reuses its connection instead of paying a
        # TCP handshake and a new server thread per prediction. Without TCP_NODELAY the body,
        # written after the headers, waits for the client's delayed ACK: 40 ms a request.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("predict server: " + format, *args)

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _raw(self) -> bytes | None:
            """The request body, or None after answering 411 for a chunked one or 413 for one
            above :data:`MAX_PREDICT_BODY` (nothing of it is read, and the connection closes)."""
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._reply(411, {"detail": "send the body with a Content-Length"})
                return None
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_PREDICT_BODY:
                self.close_connection = True
                hint = "send fewer rows per request"
                detail = too_large_detail(MAX_PREDICT_BODY, f"POST {self.path}", hint)
                self._reply(413, {"detail": detail})
                return None
            return self.rfile.read(length)

        def do_GET(self) -> None:
            if self.path != "/healthz":
                self._reply(404, {"detail": "not found"})
                return
            active = slots.active
            body: dict[str, str | None] = {"active": None, "model": None, "version": None}
            if active is not None:
                body = {"active": str(active), "model": active.model, "version": active.version}
            self._reply(200 if active else 503, body)

        def do_POST(self) -> None:
            if self.path not in ("/predict", "/label"):
                self._reply(404, {"detail": "not found"})
                return
            raw = self._raw()
            if raw is None:
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if self.path == "/predict" and content_type == NPY:
                self._predict(lambda: _npy_rows(raw, slots.active_spec))
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                self._reply(400, {"detail": "the body is not JSON"})
                return
            if self.path == "/predict":
                self._predict(lambda: _request_rows(body, slots.active_spec))
            else:
                self._label(body)

        def _predict(self, rows: Callable[[], np.ndarray]) -> None:
            try:
                x = rows()
            except InvalidInput as exc:
                self._reply(400, {"detail": exc.message})
                return
            try:
                prediction = slots.predict(x)
            except InvalidInput as exc:
                self._reply(400, {"detail": exc.message})
                return
            except NoModelServing as exc:
                self._reply(503, {"detail": exc.message})
                return
            except InferenceFailed as exc:
                self._reply(422, {"detail": exc.message})
                return
            if detector is not None:
                detector.observe_inputs(x)
                detector.observe_predictions(prediction.probabilities.argmax(axis=1))
            self._reply(200, _answer(prediction, slots.active_spec))

        def _label(self, body: Any) -> None:
            usage = (
                'expected {"prediction_id": "...", "label": n} for a classifier or '
                '{"prediction_id": "...", "target": x or [x, ...]} for a regressor'
            )
            if not isinstance(body, dict) or not isinstance(body.get("prediction_id"), str):
                self._reply(400, {"detail": usage})
                return
            kinds = [k for k in ("label", "target") if k in body]
            if len(kinds) != 1:
                self._reply(400, {"detail": usage})
                return
            try:
                known = slots.record_label(body["prediction_id"], body[kinds[0]])
            except ValueError as exc:
                self._reply(400, {"detail": f"{kinds[0]}: {exc}"})
                return
            self._reply(200 if known else 404, {"recorded": known})

    return Handler


NPY = "application/x-npy"
"""``POST /predict`` with this content type: the body is one tensor in NumPy's ``.npy`` format
(``numpy.save``), read without pickles, for a model with one input."""

MAX_PREDICT_BODY = 32 * 1024 * 1024
"""A request body above this many bytes is refused with 413 before it is read."""


def _answer(prediction: Any, spec: ModelSpec | None) -> dict[str, Any]:
    """The ``/predict`` answer by task: classes and probabilities, or the predicted values."""
    ref = prediction.ref
    answer: dict[str, Any] = {
        "model": ref.model,
        "version": ref.version,
        "variant": ref.variant,
        "ids": list(prediction.ids),
    }
    scores = prediction.probabilities
    if spec is not None and spec.task == "regression":
        answer["values"] = scores.tolist()
        return answer
    predicted = [int(i) for i in scores.argmax(axis=1)]
    answer["predicted"] = predicted
    if spec is not None and spec.class_names is not None:
        answer["classes"] = [spec.class_names[i] for i in predicted]
    answer["probabilities"] = scores.tolist()
    return answer


def _npy_rows(raw: bytes, spec: ModelSpec | None) -> np.ndarray:
    """An ``application/x-npy`` body as flat rows of the serving model's single input."""
    import io

    if spec is None:
        raise InvalidInput("no model is serving yet, so a tensor body cannot be read")
    if len(spec.inputs) != 1:
        names = ", ".join(i.name for i in spec.inputs)
        raise InvalidInput(
            f"a tensor body carries one input and this model takes {len(spec.inputs)} ({names}): "
            'send JSON {"inputs": {"NAME": [...], ...}}'
        )
    try:
        tensor = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"the body is not a .npy tensor: {exc}") from exc
    if not isinstance(tensor, np.ndarray) or tensor.dtype.kind not in "biuf":
        raise InvalidInput("the body must hold one numeric tensor")
    try:
        return spec.flatten({spec.inputs[0].name: tensor})
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


_PREDICT_BODY = (
    'expected {"inputs": [[number, ...], ...]} (flat rows) or {"inputs": {"NAME": nested arrays '
    "of shape [N, ...]}} (the model's named inputs)"
)


def _request_rows(body: Any, spec: ModelSpec | None) -> np.ndarray:
    """A ``/predict`` body as flat rows: rows as they are, or the model's named inputs flattened
    by its contract. Raises :class:`InvalidInput` naming what does not fit."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise InvalidInput(_PREDICT_BODY)
    inputs = body["inputs"]
    try:
        if isinstance(inputs, dict):
            if spec is None:
                raise InvalidInput("no model is serving yet, so named inputs cannot be read")
            tensors = {str(k): np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
            try:
                return spec.flatten(tensors)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
        x = np.asarray(inputs, dtype=np.float32)
    except InvalidInput:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{_PREDICT_BODY}: {exc}") from exc
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise InvalidInput(f"flat rows must be [N, values], received shape {list(x.shape)}")
    return x


# --- wiring --------------------------------------------------------------------------------------


def build(config: AgentConfig, *, stop: threading.Event) -> tuple[Agent, ControllerClient]:
    """Client, store, slots and outbox from ``config``; enrols first when there is no credential
    (the fleet's public key comes with enrolment unless ``public_key_file`` pins it)."""
    client = ControllerClient(
        config.controller_url,
        verify=str(config.ca_file) if config.ca_file else True,
        timeout=config.request_timeout_s,
        allow_insecure=config.allow_insecure,
        download_retries=config.download_retries,
        backoff_s=config.backoff_initial_s,
        backoff_max_s=config.backoff_max_s,
        sleep=stop.wait,
    )
    credentials = Credentials.load(config.credential_path)
    while credentials is None and not stop.is_set():
        if config.enrolment_token is None:
            raise AgentConfigError(
                f"not enrolled and no enrolment token: set {ENV_PREFIX}ENROLMENT_TOKEN",
                setting="enrolment_token",
            )
        try:
            response = client.enrol(
                config.enrolment_token.get_secret_value(),
                config.device_id,
                config.hardware_class,
                config.labels,
            )
        except ControllerUnreachable as exc:
            log.warning("agent: cannot enrol yet: %s", exc.message)
            stop.wait(config.backoff_max_s)
            continue
        credentials = Credentials(response.device_id, response.credential, response.public_key_pem)
        credentials.save(config.credential_path)
    if credentials is None:
        raise AgentConfigError("stopped before enrolment", setting="enrolment_token")
    key = credentials.public_key_pem.encode()
    if config.public_key_file is not None:
        pinned = config.public_key_file.read_bytes()
        if pinned.strip() != key.strip():
            raise AgentConfigError(
                f"the controller's fleet key differs from the pinned {config.public_key_file}",
                setting="public_key_file",
            )
    golden = np.load(config.golden_inputs) if config.golden_inputs else None
    session_factory = _session_factory(config)
    field_buffer = TelemetryBuffer(
        config.field_buffer_path, config.field_samples_max, config.buffer_max_bytes
    )
    slots = SlotManager(
        ModelStore(config.state_dir),
        key,
        golden,
        config.expected_outputs,
        on_label=field_sample_sink(field_buffer),
        **session_factory,
    )
    slots.restore()
    buffer = TelemetryBuffer(config.buffer_path, config.buffer_max_reports, config.buffer_max_bytes)
    agent = Agent(
        config,
        client,
        slots,
        buffer,
        time.monotonic,
        stop.wait,
        detector=_detector(config),
        field_buffer=field_buffer,
    )
    return agent, client


def _detector(config: AgentConfig) -> DeviceDetector | None:
    """The on-device detectors, when the training reference (``drift-reference.json``, shipped
    next to the golden inputs) is on disk."""
    if config.golden_inputs is None:
        return None
    path = config.golden_inputs.with_name("drift-reference.json")
    if not path.is_file():
        return None
    try:
        return DeviceDetector(DriftReference.load(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentConfigError(
            f"the drift reference {path} is not valid: {exc}", setting="golden_inputs"
        ) from exc


def _session_factory(config: AgentConfig) -> dict[str, Any]:
    if config.profile is None:
        return {}
    from fleet.shared.profile import load_profile
    from fleet.shared.runtime import open_session

    profile = load_profile(config.profile, config.profiles_dir)

    def factory(path: Path) -> Any:
        return open_session(
            str(path), threads=profile.threads, providers=profile.execution_providers
        )

    return {"session_factory": factory}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM; settings from ``EDGELOOP_AGENT_*`` and the flags.

    Exit codes: 0 stopped, 2 bad settings, 3 refused by the controller or refusing it (its
    certificate does not verify against the pinned CA): a person must act.
    """
    parser = argparse.ArgumentParser(
        prog="edgeloop agent",
        description=__doc__.split("\n")[0],
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--controller-url", help="EDGELOOP_AGENT_CONTROLLER_URL")
    parser.add_argument("--state-dir", type=Path, help="EDGELOOP_AGENT_STATE_DIR")
    parser.add_argument("--device-id", help="EDGELOOP_AGENT_DEVICE_ID")
    parser.add_argument("--hardware-class", help="EDGELOOP_AGENT_HARDWARE_CLASS")
    parser.add_argument("--once", action="store_true", help="one iteration, then exit")
    parser.add_argument("--no-serve", action="store_true", help="no local /predict server")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {
        name: value
        for name, value in (
            ("controller_url", args.controller_url),
            ("state_dir", args.state_dir),
            ("device_id", args.device_id),
            ("hardware_class", args.hardware_class),
        )
        if value is not None
    }
    stop = threading.Event()
    try:
        config = AgentConfig.from_env(**overrides)
        agent, client = build(config, stop=stop)
    except AgentConfigError as exc:
        log.error("%s", exc.message)
        return 2
    except (Unauthorized, Forbidden, UntrustedController) as exc:
        log.error("%s", exc.message)
        return 3
    server = None
    if not args.no_serve and config.predict_port is not None:
        server = PredictServer(
            agent.slots, config.predict_host, config.predict_port, agent.detector
        ).start()
        log.info("agent: serving POST /predict on %s:%d", *server.address)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if args.once:
            agent.run_once()
        else:
            agent.run_forever(stop)
    finally:
        if server is not None:
            server.stop()
        agent.buffer.close()
        field_buffer = agent.field_buffer
        if field_buffer is not None:
            field_buffer.close()
        client.close()
    return 3 if agent.status.phase.needs_person() else 0


if __name__ == "__main__":
    raise SystemExit(main())
