"""A person's answer to a paused retrain (``schedule.approval``), against a real `prefect server`
and MLflow store: a flow run pauses in ``flows.approval.ask`` (a process of its own, as a worker's
flow run is), `edgeloop approve` resumes it with the person's answer, and a run nobody answers ends
without a promotion when its timeout passes. The version says which run waits while it waits."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from servers import wait_until

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project

WAITER = """
import json, sys
from prefect import flow
from flows.approval import ask
from registry.tracking import connect

@flow(name="approval-test")
def waits(model: str, version: str, timeout_s: int) -> dict | None:
    said = ask(connect(sys.argv[4]), model, version, "v2 beats v1 on every measure",
               timeout_s=timeout_s, poll_s=1)
    return said.model_dump(include={"approve", "note"}) if said is not None else None

print("ANSWER " + json.dumps(waits(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


def waiting(client: Any, model: str) -> str | None:
    return client.get_model_version(model, "1").tags.get("edgeloop.promote.waiting")


def start_waiter(project: Project, model: str, timeout_s: int) -> subprocess.Popen[str]:
    script = project.root / "waiter.py"
    script.write_text(WAITER)
    return subprocess.Popen(
        [sys.executable, str(script), model, "1", str(timeout_s), project.tracking_uri],
        cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def answer_of(proc: subprocess.Popen[str]) -> Any:
    out, _ = proc.communicate(timeout=180)
    lines = [line for line in out.splitlines() if line.startswith("ANSWER ")]
    assert proc.returncode == 0 and lines, out[-3000:]
    return json.loads(lines[-1].removeprefix("ANSWER "))


@pytest.fixture
def registry(project: Project, mlflow_sqlite: str) -> tuple[Any, str]:
    project.extra_env["MLFLOW_TRACKING_URI"] = mlflow_sqlite
    client = project.client()
    model = f"approve-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    run_id = client.create_run("0").info.run_id
    client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
    return client, model


@pytest.mark.parametrize("reject", [False, True])
def test_a_person_answers_a_paused_retrain_with_edgeloop_approve(
    project: Project, registry: tuple[Any, str], reject: bool
) -> None:
    client, model = registry
    proc = start_waiter(project, model, timeout_s=120)
    try:
        found = wait_until("the run to wait", lambda: waiting(client, model), timeout=120)
        run_id = json.loads(found)["flow_run_id"]
        args = [
            "approve",
            model,
            "1",
            "--note",
            "checked the card",
            *(["--reject"] if reject else []),
        ]
        said = project.edgeloop(*args)
        assert said.returncode == 0, said.stdout + said.stderr
        assert f"flow run {run_id} goes on" in said.stdout
        answer = answer_of(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answer == {"approve": not reject, "note": "checked the card"}
    assert waiting(client, model) is None  # answered: nothing waits any more
    again = project.edgeloop("approve", model, "1")
    assert again.returncode != 0 and "no retrain waits for an answer" in again.stderr


def test_no_answer_in_time_promotes_nothing(
    project: Project, registry: tuple[Any, str], tmp_path: Path
) -> None:
    client, model = registry
    proc = start_waiter(project, model, timeout_s=3)
    assert answer_of(proc) is None
    assert waiting(client, model) is None
