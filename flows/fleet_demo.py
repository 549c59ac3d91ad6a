"""The fleet part of `make demo`: a real controller, 50 simulated devices and 3 real agents, two rollouts.

After `edgeloop run` registered a candidate, this starts the fleet controller as its own process (as
`edgeloop fleet serve` would), runs 50 simulated devices in two hardware classes and three real
`edgeloop agent` processes against it, makes the candidate the fleet's first release, then stops all
labels: a retrained copy goes out through staged canaries judged by agreement with the stable model
(compared in shadow on the devices) and succeeds, and a deliberately regressed version (wrong on 60%
of inputs) is rolled back automatically on the agreement gate, with the registry following. Last, 20%
of the devices see drifted inputs: their on-device detectors report it, the controller raises an
input-drift alert and runs its playbook. The controller stays up afterwards (``keep_running``) with
the demo's devices retired, so the dashboard shows all of it and a user's own devices start clean;
the next demo, or ``edgeloop fleet demo --stop``, stops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel

from edgeloop.core import fleet_address
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.settings import Settings
from fleet.admin import AdminClient
from fleet.shared.admin_protocol import Alert, PlaybookRun
from fleet.shared.drift import DetectorPolicy, DriftReference
from fleet.shared.ports import free_port
from fleet.simulate import Simulation, make_regressed_variant
from fleet.simulate.agents import RealAgents
from fleet.simulate.faults import FaultPlan, FaultWindow
from fleet.simulate.fleet import load_field
from flows.rollout import RolloutOutcome
from registry import tags as tag
from registry.outcomes import production_version, promote
from registry.tracking import connect

if TYPE_CHECKING:
    from flows.run_summary import RunSummary

DEVICES = 50
DEMO = "edgeloop fleet demo"
CLASSES = {"host-cpu": 0.7, "edge-small": 0.3}
DRIFT_SHARE = 0.2
REAL_AGENTS = 3
DETECTOR = DetectorPolicy(min_rows=1500)
"""Devices judge input drift on 1,500 rows: the demo's devices resample a field split of under 200
rows, whose own sampling error puts some 500-row windows above the PSI threshold with no drift at
all (1.3% of 500-row windows in a measurement, 0.3% at 1,000 rows, none of 300 at 2,000)."""
"""``edgeloop agent`` processes among the demo's devices (the rest are simulated)."""
FEEDBACK_RATE = 0.6
"""Share of predictions whose label comes back, outside the label-free canaries."""
DRIFT_WAIT_S = 180.0
DEMO_POLICY = {
    "stages": [
        {"fraction": f, "bake_s": 2, "deadline_s": 45, "min_confirmed_fraction": 0.8,
         "min_inferences": 40, "min_feedback": 0}
        for f in (0.2, 0.5, 1.0)
    ],
    "gates": {"max_error_rate": 0.05, "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 20},
              "agreement": {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 100}},
    "shadow": {"rate": 0.5, "cpu_budget": 0.5},
    "required_gates": ["p95_latency", "error_rate", "agreement"],
    "on_inconclusive": "fail",
    "poll_s": 0.5,
    "deadline_s": 300,
}  # fmt: skip
"""The demo's canaries: a fleet that sends no labels, judged by agreement with the stable model
(devices compare the two in shadow on half their rows), latency and errors."""


def demo_folder(settings: Settings) -> Path:
    return settings.home / "fleet-demo"


def stop_demo_controller(settings: Settings) -> bool:
    """Stop a controller an earlier demo left running; True when there was one."""
    pidfile = demo_folder(settings) / "controller.pid"
    fleet_address.forget(settings, DEMO)
    if not pidfile.is_file():
        return False
    pid = int(pidfile.read_text().split()[0])
    pidfile.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):  # it may end between the last look and now
        os.killpg(pid, signal.SIGKILL)
    return True


