"""Runner dispatch through Prefect work pools, against a real `prefect server` and worker.

The server (the session's) runs on PostgreSQL; the worker is started with `edgeloop runner start --profile P`, the way
a device would start it. One pool profile has a runner and passes; the other has none and must come
back ``unavailable`` by its deadline, which keeps the version from becoming ``candidate``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import stop_group
from tolerant_profiles import load_tolerant_profiles
from training_params import FAST_PARAMS

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


def pool_profile(folder: Path, name: str) -> None:
    profile = yaml.safe_load((load_tolerant_profiles() / "host-cpu.yaml").read_text())
    profile.update(
        name=name,
        runner="pool",
        variant="auto",
        description=f"{name}: a device behind pool hw-{name}",
    )
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(profile))


@pytest.fixture
def project(bare_project: Project, prefect_postgresql: str) -> Project:
    """A project on the session's Prefect server on PostgreSQL (pools hw-pool-cpu and hw-ghost are
    this test's), and on no other: not the SQLite one the shared ``project`` fixture starts."""
    bare_project.extra_env["PREFECT_API_URL"] = prefect_postgresql
    return bare_project


def test_pool_profile_runs_on_a_worker_and_a_silent_pool_is_unavailable(
    project: Project, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    pool_profile(profiles, "pool-cpu")
    pool_profile(profiles, "ghost")
    project.extra_env.update(EDGELOOP_PROFILES_DIR=str(profiles))
    project.set_params(
        training={"epochs": 3},
        **FAST_PARAMS,
        gates={"profiles": ["pool-cpu", "ghost"], "runner_deadline_s": 35},
    )
    worker_log = tmp_path / "worker.log"
    # The worker asks for flow runs every second, not every 10 s (Prefect's default, which a flow
    # run of pool-cpu would wait out for each variant it tries), as `edgeloop serve`'s workers do.
    env = {**project.env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "runner", "start", "--profile", "pool-cpu"],
            cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            result = project.edgeloop("run", timeout=900)
        finally:
            # the run is over: a worker that hangs in its shutdown (it sometimes does) gets 5 s,
            # not 30, before SIGKILL; its stopping is not under test
            stop_group(worker, timeout=5)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output + worker_log.read_text()[-3000:]
    version = project.client().get_model_version("digits-classifier", "1")
    assert "gate(s) failed: hw.ghost" in result.stderr, (
        version.tags,
        worker_log.read_text()[-3000:],
    )
    assert version.tags["edgeloop.hw.pool-cpu.status"] == "passed", worker_log.read_text()[-3000:]
    assert version.tags["edgeloop.hw.pool-cpu.variant"] in {
        "pruned-int8",
        "int8-dynamic",
        "int8-static",
        "fp32",
    }
    assert version.tags["edgeloop.hw.ghost.status"] == "unavailable"
    assert "deadline" in version.tags["edgeloop.hw.ghost.reason"]
    assert project.client().get_registered_model("digits-classifier").aliases == {}
    assert "Worker" in worker_log.read_text() or "worker" in worker_log.read_text()
