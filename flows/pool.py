"""Runner dispatch over Prefect work pools: one pool ``hw-<profile>`` per hardware profile.

The validate step submits one flow run per (profile, variant) to the profile's pool and waits with a
deadline. A run that no worker picked up by then is cancelled and the profile is ``unavailable``,
which is never a pass. The suite's reports come back through the MLflow run.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgeloop.errors import HardwareCheckError
from fleet.agent.profile import HardwareProfile
from flows.hardware import ProfileResult, read_result
from flows.runner_flow import artifact_folder, validate_on_runner

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun

FLOW_NAME = "hardware-validate"
SOURCE = Path(__file__).resolve().parents[1]  # the checkout the runner's worker runs from


def pool_name(profile: str) -> str:
    return f"hw-{profile}"


def ensure_deployment(profile: str) -> str:
    """Create the profile's process work pool and its deployment if missing; return its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    pool = pool_name(profile)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployable = cast(
        "Flow[..., Any]",
        validate_on_runner.from_source(
            source=str(SOURCE), entrypoint="flows/runner_flow.py:validate_on_runner"
        ),
    )
    deployable.deploy(
        name=pool, work_pool_name=pool, build=False, push=False, print_next_steps=False
    )
    return f"{FLOW_NAME}/{pool}"


@dataclass
class PoolRunner:
    """Runs the suite on the profile's work pool; needs a Prefect server (PREFECT_API_URL)."""

    tracking_uri: str
    run_id: str
    deadline_s: float
    server: bool = True

    def run(self, variant: str, profile: HardwareProfile) -> ProfileResult | None:
        if not self.server:
            return None
        from prefect.deployments import run_deployment
        from prefect.states import Cancelled

        deployment = ensure_deployment(profile.name)
        started = time.monotonic()
        flow_run = cast(
            "FlowRun",
            run_deployment(
                deployment,
                parameters={
                    "tracking_uri": self.tracking_uri,
                    "run_id": self.run_id,
                    "variant": variant,
                    "profile": profile.name,
                },
                timeout=self.deadline_s,
                poll_interval=1,
                as_subflow=False,
            ),
        )
        state = flow_run.state
        if state is None or not state.is_final():
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    flow_run.id, Cancelled(message="deadline passed"), force=True
                )
            return None
        if not state.is_completed():
            raise HardwareCheckError(
                f"the runner for profile {profile.name!r} failed on {variant}: {state.message}",
                hint=f"see flow run {flow_run.name} in Prefect",
            )
        return self._fetch(profile.name, variant, time.monotonic() - started)

    def _fetch(self, profile: str, variant: str, seconds: float) -> ProfileResult:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        folder = artifact_folder(profile, variant)
        local = Path(tempfile.mkdtemp(prefix="edgeloop-hw-"))
        path = Path(
            mlflow.artifacts.download_artifacts(
                run_id=self.run_id, artifact_path=folder, dst_path=str(local)
            )
        )
        return read_result(profile, path / "report.json", path / "junit.xml")
