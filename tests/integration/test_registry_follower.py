"""The registry follower against real processes: a controller (``python -m fleet.controller.api.serve``),
``mlflow server`` and ``edgeloop registry follow``, with devices that report through the real client.

A rollout succeeds and the follower writes it; then the follower is killed (SIGKILL) and MLflow
stopped, a second rollout is rolled back by a failing gate, the follower comes back while MLflow is
still down (it backs off and moves past nothing), the controller is killed and started again, and
MLflow comes back: each outcome lands in MLflow once (tags, ``production``, the cursor at the end,
each outcome applied by exactly one follower process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from builders import REGISTRY_KEY, model_bytes, sign
from servers import (
    ADMIN,
    Controller,
    policy,
    stop_group,
    wait_healthy,
    wait_until,
    write_public_key,
)

from fleet.agent.client import ControllerClient
from fleet.agent.errors import ControllerCallFailed
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram
from fleet.shared.ports import free_port
from fleet.shared.protocol import TelemetryBatch
from registry.follower import FollowerState, FollowerStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL, CLS = "followed", "follow-cpu"
BAD = "3"
"""The version whose devices fail: its rollout is rolled back by the error-rate gate."""


@dataclass
class Mlflow:
    """``mlflow server`` on a fixed port and SQLite store, so it can be stopped and started again."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Mlflow:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        log = self.folder / "mlflow-server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mlflow", "server",
                    "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--artifacts-destination", (self.folder / "artifacts").as_uri(),
                    "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1",
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_healthy(self.proc, f"{self.url}/health", log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)


def report(seq: int, version: str, device: str) -> dict[str, Any]:
    """A window of 200 inferences with 100 labels, 95 right; the bad version errs on a quarter."""
    hist = LatencyHistogram.of([1.0] * 200, LATENCY_BOUNDS_MS)
    return {
        "seq": seq, "buffer_id": device, "model": MODEL, "version": version,
        "window_start": 1.0, "window_end": 2.0, "inferences": 200,
        "errors": 50 if version == BAD else 0,
        "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
        "feedback": [{"predicted": 1, "label": 1 if i < 95 else 0} for i in range(100)],
    }  # fmt: skip


