"""The operator's side of the controller API: artifacts, baselines, rollouts, alerts, playbook runs
and enrolment tokens, each answer a model of ``fleet.shared.admin_protocol``.

Used by the rollout flow and the CLI. Devices never hold the admin token and use
``fleet.agent.client`` instead. An artifact is registered by uploading its bytes (streamed from a
local file) with the signed release claim: the controller never reads a path of the caller's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydantic import BaseModel, TypeAdapter

from edgeloop.core.errors import EdgeloopError
from fleet.shared.admin_protocol import (
    Alert,
    ArtifactRegistration,
    Baseline,
    BaselineSet,
    OutcomePage,
    PlaybookRun,
    RetireRequest,
    RetireResult,
    RolloutCommand,
    RolloutDetail,
    RolloutRequest,
    RolloutSummary,
)
from fleet.shared.protocol import (
    API_PREFIX,
    Artifact,
    EnrolmentToken,
    EnrolmentTokenInfo,
    EnrolmentTokenRequest,
)

_ROLLOUTS = TypeAdapter(list[RolloutSummary])
UPLOAD_CHUNK = 1 << 20
_ALERTS = TypeAdapter(list[Alert])
_PLAYBOOK_RUNS = TypeAdapter(list[PlaybookRun])
_TOKENS = TypeAdapter(list[EnrolmentTokenInfo])


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while data := fh.read(UPLOAD_CHUNK):
        yield data


class AdminError(RuntimeError):
    """The controller refused or failed an admin call; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


ADMIN_TOKEN_ENV = "EDGELOOP_FLEET_ADMIN_TOKEN"


@contextlib.contextmanager
def admin_token_in_env(token: str) -> Iterator[None]:
    """``EDGELOOP_FLEET_ADMIN_TOKEN`` set to ``token`` for the duration (restored after): how a
    caller hands the token to a flow it runs in-process. A flow parameter would be stored, in plain
    text, by the Prefect API (and shown by its UI) for anyone who can reach it."""
    before = os.environ.get(ADMIN_TOKEN_ENV)
    os.environ[ADMIN_TOKEN_ENV] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
        else:
            os.environ[ADMIN_TOKEN_ENV] = before


def admin_token_from_env(error: type[EdgeloopError], hint: str) -> str:
    """The controller's admin token from ``EDGELOOP_FLEET_ADMIN_TOKEN``; ``error`` when unset."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise error("no admin token for the fleet controller", hint=hint)
    return token


class AdminClient:
    """The controller's admin API; every answer parsed into its ``fleet.shared.admin_protocol`` model."""

    def __init__(
        self, base_url: str, token: str, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + API_PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: BaseModel | None = None) -> object:
        """The answer's JSON (``None`` for an empty body); ``AdminError`` on no answer or a 4xx/5xx."""
        payload = body.model_dump(mode="json") if body is not None else None
        return self._send(method, path, json=payload)

    def _send(self, method: str, path: str, **request: Any) -> object:
        try:
            response = self._http.request(method, path, **request)
        except httpx.HTTPError as exc:
            raise AdminError(f"fleet controller unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AdminError(
                f"{method} {path} refused ({response.status_code}): {detail}",
                status=response.status_code,
            )
        return response.json() if response.content else None

    def register_artifact(
        self, registration: ArtifactRegistration, content: Path | None = None
    ) -> Artifact | None:
        """Upload ``content`` (a local file, streamed: never read whole) as the variant the claim
        describes, or with ``content=None`` have the controller fetch ``registration.source``; the
        device-facing artifact, or ``None`` when the controller will not ship it (unsigned)."""
        params = registration.model_dump(mode="json", exclude_none=True)
        if content is None:
            found = self._send("POST", "/artifacts", params=params)
        else:
            with content.open("rb") as fh:
                found = self._send(
                    "POST", "/artifacts", params=params, content=_chunks(fh),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(content.stat().st_size)},
                )  # fmt: skip
        return None if found is None else Artifact.model_validate(found)

    def set_baseline(self, model: str, version: str) -> BaselineSet:
        return BaselineSet.model_validate(
            self._call("PUT", f"/baselines/{model}", Baseline(version=version))
        )

    def retire_devices(
        self, device_ids: list[str], silent_for_s: float | None = None
    ) -> RetireResult:
        body = RetireRequest(device_ids=device_ids, silent_for_s=silent_for_s)
        return RetireResult.model_validate(self._call("POST", "/devices/retire", body))

    def create_rollout(self, request: RolloutRequest) -> RolloutDetail:
        return RolloutDetail.model_validate(self._call("POST", "/rollouts", request))

    def command(self, rollout_id: str, command: str, reason: str = "") -> RolloutDetail:
        body = RolloutCommand(reason=reason)
        return RolloutDetail.model_validate(
            self._call("POST", f"/rollouts/{rollout_id}/{command}", body)
        )

    def rollout(self, rollout_id: str) -> RolloutDetail:
        return RolloutDetail.model_validate(self._call("GET", f"/rollouts/{rollout_id}"))

    def rollouts(self) -> list[RolloutSummary]:
        return _ROLLOUTS.validate_python(self._call("GET", "/rollouts"))

    def outcomes(
        self, after: int = 0, limit: int = 100, rollout_id: str | None = None
    ) -> OutcomePage:
        """Rollout outcomes with feed ids above ``after``, oldest first (the registry follower's
        feed), of one rollout if ``rollout_id``; pass ``page.last`` as the next ``after``."""
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if rollout_id is not None:
            params["rollout_id"] = rollout_id
        return OutcomePage.model_validate(self._send("GET", "/outcomes", params=params))

    def alerts(self, status: str = "open") -> list[Alert]:
        return _ALERTS.validate_python(self._call("GET", f"/alerts?status={status}"))

    def playbook_runs(self) -> list[PlaybookRun]:
        return _PLAYBOOK_RUNS.validate_python(self._call("GET", "/playbook-runs"))

    def enrolment_token(
        self,
        uses: int,
        ttl_s: int = 86_400,
        hardware_class: str | None = None,
        *,
        device_id: str | None = None,
        device_prefix: str | None = None,
    ) -> EnrolmentToken:
        body = EnrolmentTokenRequest(
            uses=uses, ttl_s=ttl_s, hardware_class=hardware_class, device_id=device_id,
            device_prefix=device_prefix,
        )  # fmt: skip
        return EnrolmentToken.model_validate(self._call("POST", "/enrolment-tokens", body))

    def enrolment_tokens(self) -> list[EnrolmentTokenInfo]:
        return _TOKENS.validate_python(self._call("GET", "/enrolment-tokens"))

    def revoke_enrolment_token(self, token_id: int) -> None:
        self._call("DELETE", f"/enrolment-tokens/{token_id}")
