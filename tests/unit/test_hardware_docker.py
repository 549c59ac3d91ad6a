"""flows.hardware_docker with its shipped fake client: the limits, mounts and command a container gets.

The fake records every call, so each test asserts the exact sequence. Scripted behaviours write a
canned report into the mounted output folder; ``run_on_host`` runs the container's command on this
host with paths mapped through the mounts, which proves the command line the real suite receives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile, load_profile
from fleet.shared.runtime import usable_cores
from flows.hardware import SUITE_ENV
from flows.hardware_docker import (
    ContainerBehaviour,
    FakeDockerClient,
    Invocation,
    container_limits,
    run_on_host,
    run_profile_in_container,
)

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "hardware-tests" / "profiles"
IMAGE = "edgeloop-agent:test"
EDGE = HardwareProfile.model_validate(
    {
        "name": "edge",
        "threads": 1,
        "cpu_affinity": [0],
        "memory_cap_mb": 256,
        "warmup_runs": 2,
        "timed_runs": 20,
        "budgets": {"min_accuracy": 0.9, "peak_memory_mb": 200},
    }
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A tiny model (features[N, 4] -> probabilities[N, 3]), its golden set and a reference."""
    weights = np.eye(4, 3, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "int8-dynamic.onnx"))
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    x = np.eye(3, 4, dtype=np.float32).repeat(5, axis=0)
    with (tmp_path / "golden.npz").open("wb") as f:
        np.savez(f, x=x, y=np.argmax(x[:, :3], axis=1).astype(np.int64))
    return {
        "model": tmp_path / "int8-dynamic.onnx",
        "reference": tmp_path / "fp32.onnx",
        "golden": tmp_path / "golden.npz",
        "out": tmp_path / "out",
    }


def canned(status: str = "passed", exit_code: int = 0, **extra: Any) -> Any:
    """A behaviour that writes a report like the suite's into the mounted output folder."""

    def behave(call: Invocation) -> ContainerBehaviour:
        report = {
            "profile": "edge",
            "variant": "int8-dynamic",
            "sha256": "ab" * 32,
            "status": status,
            "reason": extra.get("reason", ""),
            "metrics": {"p95_ms": 0.5, "accuracy": 1.0, "runs": 20},
            "tests": extra.get(
                "tests", [{"name": "test_accuracy", "outcome": "passed", "message": ""}]
            ),
            "host": {"onnxruntime": "1.x"},
        }
        call.host_path("/mnt/out/report.json").write_text(json.dumps(report))
        return ContainerBehaviour(exit_code=exit_code, logs="10 passed\n")

    return behave


def run(client: FakeDockerClient, files: dict[str, Path], profile: Any = EDGE, **kw: Any) -> Any:
    return run_profile_in_container(
        client,
        IMAGE,
        files["model"],
        profile,
        files["golden"],
        files["out"],
        files.get("reference"),
        **kw,
    )


def test_limits_mounts_and_command(files: dict[str, Path]) -> None:
    client = FakeDockerClient(behave=canned())
    result = run(client, files)

    call = client.calls[0][1]
    assert client.calls == [("run", call), ("wait", 600), ("logs",), ("reload",), ("remove", True)]
    assert call.image == IMAGE
    target = (files["out"] / "edge").resolve()
    assert call.command == [
        "python", "-m", "pytest", "/opt/edgeloop/hardware-tests", "-p", "no:cacheprovider", "-q",
        "--model-path", "/mnt/in/model.onnx", "--variant", "int8-dynamic",
        "--profile", "/mnt/in/profile.yaml", "--golden", "/mnt/in/golden.npz",
        "--report", "/mnt/out/report.json", "--junitxml=/mnt/out/junit.xml",
        "--reference", "/mnt/in/reference.onnx",
    ]  # fmt: skip
    options = dict(call.options)
    assert options.pop("volumes") == {
        str(files["model"].resolve()): {"bind": "/mnt/in/model.onnx", "mode": "ro"},
        str(files["golden"].resolve()): {"bind": "/mnt/in/golden.npz", "mode": "ro"},
        str(target / "profile.yaml"): {"bind": "/mnt/in/profile.yaml", "mode": "ro"},
        str(target): {"bind": "/mnt/out", "mode": "rw"},
        str(files["reference"].resolve()): {"bind": "/mnt/in/reference.onnx", "mode": "ro"},
    }
    options.pop("user", None)
    assert options == {
        "detach": True,
        "environment": SUITE_ENV,
        "network_disabled": True,
        "nano_cpus": 1_000_000_000,
        "cpuset_cpus": "0",
        "mem_limit": "256m",
        "memswap_limit": "256m",
    }
    assert load_profile(str(target / "profile.yaml"), PROFILES) == EDGE

    assert result.status == "passed" and result.passed
    assert result.profile == "edge" and result.variant == "int8-dynamic"
    assert result.metrics == {"p95_ms": 0.5, "accuracy": 1.0, "runs": 20.0}
    assert result.report_path == target / "report.json"
    assert result.junit_path == target / "junit.xml"
    assert (target / "pytest.log").read_text() == "10 passed\n"


