"""flows.hardware_docker against a real Docker engine: the agent image runs the suite under limits.

Skips with "no Docker engine on this machine" where ``docker.from_env().ping()`` fails. The image is
built from docker/agent.Dockerfile with a context of only what it copies (pyproject.toml,
README.md, fleet/, hardware-tests/), so the build does not upload the virtual environment; it
needs network access for pip the first time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_hardware import IDENTITY, ROWS, make_model

from fleet.shared.profile import HardwareProfile
from flows.hardware import write_golden
from flows.hardware_docker import run_profile_in_container

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = "edgeloop-agent:test"


@pytest.fixture(scope="module")
def client() -> Any:
    docker = pytest.importorskip("docker")
    try:
        engine = docker.from_env()
        engine.ping()
    except Exception:
        pytest.skip("no Docker engine on this machine")
    return engine


@pytest.fixture(scope="module")
def image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    context = tmp_path_factory.mktemp("agent-image")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context)
    for folder in ("fleet", "hardware-tests", "docker"):
        shutil.copytree(REPO / folder, context / folder, ignore=ignore)
    client.images.build(path=str(context), dockerfile="docker/agent.Dockerfile", tag=IMAGE, rm=True)
    yield IMAGE


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    x = np.random.default_rng(0).normal(size=(ROWS, 64)).astype(np.float32)
    return {
        "golden": write_golden(x, np.argmax(x[:, :10], axis=1), tmp_path / "golden.npz"),
        "model": make_model(tmp_path / "int8-dynamic.onnx", IDENTITY),
        "big": make_model(tmp_path / "big.onnx", IDENTITY, ballast_mb=96),
        "out": tmp_path / "out",
    }


EDGE = HardwareProfile.model_validate(
    {
        "name": "edge",
        "cpu_affinity": [0],
        "memory_cap_mb": 288,
        "warmup_runs": 5,
        "timed_runs": 50,
        "budgets": {"min_accuracy": 0.9, "peak_memory_mb": 200, "model_size_mb": 1},
    }
)


def test_suite_runs_in_the_agent_image_under_the_profile_limits(
    client: Any, image: str, files: dict[str, Path]
) -> None:
    result = run_profile_in_container(
        client, image, files["model"], EDGE, files["golden"], files["out"], files["model"]
    )

    assert result.status == "passed", result.failures
    assert result.variant == "int8-dynamic" and result.metrics["accuracy"] == 1.0
    assert result.host["usable_cores"] == [0]
    assert result.host["address_space_cap_mb"] == 288
    assert result.metrics["peak_rss_mb"] < 200


def test_model_beyond_the_memory_limit_fails_in_the_container(
    client: Any, image: str, files: dict[str, Path]
) -> None:
    result = run_profile_in_container(
        client, image, files["big"], EDGE, files["golden"], files["out"]
    )

    assert result.status == "failed" and not result.passed
    assert result.failures[0].startswith(
        "model does not fit the memory cap of 288 MB on profile edge"
    )
