"""The agent's only way to talk to the fleet controller: ``/v1`` over httpx, typed by ``fleet.shared.protocol``.

Why this boundary exists: everything the network can do wrong is turned into one of a few typed
errors here (:class:`ControllerUnreachable` for "offline, try later", :class:`Unauthorized` and
:class:`Forbidden` for "a person must act", :class:`BadResponse` for "the other side does not speak
the protocol"), with the httpx error kept as the cause (STYLE rule 8). The agent loop above decides
what each means for the device; it never sees an httpx exception or an unparsed body.

Transport security is decided here too, once: HTTPS verifies the controller against a pinned CA
bundle (``verify=<path>``), and against that bundle alone (the system's trust store is not loaded:
a certificate any public CA issued for the name does not pass); a certificate that fails is
:class:`UntrustedController`, never "offline". Plain HTTP is refused unless the controller is on
loopback or ``allow_insecure=True`` is said out loud, because a device credential or a model sent in
the clear can be read or replaced on the way. A test passes an ``httpx.MockTransport`` (see
:mod:`fleet.agent.fake_controller`) through the constructor (STYLE rule 9).

Downloads resume: a partial file is continued with ``Range: bytes=<size>-`` and appended on a 206;
a 200 starts it over. The final size is checked against the announced one; the sha256 and the
signature are checked by ``SlotManager`` before anything serves. Redirects are followed nowhere but
in a download, where a controller with an object store may send the device to a presigned URL: one
hop, vetted like the controller's own URL, without the credential (``fleet.agent.download``).

The routes below (paths, the ``Authorization: Bearer`` header, the long-poll query parameters) are
not in ``fleet.shared.protocol`` yet; they are named once here so that they change in one place.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from fleet.agent.config import ENV_PREFIX
from fleet.agent.download import download_resumable, file_size
from fleet.agent.errors import (
    AgentConfigError,
    BadResponse,
    ControllerCallFailed,
    ControllerUnreachable,
    DownloadFailed,
    Forbidden,
    InsecureTransport,
    Unauthorized,
    UntrustedController,
)
from fleet.shared.net import is_loopback
from fleet.shared.protocol import (
    ENROL_PATH,
    LONG_POLL_MAX_S,
    Artifact,
    DesiredState,
    EnrolRequest,
    EnrolResponse,
    FieldSampleAck,
    FieldSampleBatch,
    TelemetryAck,
    TelemetryBatch,
    desired_path,
    field_samples_path,
    telemetry_path,
)

log = logging.getLogger(__name__)

LONG_POLL_MARGIN_S = 10.0
"""Added to the long-poll wait for the read timeout: the controller answers at ``wait`` at the latest."""

M = TypeVar("M", bound=BaseModel)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def pinned_context(ca: Path) -> ssl.SSLContext:
    """A TLS context that trusts the CA bundle at ``ca`` and nothing else (``create_default_context``
    loads the system's store only when given no CA), verifying the certificate and the host name."""
    if not ca.is_file():
        raise AgentConfigError(f"the CA bundle {ca} does not exist", setting="ca_file")
    try:
        return ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise AgentConfigError(
            f"the CA bundle {ca} holds no usable PEM certificate: {exc}", setting="ca_file"
        ) from exc


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a transport error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def check_transport(url: httpx.URL, *, allow_insecure: bool) -> None:
    """Refuse a URL the agent must not send a credential or fetch a model over."""
    if url.scheme == "https":
        return
    if url.scheme != "http":
        raise AgentConfigError(f"{url} is not an http(s) URL", setting="controller_url")
    if not allow_insecure and not is_loopback(url.host):
        raise InsecureTransport(
            f"plain HTTP to {url.host} would send the device credential and models in the clear; "
            "use https with a pinned CA, or set allow_insecure",
            setting="controller_url",
        )


class ControllerClient:
    """A synchronous client of one controller; see the module docstring for what it guarantees.

    ``verify`` is ``True`` (system CAs), a path to a PEM CA bundle to pin, or ``False`` (tests only).
    ``timeout`` applies to each request except the long-poll, whose read timeout is its wait plus a
    margin. ``download_retries`` bounds the extra attempts of a download, with exponential back-off
    from ``backoff_s`` through ``sleep``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        verify: str | Path | bool = True,
        timeout: float = 10.0,
        allow_insecure: bool = False,
        download_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        check_transport(self.base_url, allow_insecure=allow_insecure)
        self._allow_insecure = allow_insecure
        self._timeout = timeout
        self._retries = download_retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._ca = None if isinstance(verify, bool) else Path(verify)
        ssl_verify = verify if isinstance(verify, bool) else pinned_context(Path(verify))
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            verify=ssl_verify,
            timeout=timeout,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the API ---------------------------------------------------------------------------------

    def enrol(
        self,
        token: str,
        device_id: str,
        hardware_class: str,
        labels: dict[str, str] | None = None,
    ) -> EnrolResponse:
        """Trade a one-time enrolment token for this device's credential (shown once)."""
        body = EnrolRequest(
            token=token, device_id=device_id, hardware_class=hardware_class, labels=labels or {}
        )
        with self._mapped("enrol"):
            response = self._http.post(ENROL_PATH, json=body.model_dump(mode="json"))
        return self._parse(response, EnrolResponse, "enrol")

    def desired(
        self, device_id: str, credential: str, revision: int | None, wait_s: float
    ) -> DesiredState:
        """Long-poll the desired state: the controller answers at once when its revision differs
        from ``revision``, else after ``wait_s`` (at most ``LONG_POLL_MAX_S``) with the same state."""
        wait = max(0.0, min(wait_s, LONG_POLL_MAX_S))
        params: dict[str, str | int | float] = {"wait": wait}
        if revision is not None:
            params["revision"] = revision
        timeout = httpx.Timeout(self._timeout, read=wait + LONG_POLL_MARGIN_S)
        with self._mapped("desired state"):
            response = self._http.get(
                desired_path(device_id),
                params=params,
                headers=bearer(credential),
                timeout=timeout,
            )
        return self._parse(response, DesiredState, "desired state")

    def send_telemetry(
        self, device_id: str, credential: str, batch: TelemetryBatch
    ) -> TelemetryAck:
        """Send one batch; the ack lists what was stored now and what had been stored before."""
        with self._mapped("telemetry"):
            response = self._http.post(
                telemetry_path(device_id),
                content=batch.model_dump_json(),
                headers={**bearer(credential), "Content-Type": "application/json"},
            )
        return self._parse(response, TelemetryAck, "telemetry")

    def send_field_samples(
        self, device_id: str, credential: str, batch: FieldSampleBatch
    ) -> FieldSampleAck:
        """Send labelled field samples; the controller stores them all or answers an error."""
        with self._mapped("field samples"):
            response = self._http.post(
                field_samples_path(device_id),
                content=batch.model_dump_json(),
                headers={**bearer(credential), "Content-Type": "application/json"},
            )
        return self._parse(response, FieldSampleAck, "field samples")

    def download(self, artifact: Artifact, dest: Path, credential: str) -> Path:
        """Fetch ``artifact`` to ``dest``, resuming a partial ``dest``; returns ``dest``.

        See :func:`fleet.agent.download.download_resumable`: transport errors, 5xx answers and short
        bodies are retried ``download_retries`` times with back-off, each retry resuming. Raises
        :class:`Unauthorized` or :class:`Forbidden` at once, and :class:`DownloadFailed` when the
        retries are spent (the partial file stays for the next call) or there is no such artifact.
        """
        url = self._artifact_url(artifact)
        headers = bearer(credential) if self._same_origin(url) else {}
        try:
            return download_resumable(
                self._http,
                url,
                dest,
                artifact.size_bytes,
                headers=headers,
                check=lambda response: _raise_for_status(response, "artifact download"),
                version=artifact.version,
                retries=self._retries,
                backoff_s=self._backoff_s,
                backoff_max_s=self._backoff_max_s,
                sleep=self._sleep,
                redirect=lambda target: self._redirect_headers(target, credential),
            )
        except BadResponse as exc:
            raise DownloadFailed(
                f"the controller has no artifact {artifact.url}: {exc.message}",
                version=artifact.version,
                received=file_size(dest),
                expected=artifact.size_bytes,
                status_code=exc.status_code,
            ) from exc

    # --- plumbing --------------------------------------------------------------------------------

    def _artifact_url(self, artifact: Artifact) -> httpx.URL:
        url = self.base_url.join(artifact.url)
        check_transport(url, allow_insecure=self._allow_insecure)
        return url

    def _redirect_headers(self, target: httpx.URL, credential: str) -> dict[str, str]:
        """Where a download's redirect may go (the same transport rules as the controller: no
        plain HTTP off loopback unless allowed) and what goes with it: the credential only to the
        controller itself, never to an object store's presigned URL. The hop goes through this
        client, so with a pinned CA bundle the object store's certificate must chain to it too."""
        check_transport(target, allow_insecure=self._allow_insecure)
        return bearer(credential) if self._same_origin(target) else {}

    def _same_origin(self, url: httpx.URL) -> bool:
        """The credential goes only to the controller, never to an object store's signed URL."""
        base = self.base_url
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """httpx's transport errors become :class:`ControllerUnreachable`, cause kept; a certificate
        that fails verification becomes :class:`UntrustedController`."""
        try:
            yield
        except httpx.TransportError as exc:
            failed = _certificate_error(exc)
            if failed is not None:
                trusted = f"the pinned CA {self._ca}" if self._ca else "the default trust store"
                why = getattr(failed, "verify_message", None) or str(failed)
                raise UntrustedController(
                    f"{what}: refusing the controller at {self.base_url}: its TLS certificate does "
                    f"not verify against {trusted} ({why}); nothing was sent. Give this device "
                    f"the controller's CA as {ENV_PREFIX}CA_FILE, or find out who answers in the "
                    "controller's name"
                ) from exc
            raise ControllerUnreachable(
                f"{what}: the controller at {self.base_url} is unreachable ({type(exc).__name__}: "
                f"{exc})"
            ) from exc

    def _parse(self, response: httpx.Response, model: type[M], what: str) -> M:
        _raise_for_status(response, what)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadResponse(
                f"{what}: the answer does not match fleet.shared.protocol.{model.__name__}: "
                f"{exc.error_count()} error(s)",
                status_code=response.status_code,
                detail=response.text[:500],
            ) from exc


def _raise_for_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code < 300:
        return
    detail = response.text[:500]
    if code == 401:
        raise Unauthorized(f"{what}: the controller refused the credential (401)", status_code=code)
    if code == 403:
        raise Forbidden(
            f"{what}: this credential may not do this (403): {detail}", status_code=code
        )
    if code >= 500 or code == 429:
        raise ControllerUnreachable(f"{what}: the controller answered {code}", status_code=code)
    raise BadResponse(f"{what}: unexpected answer {code}", status_code=code, detail=detail)


__all__ = [
    "ControllerCallFailed",
    "ControllerClient",
    "bearer",
    "check_transport",
]
