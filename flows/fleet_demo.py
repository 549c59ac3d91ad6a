"""The fleet part of `make demo`: a real controller, 50 simulated devices, two rollouts.

After `edgeloop run` registered a candidate, this starts the fleet controller as its own process (as
`edgeloop fleet serve` would), runs 50 simulated devices in two hardware classes against it, makes the
candidate the fleet's first release, rolls a retrained copy out through staged canaries (it succeeds),
then rolls out a deliberately regressed version (worse on the field data): its accuracy gate fails
and the rollout is rolled back automatically, with the registry following.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from edgeloop.errors import EdgeloopError
from edgeloop.settings import Settings
from fleet.simulate import Simulation, make_regressed_variant
from fleet.simulate.fleet import load_field
from registry.outcomes import FORCE_TAG, production_version, promote
from registry.tracking import connect

DEVICES = 50
CLASSES = {"host-cpu": 0.7, "edge-small": 0.3}
DEMO_POLICY = {
    "stages": [
        {"fraction": f, "bake_s": 2, "deadline_s": 45, "min_confirmed_fraction": 0.8,
         "min_inferences": 40, "min_feedback": 20}
        for f in (0.2, 0.5, 1.0)
    ],
    "gates": {"max_error_rate": 0.05, "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 20}},
    "on_silence": "fail",
    "poll_s": 0.5,
    "deadline_s": 300,
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def controller_process(settings: Settings, admin_token: str) -> Iterator[str]:
    """The controller in its own process on a fresh SQLite database; yields its URL."""
    folder = settings.home / "fleet-demo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fleet.db").unlink(missing_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "EDGELOOP_FLEET_DB_URL": f"sqlite:///{(folder / 'fleet.db').resolve()}",
        "EDGELOOP_FLEET_ADMIN_TOKEN": admin_token,
        "EDGELOOP_FLEET_PUBLIC_KEY_PATH": str(
            (settings.keys_dir / "signing-ed25519.pub.pem").resolve()
        ),
        "EDGELOOP_FLEET_RECONCILE_S": "0.5",
        "EDGELOOP_FLEET_PORT": str(port),
    }
    log = (folder / "controller.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.controller.serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def simulated_fleet(settings: Settings, url: str, admin_token: str) -> Iterator[Simulation]:
    x, y = load_field(settings.splits_dir / "field.parquet")
    sim = Simulation(
        url, admin_token, devices=DEVICES, classes=CLASSES, field_x=x, field_y=y,
        feedback_rate=0.6, report_interval_s=0.5, seed=7,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=lambda: sim.run_sync(until=stop.is_set), daemon=True)
    thread.start()
    try:
        yield sim
    finally:
        stop.set()
        thread.join(timeout=40)
        sim.close()


def run_fleet_demo(
    settings: Settings,
    candidate: str,
    register: Callable[[Path, str], dict[str, Any]],
    rollout: Callable[..., dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Both rollouts; ``register(path, model)`` and ``rollout(...)`` are the flows that do them."""
    from edgeloop.params import load_params

    params = load_params(settings.params_file)
    model = params.model_name
    client = connect(settings.tracking_uri)
    token = secrets.token_urlsafe(24)
    work = settings.work_dir / "fleet-demo"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = settings.work_dir / "variants" / "fp32.onnx"
    outcomes: list[dict[str, Any]] = []
    with controller_process(settings, token) as url, simulated_fleet(settings, url, token) as sim:
        say(f"fleet controller {url}; {DEVICES} simulated devices ({CLASSES})")
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
        say(f"v{stable} runs on the fleet; a retrained copy goes out through staged canaries")
        retrained = work / "retrained.onnx"
        retrained.write_bytes(fp32.read_bytes())
        new = register(retrained, model)["version"]
        promote(client, model, new)
        outcomes.append(
            rollout(model=model, version=new, stable_version=stable, admin_token=token, url=url)
        )
        say(f"v{new}: {outcomes[-1]['outcome']}; now a regressed version (wrong on 60% of inputs)")
        bad_file = make_regressed_variant(fp32, work / "regressed.onnx", "accuracy", share=0.6)
        bad = register(bad_file, model)["version"]
        client.set_model_version_tag(model, bad, FORCE_TAG, "true")  # it failed its gates: forced
        promote(client, model, bad)
        current = new if outcomes[-1]["outcome"] == "succeeded" else stable
        outcomes.append(
            rollout(model=model, version=bad, stable_version=current, admin_token=token, url=url)
        )
        fleet = sim.result.versions()
    return {
        "controller": url,
        "devices": DEVICES,
        "classes": CLASSES,
        "rollouts": outcomes,
        "fleet_versions": {str(k): v for k, v in fleet.items()},
        "production": production_version(client, model),
    }
