"""The loop spread over hosts: every part in a working directory of its own, each handed only URLs
and the credentials an operator hands it, none able to read another's files.

- **build host**: the session's trained project (copied), where `edgeloop register` and
  `edgeloop promote` run;
- **MLflow** and **Prefect**: the session's `mlflow server` (served artifacts) and `prefect server`,
  both on PostgreSQL, each in its own folder;
- **a hardware runner**: `edgeloop runner start --profile P` in an empty folder, with no path of the
  checkout and the training stack not importable (``test_remote_worker``'s device);
- **two controller replicas** (``python -m fleet.controller.api.serve``) on one PostgreSQL database,
  artifacts in an S3 bucket (moto's server), behind a load balancer (``tcp_proxy.Balancer``);
  each has its own folder, with its own copy of the registry's public key;
- **the registry follower** (`edgeloop registry follow`) with its own home;
- **four real agents** (``edgeloop agent`` processes, no labels), through the load balancer.

v1 and v2 (the same network) pass the pool profile's gate on the runner; v3 is a regressed copy,
forced past its failed gates. v1 becomes the baseline, v2 goes through a canary to success, and v3's
canary is rolled back automatically on the agreement gate while the replica leading the background
passes is SIGKILLed: the other replica takes over and decides the rollback, `edgeloop promote`
follows the rollout across the failover, and MLflow ends with production on v2 and the outcome tags
of both rollouts, written by the follower (which applies each outcome once) as well as the flow.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from s3_server import moto_s3
from servers import ADMIN, Controller, stop_group, wait_until
from tcp_proxy import Balancer
from test_registry_follower import Follower
from test_remote_worker import device_env
from tolerant_profiles import load_tolerant_profiles

from fleet.simulate import make_regressed_variant
from fleet.simulate.agents import RealAgents
from fleet.simulate.fleet import load_field
from registry.follower import FollowerStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Project = Any  # tests/integration/conftest.py: Project

ROLLOUT = {
    "stages": [
        {"fraction": f, "bake_s": 2, "deadline_s": 120, "min_confirmed_fraction": 0.8,
         "min_inferences": 20, "min_feedback": 0}
        for f in (0.5, 1.0)
    ],
    "gates": {
        "max_error_rate": 0.05,
        "accuracy": {"delta": 0.05, "alpha": 0.05, "min_samples": 20},
        "agreement": {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 100},
    },
    "shadow": {"rate": 0.5, "cpu_budget": 0.5},
    "required_gates": ["p95_latency", "error_rate", "agreement"],  # no labels on this fleet
    "poll_s": 0.5,
    "deadline_s": 300,
}  # fmt: skip


def leads(ctl: Controller) -> bool:
    return bool(httpx.get(f"{ctl.base}/v1/health", timeout=10).json()["leader"])


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def assert_sees_none_of(pids: list[int], others: list[Path], what: str) -> None:
    """No argument, environment value or working directory of the processes ``pids`` (and their
    children) names any of the folders ``others``."""
    for pid in pids:
        for proc in process_tree(pid):
            try:
                said = [*proc.cmdline(), *proc.environ().values(), proc.cwd()]
            except psutil.NoSuchProcess:
                continue
            for folder in others:
                named = [s for s in said if str(folder) in s]
                assert not named, f"{what} (pid {proc.pid}) names {folder}: {named}"


@pytest.fixture
def build_host(
    registered: Project, prefect_postgresql: str, mlflow_postgresql: str, tmp_path: Path
) -> Iterator[tuple[Project, str]]:
    """The copied project as the build host, on the session's servers; a pool profile of its own."""
    profile = f"mh-{uuid.uuid4().hex[:6]}"  # its pool hw-<profile> is this test's alone
    profiles = registered.root / "hardware-profiles"
    profiles.mkdir()
    spec = yaml.safe_load((load_tolerant_profiles() / "host-cpu.yaml").read_text())
    spec.update(name=profile, runner="pool", variant="auto", description="a device")
    (profiles / f"{profile}.yaml").write_text(yaml.safe_dump(spec))
    registered.extra_env.update(
        PREFECT_API_URL=prefect_postgresql,
        MLFLOW_TRACKING_URI=mlflow_postgresql,
        EDGELOOP_PROFILES_DIR=str(profiles),
        EDGELOOP_FLEET_ADMIN_TOKEN=ADMIN,
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
    )
    yield registered, profile


