"""The hardware-tests suite in a container: the agent image, under the profile's CPU and memory limits.

Why a container: the agent image holds exactly what a device installs (onnxruntime, the suite, no
torch or mlflow), and Docker enforces a profile's limits the way a small device imposes them (a
CPU quota of ``threads`` cores, a cpuset, a hard memory limit with no swap) instead of trusting the
process to limit itself. The container shares nothing with this process but read-only mounts of the
model, golden set, reference and profile, and one writable folder for the reports, which
:func:`flows.hardware.read_result` reads back, the same as for a local run.

The Docker SDK is passed in (``docker.from_env()`` in production). :class:`FakeDockerClient`, a
small working stand-in that records every call, is shipped here for unit tests; integration tests
use a real engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile
from flows.hardware import (
    SUITE_ENV,
    SUITE_EXIT_CODES,
    ProfileResult,
    crashed_under_cap,
    read_result,
    resolve_profile,
)

SUITE_IN_IMAGE = "/opt/edgeloop/hardware-tests"  # docker/agent.Dockerfile copies the suite here
IN, OUT = "/mnt/in", "/mnt/out"
TAIL_LINES = 8


class Container(Protocol):
    """The part of ``docker.models.containers.Container`` this module uses."""

    @property
    def attrs(self) -> dict[str, Any]: ...

    def wait(self, *, timeout: float) -> dict[str, Any]: ...
    def logs(self) -> bytes: ...
    def reload(self) -> None: ...
    def kill(self) -> None: ...
    def remove(self, *, force: bool) -> None: ...


class Containers(Protocol):
    def run(self, image: str, command: list[str], **kwargs: Any) -> Container: ...


class DockerClient(Protocol):
    """The part of ``docker.DockerClient`` this module uses."""

    @property
    def containers(self) -> Containers: ...

    def ping(self) -> bool: ...


def container_limits(profile: HardwareProfile) -> dict[str, Any]:
    """Docker's arguments for the profile's CPU and memory; a limit the profile leaves out is unset."""
    limits: dict[str, Any] = {"nano_cpus": int(profile.threads * 1e9)}
    if profile.cpu_affinity is not None:
        limits["cpuset_cpus"] = ",".join(str(core) for core in profile.cpu_affinity)
    if profile.memory_cap_mb is not None:
        limits["mem_limit"] = f"{profile.memory_cap_mb}m"
        limits["memswap_limit"] = f"{profile.memory_cap_mb}m"  # the same: no swap to hide in
    return limits


def _tail(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:]) or "no output"


def run_profile_in_container(
    client: DockerClient,
    image: str,
    model_path: Path,
    profile: HardwareProfile | str,
    golden: Path,
    out_dir: Path,
    reference: Path | None = None,
    *,
    profiles_dir: Path = Path("hardware-tests/profiles"),
    timeout_s: float = 600,
) -> ProfileResult:
    """Run the suite in ``image``; junit.xml, report.json and pytest.log land in ``out_dir/<profile>/``."""
    spec = (
        profile if isinstance(profile, HardwareProfile) else resolve_profile(profile, profiles_dir)
    )
    target = (out_dir / spec.name).resolve()
    target.mkdir(parents=True, exist_ok=True)
    junit, report = target / "junit.xml", target / "report.json"
    for stale in (junit, report):
        stale.unlink(missing_ok=True)
    # The profile travels as a file, so one the image does not ship (a tmp or edited one) works too.
    profile_file = target / "profile.yaml"
    profile_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    volumes = {
        str(model_path.resolve()): {"bind": f"{IN}/model.onnx", "mode": "ro"},
        str(golden.resolve()): {"bind": f"{IN}/golden.npz", "mode": "ro"},
        str(profile_file): {"bind": f"{IN}/profile.yaml", "mode": "ro"},
        str(target): {"bind": OUT, "mode": "rw"},
    }
    command = [
        "python", "-m", "pytest", SUITE_IN_IMAGE, "-p", "no:cacheprovider", "-q",
        "--model-path", f"{IN}/model.onnx", "--variant", model_path.stem,
        "--profile", f"{IN}/profile.yaml", "--golden", f"{IN}/golden.npz",
        "--report", f"{OUT}/report.json", f"--junitxml={OUT}/junit.xml",
    ]  # fmt: skip
    if reference is not None:
        volumes[str(reference.resolve())] = {"bind": f"{IN}/reference.onnx", "mode": "ro"}
        command += ["--reference", f"{IN}/reference.onnx"]
    options: dict[str, Any] = {
        "detach": True,
        "volumes": volumes,
        "environment": dict(SUITE_ENV),
        "network_disabled": True,
        **container_limits(spec),
    }
    if hasattr(os, "getuid"):  # reports in the mounted folder belong to whoever asked for them
        options["user"] = f"{os.getuid()}:{os.getgid()}"
    hint = f"run `docker run {image} {' '.join(command)}` with the same mounts to see all of it"

    try:
        container = client.containers.run(image, command, **options)
    except Exception as exc:  # docker.errors.* and requests errors: the engine's, not ours
        raise HardwareCheckError(
            f"could not start image {image!r} for profile {spec.name!r}: {exc}",
            hint="build it with `docker build -f docker/agent.Dockerfile -t IMAGE .`",
        ) from exc
    try:
        try:
            status = container.wait(timeout=timeout_s)
        except Exception as exc:  # the SDK raises the HTTP client's timeout
            container.kill()
            raise HardwareCheckError(
                f"hardware tests for profile {spec.name!r} in {image!r} did not finish within "
                f"{timeout_s:g} s ({type(exc).__name__})",
                hint="raise timeout_s or lower the profile's timed_runs",
            ) from exc
        output = container.logs().decode(errors="replace")
        (target / "pytest.log").write_text(output)
        container.reload()
        code = int(status.get("StatusCode", -1))
        if container.attrs.get("State", {}).get("OOMKilled") and spec.memory_cap_mb is not None:
            how = "was killed by the container's out-of-memory killer"
            return crashed_under_cap(spec, how, output, junit, report)
        if code not in SUITE_EXIT_CODES or not report.is_file():
            raise HardwareCheckError(
                f"hardware tests for profile {spec.name!r} in {image!r} could not run "
                f"(exit code {code}{', no report' if not report.is_file() else ''}): {_tail(output)}",
                hint=hint,
            )
        return read_result(spec.name, report, junit, hint=hint)
    finally:
        container.remove(force=True)


# --- a working fake, for unit tests ---------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """One ``containers.run`` call as the fake saw it: what ran, with which mounts and limits."""

    image: str
    command: list[str]
    options: dict[str, Any]

    @property
    def mounts(self) -> dict[str, Path]:
        """Container path -> host path."""
        return {v["bind"]: Path(host) for host, v in self.options.get("volumes", {}).items()}

    def host_path(self, container_path: str) -> Path:
        """Where a path inside the container lives on this host, through the mounts."""
        for bind, host in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if container_path == bind or container_path.startswith(bind + "/"):
                return host / container_path[len(bind) :].lstrip("/")
        raise KeyError(f"{container_path} is not under any mount")


@dataclass(frozen=True)
class ContainerBehaviour:
    """What the fake container does: its exit code, its log and whether the OOM killer struck."""

    exit_code: int = 0
    logs: str = ""
    oom_killed: bool = False
    hangs: bool = False


def run_on_host(suite_dir: Path) -> Callable[[Invocation], ContainerBehaviour]:
    """A behaviour that runs the container's command on this host, paths mapped through the mounts.

    The image is not involved, so this checks the command line and the mounts, not the image.
    """

    def behave(call: Invocation) -> ContainerBehaviour:
        command = [sys.executable if call.command[0] == "python" else call.command[0]]
        for arg in call.command[1:]:
            if arg == SUITE_IN_IMAGE:
                command.append(str(suite_dir))
            elif arg.startswith("--junitxml="):
                command.append(f"--junitxml={call.host_path(arg.split('=', 1)[1])}")
            elif arg.startswith("/mnt/"):
                command.append(str(call.host_path(arg)))
            else:
                command.append(arg)
        env = {**os.environ, **call.options.get("environment", {})}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        return ContainerBehaviour(exit_code=proc.returncode, logs=proc.stdout + proc.stderr)

    return behave


class FakeContainer:
    """A finished (or hanging) container; records what is asked of it on its client."""

    def __init__(self, client: FakeDockerClient, outcome: ContainerBehaviour) -> None:
        self._client = client
        self._outcome = outcome
        self.attrs: dict[str, Any] = {}

    def wait(self, *, timeout: float) -> dict[str, Any]:
        self._client.calls.append(("wait", timeout))
        if self._outcome.hangs:
            raise TimeoutError(f"read timed out after {timeout} s")
        return {"StatusCode": self._outcome.exit_code, "Error": None}

    def logs(self) -> bytes:
        self._client.calls.append(("logs",))
        return self._outcome.logs.encode()

    def reload(self) -> None:
        self._client.calls.append(("reload",))
        self.attrs = {
            "State": {"ExitCode": self._outcome.exit_code, "OOMKilled": self._outcome.oom_killed}
        }

    def kill(self) -> None:
        self._client.calls.append(("kill",))

    def remove(self, *, force: bool) -> None:
        self._client.calls.append(("remove", force))


@dataclass
class FakeDockerClient:
    """Stands in for ``docker.DockerClient``: ``behave`` decides what each container does.

    Every call lands in ``calls`` in order, e.g. ``[("run", Invocation), ("wait", 600), ("logs",),
    ("reload",), ("remove", True)]``; ``engine_up=False`` makes ``ping`` fail as with no engine.
    """

    behave: Callable[[Invocation], ContainerBehaviour] = field(
        default=lambda call: ContainerBehaviour()
    )
    engine_up: bool = True
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.containers = _FakeContainers(self)

    def ping(self) -> bool:
        self.calls.append(("ping",))
        if not self.engine_up:
            raise ConnectionError("no Docker engine")
        return True


class _FakeContainers:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client

    def run(self, image: str, command: list[str], **kwargs: Any) -> FakeContainer:
        call = Invocation(image=image, command=list(command), options=kwargs)
        self._client.calls.append(("run", call))
        return FakeContainer(self._client, self._client.behave(call))
