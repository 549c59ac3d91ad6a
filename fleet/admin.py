"""The operator's side of the controller API: artifacts, rollouts and enrolment tokens.

Used by the rollout flow and the CLI. Devices never hold the admin token and use
``fleet.agent.client`` instead.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from edgeloop.core.errors import EdgeloopError
from fleet.shared.protocol import API_PREFIX, EnrolmentToken, EnrolmentTokenRequest, RolloutRequest


class AdminError(RuntimeError):
    """The controller refused or failed an admin call; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


ADMIN_TOKEN_ENV = "EDGELOOP_FLEET_ADMIN_TOKEN"


def admin_token_from_env(error: type[EdgeloopError], hint: str) -> str:
    """The controller's admin token from ``EDGELOOP_FLEET_ADMIN_TOKEN``; ``error`` when unset."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise error("no admin token for the fleet controller", hint=hint)
    return token


class AdminClient:
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

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
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
        self,
        *,
        model: str,
        version: str,
        variant: str,
        hardware_class: str,
        path: str,
        signature: str,
    ) -> Any:
        body = {
            "model": model, "version": version, "variant": variant,
            "hardware_class": hardware_class, "path": path, "signature": signature,
        }  # fmt: skip
        return self._call("POST", "/artifacts", body)

    def set_baseline(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call("PUT", f"/baselines/{model}", {"version": version}))

    def create_rollout(self, request: RolloutRequest) -> dict[str, Any]:
        return dict(self._call("POST", "/rollouts", request.model_dump(mode="json")))

    def command(self, rollout_id: str, command: str, reason: str = "") -> dict[str, Any]:
        return dict(self._call("POST", f"/rollouts/{rollout_id}/{command}", {"reason": reason}))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/rollouts/{rollout_id}"))

    def rollouts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/rollouts"))

    def alerts(self, status: str = "open") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", f"/alerts?status={status}")
        return found

    def playbook_runs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", "/playbook-runs")
        return found

    def enrolment_token(self, uses: int, ttl_s: int = 86_400) -> EnrolmentToken:
        body = EnrolmentTokenRequest(uses=uses, ttl_s=ttl_s).model_dump(mode="json")
        return EnrolmentToken.model_validate(self._call("POST", "/enrolment-tokens", body))