@contextmanager
def controller_process(
    settings: Settings, admin_token: str, *, keep_running: bool = False
) -> Iterator[str]:
    """The controller in its own process on a fresh SQLite database, its artifact store beside it;
    yields its URL.

    With ``keep_running`` it outlives the demo (its own process group, pid in ``controller.pid``).
    """
    folder = demo_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stop_demo_controller(settings)
    (folder / "fleet.db").unlink(missing_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        EDGELOOP_FLEET_DB_URL=f"sqlite:///{(folder / 'fleet.db').resolve()}",
        EDGELOOP_FLEET_ARTIFACT_DIR=str((folder / "artifact-store").resolve()),
        EDGELOOP_FLEET_ADMIN_TOKEN=admin_token,
        EDGELOOP_FLEET_PUBLIC_KEY_PATH=str(
            (settings.keys_dir / "signing-ed25519.pub.pem").resolve()
        ),
        EDGELOOP_FLEET_RECONCILE_S="0.5",
        EDGELOOP_FLEET_PORT=str(port),
        EDGELOOP_FLEET_OBSERVE_PERIOD_S="1",
        EDGELOOP_FLEET_OBSERVE_WINDOW_S="10",
        EDGELOOP_FLEET_OBSERVE_PLAYBOOKS_PATH=str(settings.params_file.parent / "playbooks.yaml"),
    )
    log = (folder / "controller.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.controller.api.serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    kept = False
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EdgeloopError(
                    "the fleet controller did not start", hint=f"see {folder / 'controller.log'}"
                )
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
        if keep_running:
            (folder / "controller.pid").write_text(f"{proc.pid} {url}\n")
            kept = True
    finally:
        if not kept:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@contextmanager
def simulated_fleet(
    settings: Settings, url: str, admin_token: str, reference: DriftReference | None = None
) -> Iterator[Simulation]:
    """The demo's devices; ``DRIFT_SHARE`` of them are chosen for drift, which starts later."""
    x, y = load_field(settings.splits_dir / "field.parquet")
    later = FaultPlan(drift=FaultWindow(DRIFT_SHARE, start_s=math.inf))
    sim = Simulation(
        url, admin_token, devices=DEVICES, classes=CLASSES, field_x=x, field_y=y,
        feedback_rate=FEEDBACK_RATE, report_interval_s=0.5, rows_per_report=40, seed=7,
        faults=later, drift_reference=reference, detector_policy=DETECTOR,
    )  # fmt: skip
    with sim.in_background():
        yield sim


@contextmanager
def real_agents(settings: Settings, url: str, admin_token: str) -> Iterator[RealAgents]:
    """``REAL_AGENTS`` ``edgeloop agent`` processes of host-cpu beside the simulated devices, with
    traffic on their local /predict; their state and logs are under the demo's folder."""
    x, _ = load_field(settings.splits_dir / "field.parquet")
    folder = demo_folder(settings) / "agents"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh controller: the agents enrol afresh
    admin = AdminClient(url, admin_token)
    try:
        token = admin.enrolment_token(uses=REAL_AGENTS).token
    finally:
        admin.close()
    with RealAgents(url, token, x, folder, count=REAL_AGENTS) as agents:
        yield agents


def _retire(url: str, admin_token: str, device_ids: list[str]) -> list[str]:
    """Retire the demo's devices (they stopped with it) on the controller that keeps running."""
    admin = AdminClient(url, admin_token)
    try:
        return admin.retire_devices(device_ids).retired
    finally:
        admin.close()


def _labels_sent(sim: Simulation) -> int:
    """Labelled predictions the simulated devices have produced so far (each becomes a field
    sample, sent or waiting in an outbox)."""
    devices = sim.result.devices.values()
    return sum(
        d.field_samples_sent + d.field_samples_pending + d.field_samples_dropped for d in devices
    )


def drift_reference(client: Any, model: str, version: str) -> DriftReference | None:
    """The version's drift reference (logged at registration), or None when it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(model, version).run_id
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="golden/drift-reference.json",
            tracking_uri=client.tracking_uri,
        )  # fmt: skip
    except (MlflowException, OSError):
        return None
    return DriftReference.load(Path(path))


class DriftRemediation(BaseModel):
    """The demo's drift: the input-drift alert, its finished playbook runs, and how long it took."""

    alert: Alert
    playbook_runs: list[PlaybookRun]
    seconds_to_alert: float


def drift_and_remediate(sim: Simulation, url: str, token: str) -> DriftRemediation:
    """Start the drift fault now; wait for the input-drift alert and its playbook runs."""
    sim.faults = dataclasses.replace(sim.faults, drift=FaultWindow(DRIFT_SHARE, start_s=sim.now()))
    admin = AdminClient(url, token)
    started = time.monotonic()
    try:
        while time.monotonic() - started < DRIFT_WAIT_S:
            alerts = [a for a in admin.alerts("all") if a.kind == "input_drift"]
            runs = [r for r in admin.playbook_runs() if alerts and r.alert_id == alerts[0].id]
            if alerts and runs and all(r.status != "pending" for r in runs):
                return DriftRemediation(
                    alert=alerts[0],
                    playbook_runs=runs,
                    seconds_to_alert=round(time.monotonic() - started, 1),
                )
            time.sleep(1)
    finally:
        admin.close()
    raise EdgeloopError(
        f"no input-drift alert with a finished playbook run within {DRIFT_WAIT_S:.0f} s",
        hint=f"see {url}/dashboard and the controller log",
    )


class RealAgentRun(BaseModel):
    """What the demo's real agent processes ended on."""

    versions: dict[str, str | None]
    """Each agent's version, from its own ``/healthz`` (None: nothing, or not running)."""
    predict_calls_served: dict[str, int]


class FleetDemoResult(BaseModel):
    """What the fleet part of the demo did: its rollouts, the drift it caught, where the fleet ended."""

    admin_token_file: str
    controller: str
    devices: int
    classes: dict[str, float]
    rollouts: list[RolloutOutcome]
    labels_during_canaries: int
    """Labels the simulated devices sent while the canaries were judged (0: judged by agreement)."""
    drift: DriftRemediation | None
    fleet_versions: dict[str, int]
    """Simulated devices by version."""
    real_agents: RealAgentRun
    production: str | None


def run_fleet_demo(
    settings: Settings,
    candidate: str,
    register: Callable[[Path, str], RunSummary],
    rollout: Callable[..., RolloutOutcome],
    say: Callable[[str], None],
    *,
    keep_running: bool = False,
) -> FleetDemoResult:
    """Both rollouts, then drift; ``register(path, model)`` and ``rollout(...)`` are the flows."""
    from edgeloop.core.params import load_params

    params = load_params(settings.params_file)
    model = params.model_name
    client = connect(settings.tracking_uri)
    token = secrets.token_urlsafe(24)
    demo_folder(settings).mkdir(parents=True, exist_ok=True)
    token_file = demo_folder(settings) / "admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    work = settings.work_dir / "fleet-demo"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = settings.work_dir / "variants" / "fp32.onnx"
    outcomes: list[RolloutOutcome] = []
    reference = drift_reference(client, model, candidate)
    with (
        controller_process(settings, token, keep_running=keep_running) as url,
        simulated_fleet(settings, url, token, reference) as sim,
        real_agents(settings, url, token) as agents,
    ):
        fleet_address.record(settings, url, token_file, DEMO)
        say(
            f"fleet controller {url}; {DEVICES} simulated devices ({CLASSES}) and "
            f"{REAL_AGENTS} real agent processes (host-cpu)"
        )
        stable = production_version(client, model)
        if stable is None:
            promote(client, model, candidate)
            outcomes.append(
                rollout(
                    model=model, version=candidate, stable_version=None, admin_token=token, url=url
                )
            )
            stable = candidate
        else:  # a fresh controller: the current production version is the fleet's baseline
            outcomes.append(
                rollout(
                    model=model, version=stable, stable_version=None, admin_token=token, url=url
                )
            )
        say(
            f"v{stable} runs on the fleet; a retrained copy goes out through staged canaries, "
            "and the devices stop sending labels: the canaries are judged by agreement with "
            f"v{stable}, which the devices run in shadow"
        )
        labelled_before = _labels_sent(sim)
        sim.feedback_rate = 0.0
        retrained = work / "retrained.onnx"
        retrained.write_bytes(fp32.read_bytes())
        new = register(retrained, model).version
        promote(client, model, new)
        outcomes.append(
            rollout(model=model, version=new, stable_version=stable, admin_token=token, url=url)
        )
        say(f"v{new}: {outcomes[-1].outcome}; now a regressed version (wrong on 60% of inputs)")
        bad_file = make_regressed_variant(fp32, work / "regressed.onnx", "accuracy", share=0.6)
        bad = register(bad_file, model).version
        # it failed its gates: forced
        client.set_model_version_tag(model, bad, tag.PROMOTE_FORCE, "true")
        promote(client, model, bad)
        current = new if outcomes[-1].outcome == "succeeded" else stable
        outcomes.append(
            rollout(model=model, version=bad, stable_version=current, admin_token=token, url=url)
        )
        labels_during_canaries = _labels_sent(sim) - labelled_before
        sim.feedback_rate = FEEDBACK_RATE
        drift: DriftRemediation | None = None
        if reference is not None:
            say(f"input drift on {DRIFT_SHARE:.0%} of the devices; waiting for the alert")
            drift = drift_and_remediate(sim, url, token)
            actions = ", ".join(f"{r.action} {r.status}" for r in drift.playbook_runs)
            say(f"alert after {drift.seconds_to_alert} s: {drift.alert.reason}; "
                f"playbook: {actions}")  # fmt: skip
        fleet = sim.result.versions()
        ran = agents.versions()
        served = {a.device_id: a.served for a in agents.agents}
        say(f"real agents run {ran}; /predict calls served {served}")
        demo_devices = [*sim.result.devices, *(a.device_id for a in agents.agents)]
    if not keep_running:
        fleet_address.forget(settings, DEMO)  # its controller stopped with the demo
    else:
        retired = _retire(url, token, demo_devices)
        say(
            f"the demo's {len(retired)} devices stopped with it and were retired: a rollout "
            "you start now targets only the devices you enrol"
        )
    return FleetDemoResult(
        admin_token_file=str(demo_folder(settings) / "admin-token"),
        controller=url,
        devices=DEVICES,
        classes=CLASSES,
        rollouts=outcomes,
        labels_during_canaries=labels_during_canaries,
        drift=drift,
        fleet_versions={str(k): v for k, v in fleet.items()},
        real_agents=RealAgentRun(versions=ran, predict_calls_served=served),
        production=production_version(client, model),
    )
