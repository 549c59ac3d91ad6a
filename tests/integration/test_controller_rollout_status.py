"""`edgeloop rollout status [ID] [--watch]` (the CLI in a subprocess) against a real controller process:
the table of a started rollout, --watch returning when the rollout ends, and each bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from builders import REGISTRY_KEY, sign
from conftest import Project
from servers import ADMIN, Controller, policy, wait_until, write_public_key

pytestmark = pytest.mark.integration

CLS = "status-cpu"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    root = tmp_path_factory.mktemp("status-controller")
    key = write_public_key(REGISTRY_KEY, root / "k.pem")
    ctl = Controller(root, f"sqlite:///{root / 'fleet.db'}", key).start()
    for i in range(2):
        ctl.enrol(f"status-{i}", CLS)
    yield ctl
    ctl.kill(signal.SIGTERM)


def create(ctl: Controller, model: str) -> str:
    """A pending rollout of ``model`` 2 over 1 (a model per test: a rollout blocks its model)."""
    for version in ("1", "2"):
        # the controller serves what it is given; these devices never download
        data = f"model {version}".encode()
        signature = sign(REGISTRY_KEY, f"{CLS}-int8", data, model=model, version=version)
        ctl.register(model, version, CLS, data, signature)
    r = ctl.rollout(model, "2", CLS, policy=policy(CLS, bake_s=600, deadline_s=900))
    assert r.status_code == 201, r.text
    return str(r.json()["rollout_id"])


def status_cli(ctl: Controller, *args: str) -> list[str]:
    return ["rollout", "status", *args, "--url", ctl.base]


def run(project: Project, ctl: Controller, *args: str, token: str = ADMIN) -> tuple[int, str, str]:
    done = project.edgeloop(*status_cli(ctl, *args), timeout=120, EDGELOOP_FLEET_ADMIN_TOKEN=token)
    return done.returncode, done.stdout, done.stderr


def test_status_shows_stage_cohort_devices_and_every_gate(
    project: Project, controller: Controller
) -> None:
    rollout_id = create(controller, "shown")
    try:
        controller.command(rollout_id, "start")
        wait_until(
            "a stage check",
            lambda: controller.status(rollout_id)["status"].get("last_check"),
        )
        rc, out, err = run(project, controller, rollout_id)
        assert rc == 0, err
        assert f"rollout {rollout_id}" in out and "progressing" in out and "stage 1/" in out
        row = next(line for line in out.splitlines() if CLS in line)
        assert "0/1 of 1" in row, row  # 1 of 2 devices targeted, none confirmed
        for gate in ("p95_latency", "error_rate", "accuracy"):
            assert gate in out
        assert "50 ms" in out  # the p95 budget of the cohort, as its limit
        rc, listed, err = run(project, controller)  # no id: every rollout
        assert rc == 0, err
        assert f"rollout {rollout_id}" in listed
    finally:
        controller.command(rollout_id, "abort")


def test_watch_refreshes_until_the_rollout_ends(project: Project, controller: Controller) -> None:
    rollout_id = create(controller, "watched")
    watch = subprocess.Popen(
        [
            *(sys.executable, "-m", "edgeloop.cli"),
            *status_cli(controller, rollout_id, "--watch", "--interval", "0.2"),
        ],
        cwd=project.root,
        env={**project.env(), "EDGELOOP_FLEET_ADMIN_TOKEN": ADMIN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            watch.wait(timeout=3)  # pending: still watching
        controller.command(rollout_id, "abort")
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert "aborted by an operator" in out  # the last frame (all of them on a terminal)


def test_unknown_rollout_is_one_clear_error(project: Project, controller: Controller) -> None:
    rc, out, err = run(project, controller, "nope-123")
    assert rc == 1
    assert "no rollout nope-123" in err and "edgeloop rollout status" in err
    assert "Traceback" not in err + out


def test_wrong_admin_token_is_one_clear_error(project: Project, controller: Controller) -> None:
    rc, out, err = run(project, controller, token="not-the-token")
    assert rc == 1
    assert "refused (401)" in err and "EDGELOOP_FLEET_ADMIN_TOKEN" in err
    assert "Traceback" not in err + out


def test_missing_admin_token_is_one_clear_error(project: Project, controller: Controller) -> None:
    rc, _, err = run(project, controller, token="")
    assert rc == 1
    assert "no admin token" in err and "EDGELOOP_FLEET_ADMIN_TOKEN" in err


def test_non_positive_interval_is_refused(project: Project, controller: Controller) -> None:
    rc, _, err = run(project, controller, "--watch", "--interval", "0")
    assert rc == 2
    assert "--interval" in err


def test_unreachable_controller_is_one_clear_error(project: Project) -> None:
    done = project.edgeloop(
        "rollout", "status", "--url", "http://127.0.0.1:9", EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN
    )
    assert done.returncode == 1
    assert "fleet controller unreachable" in done.stderr and "--url" in done.stderr
