""".github/workflows/hardware-tests.yml: valid for GitHub, and wired the way hardware CI needs.

The schema check uses check-jsonschema's vendored GitHub workflow schema (``--builtin-schema
vendor.github-workflows``), which ships inside the package, so the test runs offline. The negative
tests break a copy of the workflow on purpose, to prove the validator can fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "hardware-tests.yml"
PROFILES = REPO / "hardware-tests" / "profiles"
MATRIX = {"host-cpu", "edge-small", "rpi4-arm64", "jetson-orin-trt"}
TRIGGER_PATHS = {
    "flows/**",
    "registry/**",
    "fleet/agent/**",
    "hardware-tests/**",
    "params.yaml",
    "dvc.yaml",
    "pyproject.toml",
}


SCHEMA = "vendor.github-workflows"  # vendored in check-jsonschema: no network needed
VALIDATOR = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SCHEMA]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VALIDATOR, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(path: Path = WORKFLOW) -> dict[str, Any]:
    """The workflow as a dict; PyYAML (YAML 1.1) reads the key ``on`` as True, so rename it."""
    data = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return dict(data)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def job(workflow: dict[str, Any]) -> dict[str, Any]:
    assert list(workflow["jobs"]) == ["hardware"]
    return dict(workflow["jobs"]["hardware"])


def step(job: dict[str, Any], uses_or_text: str) -> dict[str, Any]:
    found = [s for s in job["steps"] if uses_or_text in str(s.get("uses", "")) + s.get("run", "")]
    assert len(found) == 1, f"expected one step with {uses_or_text!r}, found {len(found)}"
    return dict(found[0])


def test_workflow_matches_github_schema() -> None:
    result = validate(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_triggers(workflow: dict[str, Any]) -> None:
    on = workflow["on"]
    for event in ("push", "pull_request"):
        assert set(on[event]["paths"]) >= TRIGGER_PATHS, f"{event} misses model or flow paths"
    model_uri = on["workflow_dispatch"]["inputs"]["model_uri"]
    assert model_uri["default"] == "models:/digits-classifier@candidate"


def test_least_privilege_and_limits(workflow: dict[str, Any], job: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    assert job["timeout-minutes"] == 30
    group = job["concurrency"]["group"]
    assert "${{ github.ref }}" in group and "${{ matrix.profile }}" in group


def test_matrix_covers_every_profile(job: dict[str, Any]) -> None:
    strategy = job["strategy"]
    assert strategy["fail-fast"] is False
    assert set(strategy["matrix"]["profile"]) == MATRIX
    assert len(strategy["matrix"]["profile"]) == len(MATRIX)
    missing = sorted(p for p in MATRIX if not (PROFILES / f"{p}.yaml").is_file())
    assert not missing, f"matrix profiles without a file in {PROFILES}: {missing}"


def test_runs_on_self_hosted_runner_of_the_profile(job: dict[str, Any]) -> None:
    assert job["runs-on"] == ["self-hosted", "${{ matrix.profile }}"]


def test_steps(job: dict[str, Any]) -> None:
    assert job["steps"][0]["uses"] == "actions/checkout@v4"
    setup = step(job, "python -m venv .venv")
    assert ".venv/bin/pip install -e '.[agent]' pytest mlflow" in setup["run"]

    tests = step(job, "-m pytest hardware-tests")["run"]
    for option in (
        '--model-uri "$MODEL_URI"',
        "--profile ${{ matrix.profile }}",
        "--junitxml reports/${{ matrix.profile }}/junit.xml",
        "--report reports/${{ matrix.profile }}/report.json",
        "-p no:cacheprovider",
    ):
        assert option in tests
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert "inputs.model_uri" in job["env"]["MODEL_URI"]

    upload = step(job, "actions/upload-artifact@v4")
    assert upload["if"] == "always()"
    assert "junit.xml" in upload["with"]["path"] and "report.json" in upload["with"]["path"]

    summary = step(job, "GITHUB_STEP_SUMMARY")
    assert summary["if"] == "always()"
    assert "report.json" in summary["run"]


def _drop_runs_on(data: dict[str, Any]) -> None:
    del data["jobs"]["hardware"]["runs-on"]


def _paths_as_number(data: dict[str, Any]) -> None:
    data["on"]["push"]["paths"] = 42


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (_drop_runs_on, "$.jobs.hardware: 'runs-on' is a required property"),
        (_paths_as_number, "$.on.push.paths: 42 is not of type 'array'"),
    ],
)
def test_validator_rejects_a_broken_workflow(tmp_path: Path, break_it: Any, error: str) -> None:
    data = load()
    # The unbroken copy, dumped the same way, passes: so the failure below is the mutation's.
    intact = tmp_path / "intact.yml"
    intact.write_text(yaml.safe_dump(data, sort_keys=False))
    assert validate(intact).returncode == 0

    break_it(data)
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    result = validate(broken)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Schema validation errors were encountered" in output
    assert error in output
