"""registry.listener over a real SQLite MLflow registry, with a recording trigger."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from promotion_registry import (
    MODEL,
    PASSED,
    SECRET,
    SUCCEEDED,
    Recorder,
    fresh_registry,
    production,
    signed_headers,
)
from typer.testing import CliRunner

from edgeloop.cli import app as cli_app
from registry import tags as tag
from registry.listener import create_listener_app
from registry.promotion_config import ListenerSettings

NOW = 1_800_000_000


class Listener:
    def __init__(self, tmp_path: Path, client: MlflowClient) -> None:
        self.client = client
        self.trigger = Recorder()
        settings = ListenerSettings(secret=SECRET)
        app = create_listener_app(
            settings, self.trigger, lambda: client, home=tmp_path / "home", clock=lambda: NOW
        )
        self.http = TestClient(app)

    def deliver(
        self,
        data: dict[str, str],
        *,
        entity: str = "model_version_alias",
        action: str = "created",
        delivery_id: str | None = None,
    ) -> tuple[int, dict[str, object]]:
        body = json.dumps({"entity": entity, "action": action, "data": data}).encode()
        hdrs = signed_headers(body, delivery_id or uuid.uuid4().hex, NOW)
        response = self.http.post("/webhooks/mlflow", content=body, headers=hdrs)
        return response.status_code, response.json()

    def promote(self, version: str) -> tuple[int, dict[str, object]]:
        """What the UI does (set the alias), then what MLflow sends."""
        self.client.set_registered_model_alias(MODEL, "production", version)
        return self.deliver({"name": MODEL, "alias": "production", "version": version})


def test_production_alias_starts_one_rollout(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, SUCCEEDED, PASSED))
    status, body = listener.promote("2")
    assert (status, body["status"], body["run_id"]) == (200, "started", "run-1")
    assert listener.trigger.calls == [(MODEL, "2", "1")]
    status, body = listener.promote("2")  # MLflow sends the event again (alias set twice)
    assert (status, body["status"]) == (200, "duplicate")
    assert listener.trigger.calls == [(MODEL, "2", "1")]


def test_other_aliases_and_events_are_ignored(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    status, body = listener.deliver({"name": MODEL, "alias": "candidate", "version": "1"})
    assert (status, body["status"]) == (200, "ignored")
    assert "alias candidate starts no rollout" in str(body["reason"])
    status, body = listener.deliver({"name": MODEL, "version": "1"}, entity="model_version")
    assert (status, body["status"]) == (200, "ignored")
    assert listener.trigger.calls == []


@pytest.mark.parametrize(("model", "version"), [("no-such-model", "1"), (MODEL, "7")])
def test_unknown_model_or_version_is_refused_and_starts_nothing(
    tmp_path: Path, model: str, version: str
) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    status, body = listener.deliver({"name": model, "alias": "production", "version": version})
    assert status == 404
    assert f"{model} v{version} is not in the registry" in str(body["detail"])
    assert listener.trigger.calls == []
    status, body = listener.promote("1")  # the refused delivery claimed nothing
    assert (status, body["status"]) == (200, "started")


def test_version_without_hardware_results_is_refused_and_the_alias_put_back(
    tmp_path: Path,
) -> None:
    client = fresh_registry(tmp_path, SUCCEEDED, {})
    listener = Listener(tmp_path, client)
    status, body = listener.promote("2")
    assert (status, body["status"]) == (200, "refused")
    assert production(client) == "1"
    refused = client.get_model_version(MODEL, "2").tags[tag.PROMOTE_REFUSED]
    assert refused.startswith("it has no hardware results") and tag.PROMOTE_FORCE in refused
    # MLflow then reports the alias moved back to v1: the fleet runs it already
    status, body = listener.deliver({"name": MODEL, "alias": "production", "version": "1"})
    assert (status, body["status"]) == (200, "duplicate")
    assert listener.trigger.calls == []


def test_refused_first_release_loses_the_alias(tmp_path: Path) -> None:
    client = fresh_registry(tmp_path, {"edgeloop.hw.host-cpu.status": "failed"})
    listener = Listener(tmp_path, client)
    status, body = listener.promote("1")
    assert (status, body["status"]) == (200, "refused")
    assert "host-cpu did not pass" in str(body["reason"])
    assert production(client) is None
    assert listener.trigger.calls == []


def test_forced_version_is_rolled_out(tmp_path: Path) -> None:
    client = fresh_registry(tmp_path, SUCCEEDED, {tag.PROMOTE_FORCE: "true"})
    listener = Listener(tmp_path, client)
    status, body = listener.promote("2")
    assert (status, body["status"]) == (200, "started")
    assert listener.trigger.calls == [(MODEL, "2", "1")]
    assert production(client) == "2"


def test_a_rollback_moving_the_alias_back_starts_nothing(tmp_path: Path) -> None:
    client = fresh_registry(tmp_path, SUCCEEDED, PASSED)
    listener = Listener(tmp_path, client)
    listener.promote("2")
    client.set_model_version_tag(MODEL, "2", "edgeloop.rollout.status", "rolled_back")
    status, body = listener.promote("1")  # what the rollout's outcome does on a rollback
    assert (status, body["status"]) == (200, "current")
    assert listener.trigger.calls == [(MODEL, "2", "1")]


def test_a_trigger_failure_answers_502_and_mlflow_may_retry(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    listener.client.set_registered_model_alias(MODEL, "production", "1")
    listener.trigger.fail = True
    data = {"name": MODEL, "alias": "production", "version": "1"}
    status, body = listener.deliver(data, delivery_id="d-1")
    assert status == 502 and "Prefect API unreachable" in str(body["detail"])
    listener.trigger.fail = False
    status, body = listener.deliver(data, delivery_id="d-1")  # MLflow's retry, same delivery id
    assert (status, body["status"]) == (200, "started")


def test_bad_signature_over_http_is_401(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    body = b'{"entity": "model_version_alias", "action": "created", "data": {}}'
    hdrs = signed_headers(body, "d-1", NOW, secret="wrong")
    response = listener.http.post("/webhooks/mlflow", content=body, headers=hdrs)
    assert response.status_code == 401 and "bad X-MLflow-Signature" in response.json()["detail"]
    assert listener.http.get("/health").json() == {"status": "ok"}


def test_a_signature_header_with_non_ascii_bytes_is_401_not_500(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    body = b'{"entity": "model_version_alias", "action": "created", "data": {}}'
    hdrs = signed_headers(body, "d-1", NOW)
    raw = [(k.encode(), v.encode()) for k, v in hdrs.items() if k != "X-MLflow-Signature"]
    raw.append((b"X-MLflow-Signature", "v1,\u00e9t\u00e9".encode("latin-1")))
    response = listener.http.post("/webhooks/mlflow", content=body, headers=raw)
    assert response.status_code == 401 and "bad X-MLflow-Signature" in response.json()["detail"]


def test_a_body_that_is_not_a_webhook_payload_is_400(tmp_path: Path) -> None:
    listener = Listener(tmp_path, fresh_registry(tmp_path, PASSED))
    body = b"[1, 2]"
    response = listener.http.post(
        "/webhooks/mlflow", content=body, headers=signed_headers(body, "d-1", NOW)
    )
    assert response.status_code == 400 and "not an MLflow webhook payload" in response.text


@pytest.mark.parametrize("command", [["serve"], ["register-webhook", "--url", "https://x/y"]])
def test_listener_commands_need_the_secret(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGELOOP_LISTENER_SECRET", raising=False)
    result = CliRunner().invoke(cli_app, ["listener", *command])
    assert result.exit_code == 1
    assert "no webhook secret (set EDGELOOP_LISTENER_SECRET" in result.output


def test_poll_refuses_a_non_positive_interval() -> None:
    result = CliRunner().invoke(cli_app, ["listener", "poll", "--interval", "0"])
    assert result.exit_code == 1 and "interval 0 is not positive" in result.output


def test_a_late_refusal_leaves_a_newer_alias_alone(tmp_path: Path) -> None:
    client = fresh_registry(tmp_path, SUCCEEDED, {}, PASSED)
    listener = Listener(tmp_path, client)
    client.set_registered_model_alias(MODEL, "production", "3")  # moved on before v2's event came
    status, body = listener.deliver({"name": MODEL, "alias": "production", "version": "2"})
    assert (status, body["status"]) == (200, "refused")
    assert (
        production(client) == "3"
        and tag.PROMOTE_REFUSED in client.get_model_version(MODEL, "2").tags
    )
    status, body = listener.deliver({"name": MODEL, "alias": "production", "version": "3"})
    assert (status, body["status"]) == (200, "started")
    assert listener.trigger.calls == [(MODEL, "3", "1")]
