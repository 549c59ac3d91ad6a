"""Runner dispatch over Prefect work pools: one pool ``hw-<profile>`` per hardware profile.

The validate step submits one flow run per (profile, variant) to the profile's pool and waits with a
deadline. A run that no worker picked up by then is cancelled and the profile is ``unavailable``,
which is never a pass. The suite's reports come back through the MLflow run.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile
from flows.hardware import ProfileResult, read_result
from flows.runner_flow import artifact_folder

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

OPS_POOL = "edgeloop-ops"  # the process pool of the rollout and scheduled-retrain deployments
SOURCE = Path(__file__).resolve().parents[1]  # the checkout the runner's worker runs from


def pool_name(profile: str) -> str:
    return f"hw-{profile}"


def ensure_process_pools(names: Iterable[str]) -> None:
    """Create each process work pool of ``names`` that does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_from_source(
    entrypoint: str,
    targets: Iterable[tuple[str, str]],
    source: str | None = None,
    **options: Any,
) -> list[str]:
    """Deploy the flow at ``entrypoint`` of ``source`` (default: this checkout) once per
    (deployment name, work pool) of ``targets``; returns the ``flow/deployment`` names."""
    from prefect import Flow

    deployable = cast(
        "Flow[..., Any]", Flow.from_source(source=source or str(SOURCE), entrypoint=entrypoint)
    )
    names = []
    with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints a table per deployment
        for name, pool in targets:
            deployable.deploy(
                name=name,
                work_pool_name=pool,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
                **options,
            )
            names.append(f"{deployable.name}/{name}")
    return names


def ensure_deployment(profile: str) -> str:
    """Create the profile's process work pool and its deployment if missing; return its name."""
    pool = pool_name(profile)
    ensure_process_pools([pool])
    [name] = deploy_from_source("flows/runner_flow.py:validate_on_runner", [(pool, pool)])
    return name


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