def test_a_canary_succeeds_and_another_rolls_back_across_hosts_while_the_leader_is_killed(
    build_host: tuple[Project, str], postgres_db: str, prefect_postgresql: str, tmp_path: Path
) -> None:
    project, profile = build_host
    model = f"hosts-{uuid.uuid4().hex[:8]}"
    folders = {
        name: tmp_path / name for name in ("replica-0", "replica-1", "follower", "runner", "agents")
    }
    for folder in folders.values():
        folder.mkdir()
    folders["build host"] = project.root
    public_key = project.home / "keys" / "signing-ed25519.pub.pem"

    with ExitStack() as stack:
        s3 = stack.enter_context(moto_s3(tmp_path))
        replicas = []
        for i in range(2):
            root = folders[f"replica-{i}"]
            shutil.copy(public_key, root / "registry.pub.pem")  # the operator hands it over
            ctl = Controller(root, postgres_db, root / "registry.pub.pem", env=s3.controller_env())
            replicas.append(ctl)
            stack.callback(ctl.kill, signal.SIGTERM)
        for ctl in replicas:
            ctl.start()
        balancer = stack.enter_context(Balancer([c.base for c in replicas]))
        project.set_params(
            model_name=model,
            gates={"profiles": [profile], "runner_deadline_s": 300},
            rollout={**ROLLOUT, "controller_url": balancer.url},
        )

        runner_log = folders["runner"] / "worker.log"
        with runner_log.open("w") as log:
            runner = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.cli", "runner", "start", "--profile", profile],
                cwd=folders["runner"], env=device_env(project, prefect_postgresql, folders["runner"]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        stack.callback(stop_group, runner)
        follower = Follower(folders["follower"], balancer.url, project.env()["MLFLOW_TRACKING_URI"])
        follower.start()
        assert follower.proc is not None
        stack.callback(stop_group, follower.proc)

        # v1 and v2: the trained network, through the runner's gate; v3 regressed, forced.
        fp32 = project.home / "work" / "variants" / "fp32.onnx"
        for _ in ("1", "2"):
            done = project.edgeloop("register", str(fp32), "--name", model, "--dataset", "sklearn-digits", timeout=600)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr + runner_log.read_text()[-3000:]
        regressed = make_regressed_variant(fp32, project.root / "v3.onnx", "accuracy", share=0.6)
        done = project.edgeloop("register", str(regressed), "--name", model, "--dataset", "sklearn-digits", timeout=600)  # fmt: skip
        assert done.returncode == 3, done.stdout + done.stderr  # its gates failed: no candidate
        client = project.client()
        client.set_model_version_tag(model, "3", "edgeloop.promote.force", "true")
        for version in ("1", "2"):
            tags = client.get_model_version(model, version).tags
            assert tags[f"edgeloop.hw.{profile}.status"] == "passed", tags

        x, _ = load_field(project.root / "data" / "splits" / "field.parquet")
        token = replicas[0].token(profile, uses=4)
        agents = stack.enter_context(
            RealAgents(balancer.url, token, x, folders["agents"], count=4, hardware_class=profile)
        )
        everyone = [a.device_id for a in agents.agents]
        assert agents.process_ids(), "no agent runs"

        # Nothing of one part names the folder of another.
        parts = {
            "replica-0": [replicas[0].proc.pid], "replica-1": [replicas[1].proc.pid],  # type: ignore[union-attr]
            "follower": [follower.proc.pid], "runner": [runner.pid],
            "agents": agents.process_ids(),
        }  # fmt: skip
        for name, pids in parts.items():
            others = [f for n, f in folders.items() if n != name]
            assert_sees_none_of(pids, others, name)

        first = project.edgeloop("promote", model, "1")
        assert first.returncode == 0 and "first release" in first.stdout, (
            first.stdout + first.stderr
        )
        assert agents.wait_for(dict.fromkeys(everyone, "1")) == dict.fromkeys(everyone, "1")
        second = project.edgeloop("promote", model, "2")
        assert second.returncode == 0, second.stdout + second.stderr
        assert agents.wait_for(dict.fromkeys(everyone, "2")) == dict.fromkeys(everyone, "2")

        # v3: no traffic (so no verdict) until the leader is gone; then the other replica decides.
        agents.hold_traffic()
        promote_log = tmp_path / "promote-3.log"
        with promote_log.open("w") as log:
            third = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.cli", "promote", model, "3"],
                cwd=project.root, env=project.env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        stack.callback(stop_group, third)
        rollout = wait_until(
            "the rollout of v3 to progress",
            lambda: next(
                (r for r in replicas[1].admin("GET", "/v1/rollouts").json()
                 if r["model"] == model and r["version"] == "3" and r["phase"] == "progressing"),
                None,
            ),
            timeout=120,
        )  # fmt: skip
        canaries = wait_until(
            "the canaries to load v3",
            lambda: [d for d, v in agents.versions().items() if v == "3"] or None,
            timeout=60,
        )
        (leader,) = [c for c in replicas if leads(c)]
        (other,) = [c for c in replicas if c is not leader]
        leader.kill(signal.SIGKILL)
        assert other.status(rollout["rollout_id"])["phase"] == "progressing"  # undecided yet
        agents.resume_traffic()
        wait_until("the other replica to lead", lambda: leads(other), timeout=15)
        third.wait(timeout=300)
        said = promote_log.read_text()
        assert third.returncode == 4, said
        assert "production is back on v2" in said, said
        final = other.status(rollout["rollout_id"])
        assert final["phase"] == "rolled_back", final
        assert {c["gate"] for c in final["status"]["causes"]} == {"agreement"}, final
        assert canaries and agents.wait_for(dict.fromkeys(everyone, "2")) == dict.fromkeys(
            everyone, "2"
        )
        leader.start()  # its supervisor starts it again: it serves, and the other one still leads
        assert not leads(leader) and leads(other)

        feed = other.admin("GET", "/v1/outcomes").json()["outcomes"]
        mine = [(o["version"], o["status"]) for o in feed if o["model"] == model]
        assert mine == [("2", "succeeded"), ("3", "rolled_back")], feed
        state = wait_until(
            "the follower to apply both outcomes",
            lambda: (s := follower.state()).cursor >= max(o["id"] for o in feed) and s,
            timeout=60,
        )
        assert state.error is None, state

    applied = FollowerStore(follower.home / "registry-follower.db")
    try:
        statuses = [a.status for a in applied.applied()]
    finally:
        applied.close()
    assert statuses.count("succeeded") == 1 and statuses.count("rolled_back") == 1, statuses
    client = project.client()
    aliases = {k: str(v) for k, v in client.get_registered_model(model).aliases.items()}
    assert aliases["production"] == "2", aliases
    tags = {v: client.get_model_version(model, v).tags for v in ("1", "2", "3")}
    assert tags["1"]["edgeloop.rollout.status"] == "succeeded"
    assert "first release" in tags["1"]["edgeloop.rollout.reason"]
    assert tags["2"]["edgeloop.rollout.status"] == "succeeded"
    assert tags["3"]["edgeloop.rollout.status"] == "rolled_back"
    assert "agreement" in tags["3"]["edgeloop.rollout.reason"], tags["3"]
    assert balancer.connections[0] > 0 and balancer.connections[1] > 0, balancer.connections
    assert "not in edgeloop[runner]" not in runner_log.read_text()