@contextmanager
def reporting(ctl: Controller, credentials: dict[str, str]) -> Iterator[None]:
    """Devices that report every 0.3 s from the version they are told to run (``1`` untargeted);
    while the controller is down they keep their reports and send them again."""
    stop = threading.Event()

    def run() -> None:
        seq: dict[str, int] = {}
        unsent: dict[str, list[dict[str, Any]]] = {}
        with ControllerClient(ctl.base, backoff_s=0.01, timeout=2) as client:
            while not stop.is_set():
                for device, credential in credentials.items():
                    try:
                        desired = client.desired(device, credential, None, 0)
                        version = desired.artifact.version if desired.artifact else "1"
                        seq[device] = seq.get(device, 0) + 1
                        pending = unsent.setdefault(device, [])
                        pending.append(report(seq[device], version, device))
                        batch = TelemetryBatch.model_validate({"reports": pending})
                        client.send_telemetry(device, credential, batch)
                        pending.clear()
                    except ControllerCallFailed:
                        continue
                stop.wait(0.3)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def roll_out(ctl: Controller, version: str, stable: str) -> tuple[str, dict[str, Any]]:
    """Create and start a rollout of ``version`` over ``stable``; its id and its final detail."""
    body = {
        "model": MODEL, "version": version, "stable_version": stable,
        "policy": policy(CLS, bake_s=1.0, deadline_s=60),
    }  # fmt: skip
    r = ctl.admin("POST", "/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    rollout_id = str(r.json()["rollout_id"])
    ctl.command(rollout_id, "start")
    final = wait_until(
        f"rollout {rollout_id} to end",
        lambda: (
            (s := ctl.status(rollout_id))["phase"] in ("succeeded", "rolled_back", "failed") and s
        ),
        timeout=90,
    )
    return rollout_id, final


@dataclass
class Follower:
    """``edgeloop registry follow`` as an operator runs it; each start logs to a file of its own."""

    root: Path
    controller: str
    mlflow: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EDGELOOP_", "MLFLOW_", "PREFECT_"))
        }
        env.update(
            EDGELOOP_HOME=str(self.home),
            EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
            MLFLOW_TRACKING_URI=self.mlflow,
            COLUMNS="300",
        )
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edgeloop.cli", "registry", "follow", "--url",
                self.controller, *args]  # fmt: skip

    def start(self) -> None:
        self.starts += 1
        with (self.root / f"follower-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                self.command("--interval", "0.2", "--max-backoff", "1"),
                cwd=self.root, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.logs()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)

    def state(self) -> FollowerState:
        store = FollowerStore(self.home / "registry-follower.db")
        try:
            return store.state()
        finally:
            store.close()

    def logs(self) -> list[str]:
        return [
            (self.root / f"follower-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        ]


def applied_lines(follower: Follower) -> list[list[str]]:
    """Per follower process, the outcomes it reported applying (``outcome N: ...``)."""
    return [
        [line.split(":")[0] for line in log.splitlines() if line.startswith("outcome ")]
        for log in follower.logs()
    ]


def rollout_tags(client: Any, version: str) -> tuple[str | None, str | None]:
    tags = client.get_model_version(MODEL, version).tags
    return tags.get("edgeloop.rollout.status"), tags.get("edgeloop.rollout.reason")


def production(client: Any) -> str | None:
    aliases = client.get_registered_model(MODEL).aliases
    return str(aliases["production"]) if "production" in aliases else None


def test_each_outcome_lands_once_across_a_killed_follower_a_stopped_mlflow_and_a_restart(
    tmp_path: Path,
) -> None:
    mlflow = Mlflow(tmp_path / "mlflow")
    mlflow.folder.mkdir()
    mlflow.start()
    ctl = Controller(
        tmp_path,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        write_public_key(REGISTRY_KEY, tmp_path / "k.pem"),
    )
    follower = Follower(tmp_path, ctl.base, mlflow.url)
    try:
        client = mlflow.client()
        client.create_registered_model(MODEL)
        run_id = client.create_run("0").info.run_id
        for _ in range(3):
            client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
        client.set_model_version_tag(MODEL, "1", "edgeloop.rollout.status", "succeeded")
        client.set_registered_model_alias(MODEL, "production", "2")  # v2 promoted

        ctl.start()
        for version in ("1", "2", BAD):
            data = model_bytes(int(version))
            signature = sign(REGISTRY_KEY, f"{CLS}-int8", data, model=MODEL, version=version)
            ctl.register(MODEL, version, CLS, data, signature)
        credentials = {f"follow-{i}": ctl.enrol(f"follow-{i}", CLS) for i in range(4)}
        follower.start()

        with reporting(ctl, credentials):
            first, final = roll_out(ctl, "2", "1")
            assert final["phase"] == "succeeded", final
            wait_until("the follower to apply the success", lambda: follower.state().cursor == 1)
            feed = ctl.admin("GET", "/v1/outcomes").json()["outcomes"]
            assert [(o["id"], o["rollout_id"], o["status"]) for o in feed] == [
                (1, first, "succeeded")
            ]
            assert rollout_tags(client, "2") == ("succeeded", feed[0]["reason"])
            assert production(client) == "2"
            client.set_registered_model_alias(MODEL, "production", BAD)  # v3 promoted

            follower.kill()  # mid-air: no shutdown of any kind
            mlflow.stop()
            second, final = roll_out(ctl, BAD, "2")
            assert final["phase"] == "rolled_back", final

            follower.start()  # MLflow still down: it backs off and moves past nothing
            wait_until("a failed pass", lambda: follower.state().error, timeout=60)
            time.sleep(2)
            assert follower.state().cursor == 1
            ctl.kill(signal.SIGKILL)  # the other side goes too, and comes back
            ctl.start()
            mlflow.start()
            state = wait_until(
                "the follower to apply the rollback",
                lambda: (s := follower.state()).cursor == 2 and s.error is None and s,
                timeout=90,
            )
            assert state.caught_up_at is not None

        feed = ctl.admin("GET", "/v1/outcomes").json()["outcomes"]
        assert [(o["id"], o["rollout_id"], o["status"]) for o in feed] == [
            (1, first, "succeeded"),
            (2, second, "rolled_back"),
        ]
        assert "gate error_rate failed" in feed[1]["reason"], feed[1]
        client = mlflow.client()
        assert rollout_tags(client, BAD) == ("rolled_back", feed[1]["reason"])
        assert rollout_tags(client, "2") == ("succeeded", feed[0]["reason"])
        assert production(client) == "2"  # back on the stable version
        store = FollowerStore(follower.home / "registry-follower.db")
        try:
            assert [(a.id, a.status, a.result) for a in store.applied()] == [
                (1, "succeeded", "applied"),
                (2, "rolled_back", "applied"),
            ]
        finally:
            store.close()
        # each outcome applied by exactly one of the two follower processes, once
        assert applied_lines(follower) == [["outcome 1"], ["outcome 2"]], follower.logs()
        assert "again in" in follower.logs()[1]  # it waited for MLflow, saying so

        follower.kill()
        again = subprocess.run(
            follower.command("--once"), cwd=tmp_path, env=follower.env(), capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 outcome(s) applied; cursor at 2" in again.stdout
    finally:
        if follower.proc is not None and follower.proc.poll() is None:
            os.killpg(follower.proc.pid, signal.SIGKILL)
            follower.proc.wait(timeout=20)
        ctl.kill(signal.SIGTERM)
        mlflow.stop()
