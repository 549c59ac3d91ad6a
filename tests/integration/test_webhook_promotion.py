"""Promotion from the MLflow UI: a real `mlflow server` (SQLite and PostgreSQL backends) delivers its
``model_version_alias.created`` webhook to `edgeloop listener serve` under uvicorn.

The listener runs with ``EDGELOOP_LISTENER_RECORD_TO`` (a dry run that records each rollout it would
start), so the test sees exactly which rollout was triggered. MLflow only delivers to public https
addresses unless told otherwise; the server here is allowed loopback and http for the test only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from servers import free_port, stop_group, wait_healthy

from registry.promotion_store import PromotionStore
from registry.webhooks import ensure_webhook

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
SECRET = "webhook-test-secret"
PASSED = {"edgeloop.gates": "passed", "edgeloop.hw.host-cpu.status": "passed"}


@pytest.fixture(params=["sqlite", "postgresql"])
def mlflow_server(request: pytest.FixtureRequest) -> str:
    """The session's MLflow server of each backend; each test uses its own model name."""
    return str(request.getfixturevalue(f"mlflow_{request.param}"))


@pytest.fixture
def listener(project: Project, mlflow_server: str) -> Iterator[str]:
    """`edgeloop listener serve` against the server; yields its webhook URL."""
    project.extra_env.update(
        MLFLOW_TRACKING_URI=mlflow_server,
        EDGELOOP_LISTENER_SECRET=SECRET,
        EDGELOOP_LISTENER_RECORD_TO=str(project.root / "rollouts.jsonl"),
    )
    port = free_port()
    log_path = project.root / "listener.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "listener", "serve", "--port", str(port)],
            cwd=project.root, env=project.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, f"{base}/health", log_path)
            yield f"{base}/webhooks/mlflow"
        finally:
            stop_group(proc)
            client = project.client()  # the server outlives this test: drop its webhooks
            for hook in client.list_webhooks():
                if hook.url == f"{base}/webhooks/mlflow":
                    client.delete_webhook(hook.webhook_id)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def set_alias_like_the_ui(server: str, model: str, version: str) -> None:
    response = httpx.post(
        f"{server}/api/2.0/mlflow/registered-models/alias",
        json={"name": model, "alias": "production", "version": version},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_setting_production_in_mlflow_starts_a_rollout(
    project: Project, mlflow_server: str, listener: str
) -> None:
    first = project.edgeloop("listener", "register-webhook", "--url", listener)
    assert first.returncode == 0 and "created" in first.stdout, first.stdout + first.stderr
    again = project.edgeloop("listener", "register-webhook", "--url", listener)
    assert again.returncode == 0 and "updated" in again.stdout, again.stdout + again.stderr
    client = project.client()
    assert [h.url for h in client.list_webhooks()].count(listener) == 1

    model = "promoted-in-ui"
    client.create_registered_model(model)
    run_id = client.create_run("0").info.run_id
    for tags in ({**PASSED, "edgeloop.rollout.status": "succeeded"}, PASSED, {}):
        client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id, tags=tags)

    rollouts = project.root / "rollouts.jsonl"

    def started() -> list[dict[str, Any]]:
        lines = rollouts.read_text().splitlines() if rollouts.exists() else []
        return [json.loads(line) for line in lines]

    set_at = time.monotonic()
    set_alias_like_the_ui(mlflow_server, model, "2")
    wait_for(started, "a rollout of v2")
    print(f"alias set -> rollout started: {time.monotonic() - set_at:.2f} s")
    assert started() == [{"model": model, "version": "2", "stable_version": "1"}]

    set_alias_like_the_ui(mlflow_server, model, "3")
    refused = wait_for(
        lambda: client.get_model_version(model, "3").tags.get("edgeloop.promote.refused"),
        "the refusal of v3",
    )
    assert refused.startswith("it has no hardware results")
    assert str(client.get_registered_model(model).aliases["production"]) == "1"

    unsigned = httpx.post(listener, json={"entity": "model_version_alias"}, timeout=10)
    assert unsigned.status_code == 401 and "missing header" in unsigned.json()["detail"]
    assert started() == [{"model": model, "version": "2", "stable_version": "1"}]


def test_the_poller_takes_over_without_webhooks_and_never_starts_twice(
    project: Project, mlflow_server: str, listener: str
) -> None:
    client = project.client()
    hook, _ = ensure_webhook(client, listener, SECRET)
    model = "polled"
    client.create_registered_model(model)
    run_id = client.create_run("0").info.run_id
    for tags in ({**PASSED, "edgeloop.rollout.status": "succeeded"}, PASSED, PASSED):
        client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(model, "production", "1")
    store = PromotionStore(project.home / "promotions.db")
    log_path = project.root / "poller.log"
    with log_path.open("w") as log:
        poller = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "listener", "poll", "--interval", "0.5"],
            cwd=project.root, env=project.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: store.seen(model) == "1", "the poller's first pass")
            set_alias_like_the_ui(mlflow_server, model, "2")  # webhook and poller both see it
            wait_for(store.triggered, "a rollout of v2")
            time.sleep(2)  # four poller passes after the start
            assert poller.poll() is None, log_path.read_text()
            assert [(t.version, t.stable_version) for t in store.triggered()] == [("2", "1")]

            client.update_webhook(hook.webhook_id, status="DISABLED")
            time.sleep(1.5)  # the server's webhook cache expires
            set_alias_like_the_ui(mlflow_server, model, "3")
            wait_for(lambda: len(store.triggered()) == 2, "a rollout of v3 by the poller")
            last = store.triggered()[-1]
            assert (last.version, last.stable_version, last.source) == ("3", "1", "poller")
            recorded = (project.root / "rollouts.jsonl").read_text().splitlines()
            assert [json.loads(line)["version"] for line in recorded] == ["2", "3"]
        finally:
            stop_group(poller)