def test_shipped_profiles_map_to_docker_limits() -> None:
    assert container_limits(load_profile("edge-small", PROFILES)) == {
        "nano_cpus": 1_000_000_000,
        "cpuset_cpus": "0",
        "mem_limit": "256m",
        "memswap_limit": "256m",
    }
    assert container_limits(load_profile("rpi4-arm64", PROFILES)) == {"nano_cpus": 4_000_000_000}
    pinned = HardwareProfile(name="x", threads=2, cpu_affinity=(2, 3))
    assert container_limits(pinned) == {"nano_cpus": 2_000_000_000, "cpuset_cpus": "2,3"}


def test_profile_by_name_and_without_reference(files: dict[str, Path]) -> None:
    client = FakeDockerClient(behave=canned())
    files = {k: v for k, v in files.items() if k != "reference"}
    run(client, files, "host-cpu", profiles_dir=PROFILES)

    call = client.calls[0][1]
    assert "--reference" not in call.command
    assert "cpuset_cpus" not in call.options and "mem_limit" not in call.options
    assert call.options["nano_cpus"] == 1_000_000_000


def test_failed_and_unavailable_reports_are_results(files: dict[str, Path]) -> None:
    failing = [{"name": "test_p95_latency", "outcome": "failed", "message": "p95 too slow"}]
    failed = run(FakeDockerClient(behave=canned("failed", 1, tests=failing)), files)
    assert failed.status == "failed" and failed.failures == ["p95 too slow"]

    reason = "CUDAExecutionProvider is not available"
    skipped = [{"name": "test_accuracy", "outcome": "skipped", "message": reason}]
    unavailable = run(
        FakeDockerClient(behave=canned("unavailable", 6, tests=skipped, reason=reason)), files
    )
    assert unavailable.status == "unavailable" and not unavailable.passed
    assert unavailable.reason == reason and unavailable.failures == []


def test_oom_killed_container_fails_naming_the_cap(files: dict[str, Path]) -> None:
    client = FakeDockerClient(
        behave=lambda call: ContainerBehaviour(exit_code=137, logs="Killed\n", oom_killed=True)
    )
    result = run(client, files)

    assert result.status == "failed" and not result.passed
    assert result.failures == [
        "model does not fit the memory cap of 256 MB on profile edge: the suite was killed by "
        "the container's out-of-memory killer (Killed)"
    ]
    assert client.calls[-1] == ("remove", True)


def test_a_container_past_its_timeout_is_killed_and_removed(files: dict[str, Path]) -> None:
    client = FakeDockerClient(behave=lambda call: ContainerBehaviour(hangs=True))
    with pytest.raises(
        HardwareCheckError, match=r"'edge' in 'edgeloop-agent:test' did not finish within 5 s"
    ):
        run(client, files, timeout_s=5)
    assert [c[0] for c in client.calls] == ["run", "wait", "kill", "remove"]


def test_exit_without_report_is_a_hardware_check_error(files: dict[str, Path]) -> None:
    client = FakeDockerClient(
        behave=lambda call: ContainerBehaviour(exit_code=4, logs="ERROR: bad\n")
    )
    with pytest.raises(
        HardwareCheckError, match=r"could not run \(exit code 4, no report\): ERROR: bad"
    ):
        run(client, files)
    assert client.calls[-1] == ("remove", True)


def test_an_image_that_will_not_start_is_a_hardware_check_error(files: dict[str, Path]) -> None:
    def refuse(call: Invocation) -> ContainerBehaviour:
        raise RuntimeError("404 Client Error: pull access denied for edgeloop-agent")

    with pytest.raises(HardwareCheckError, match="could not start image 'edgeloop-agent:test'"):
        run(FakeDockerClient(behave=refuse), files)


def test_ping_fails_without_an_engine() -> None:
    client = FakeDockerClient(engine_up=False)
    with pytest.raises(ConnectionError):
        client.ping()
    assert client.calls == [("ping",)]


def test_the_command_runs_the_real_suite(files: dict[str, Path]) -> None:
    """run_on_host: the container's exact command line, on this host, through the mounts."""
    profile = EDGE.model_copy(update={"cpu_affinity": (min(usable_cores()),)})
    client = FakeDockerClient(behave=run_on_host(REPO / "hardware-tests"))
    result = run(client, files, profile)

    assert result.status == "passed", result.failures
    assert result.variant == "int8-dynamic" and result.metrics["accuracy"] == 1.0
    assert result.metrics["runs"] == 20 and result.metrics["disagreement"] == 0.0
    assert result.host["address_space_cap_mb"] == 256
    assert result.junit_path.is_file()
