"""Runner dispatch over Prefect work pools: one pool ``hw-<profile>`` per hardware profile.

The validate step submits one flow run per (profile, variant) to the profile's pool and waits with a
deadline. A run that no worker picked up by then is cancelled and the profile is ``unavailable``,
which is never a pass. The suite's reports come back through the MLflow run.

The deployments (hardware pools, training pools, the ops pool) are made by :func:`deploy_flow`,
whose ``source`` (:mod:`edgeloop.core.flow_source`) says where a worker finds the flow's code: its
own installed edgeloop by default, a git URL, or this checkout on this host.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgeloop.core.errors import HardwareCheckError
from edgeloop.core.flow_source import parse_flow_source
from fleet.shared.profile import HardwareProfile
from flows.hardware import ProfileResult, read_result
from flows.runner_flow import SUITE_FOLDER, artifact_folder, suite_digest

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

OPS_POOL = "edgeloop-ops"  # the process pool of the rollout and scheduled-retrain deployments
CHECKOUT = Path(__file__).resolve().parents[1]  # the folder holding flows/: the `checkout` source
RUNNER_FLOW = "flows.runner_flow.validate_on_runner"


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


def deploy_flow(
    flow_path: str,
    targets: Iterable[tuple[str, str]],
    source: str | None = None,
    **options: Any,
) -> list[str]:
    """Deploy the flow at ``flow_path`` (``package.module.function``) once per (deployment name,
    work pool) of ``targets``, its code from ``source`` (a :data:`edgeloop.core.flow_source.
    FlowSource`); returns the ``flow/deployment`` names.

    By default the deployment names the flow by module path and has no pull step: a worker imports
    it from its own installed edgeloop and needs nothing from this host's disk."""
    deployable = flow_to_deploy(flow_path, source)
    names = []
    for name, pool in targets:
        deployment_for(deployable, flow_path, name, pool, source, **options).apply()
        names.append(f"{deployable.name}/{name}")
    return names


def flow_to_deploy(flow_path: str, source: str | None) -> Flow[..., Any]:
    """The flow object for ``flow_path``: imported here for the package, loaded from the source
    (a clone of the git URL, or this checkout) otherwise."""
    from prefect import Flow

    code = parse_flow_source(source)
    module, _, function = flow_path.rpartition(".")
    if code.kind == "package":
        flow = getattr(importlib.import_module(module), function)
        if not isinstance(flow, Flow):
            raise TypeError(f"{flow_path} is not a Prefect flow")
        return flow
    entrypoint = f"{module.replace('.', '/')}.py:{function}"
    if code.kind == "git":
        from prefect.runner.storage import GitRepository

        storage = GitRepository(url=code.url, branch=code.branch)
        return cast("Flow[..., Any]", Flow.from_source(source=storage, entrypoint=entrypoint))
    return cast("Flow[..., Any]", Flow.from_source(source=str(CHECKOUT), entrypoint=entrypoint))


def deployment_for(
    flow: Flow[..., Any], flow_path: str, name: str, pool: str, source: str | None, **options: Any
) -> RunnerDeployment:
    """``flow``'s deployment ``name`` on ``pool``: by module path with no storage for the package,
    with the storage's pull step (git clone, or this checkout's folder) otherwise."""
    from prefect.types.entrypoint import EntrypointType

    package = parse_flow_source(source).kind == "package"
    deployment = cast(
        "RunnerDeployment",
        flow.to_deployment(
            name=name,
            work_pool_name=pool,
            entrypoint_type=EntrypointType.MODULE_PATH if package else EntrypointType.FILE_PATH,
            **options,
        ),
    )
    if package:  # the path asked for, whatever module the flow object says it came from
        deployment.entrypoint = flow_path
    return deployment


def ensure_deployment(profile: str, source: str | None = None) -> str:
    """Create the profile's process work pool and its deployment of the runner flow (code from
    ``source``, ``gates.runner_source``) if missing; return its name."""
    pool = pool_name(profile)
    ensure_process_pools([pool])
    [name] = deploy_flow(RUNNER_FLOW, [(pool, pool)], source)
    return name


def pack_suite(suite_dir: Path, profiles: Iterable[HardwareProfile], folder: Path) -> str:
    """Copy the suite's modules and write ``profiles`` (as the build host loaded them) into
    ``folder``, the bundle a runner fetches; return its :func:`suite_digest`."""
    import yaml

    modules = sorted(suite_dir.glob("*.py"))
    if not any(p.name == "conftest.py" for p in modules):
        raise HardwareCheckError(
            f"no hardware-tests suite at {suite_dir} (no conftest.py)",
            hint="run from the project root or set EDGELOOP_HARDWARE_TESTS_DIR",
        )
    (folder / "profiles").mkdir(parents=True, exist_ok=True)
    for module in modules:
        shutil.copyfile(module, folder / module.name)
    for profile in profiles:
        text = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
        (folder / "profiles" / f"{profile.name}.yaml").write_text(text)
    return suite_digest(folder)


def log_suite(suite_dir: Path, profiles: Iterable[HardwareProfile]) -> str:
    """Log the suite bundle (:func:`pack_suite`) to the active MLflow run; return its digest."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="edgeloop-suite-") as tmp:
        digest = pack_suite(suite_dir, profiles, Path(tmp))
        mlflow.log_artifacts(tmp, artifact_path=SUITE_FOLDER)
    return digest


@dataclass
class PoolRunner:
    """Runs the suite on the profile's work pool; needs a Prefect server (PREFECT_API_URL).

    The run holds the variants, the golden set and the suite bundle (:func:`log_suite`, whose
    digest is ``suite_sha256``); ``source`` is ``gates.runner_source``."""

    tracking_uri: str
    run_id: str
    deadline_s: float
    server: bool = True
    suite_sha256: str = ""
    source: str | None = None

    def run(self, variant: str, profile: HardwareProfile) -> ProfileResult | None:
        if not self.server:
            return None
        from prefect.deployments import run_deployment
        from prefect.states import Cancelled

        deployment = ensure_deployment(profile.name, self.source)
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
                    "suite_sha256": self.suite_sha256,
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
