"""Where a pool's workers find the flow code (edgeloop.core.flow_source, flows.pool.deploy_flow),
and the suite bundle a hardware runner fetches instead of reading the build host's disk.

The deployments are built for real (Prefect's RunnerDeployment, a real git clone of a file://
repository); only ``RunnerDeployment.apply``, the call to the Prefect server, is recorded instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from edgeloop.core.errors import HardwareCheckError
from edgeloop.core.flow_source import FlowCode, parse_flow_source
from edgeloop.core.params import Params
from edgeloop.core.placement_params import PlacementParams
from fleet.shared.profile import load_profile
from flows import pool
from flows.runner_flow import SUITE_FOLDER, suite_digest, validate_on_runner

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "hardware-tests"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, FlowCode("package")),
        ("package", FlowCode("package")),
        ("checkout", FlowCode("checkout")),
        ("https://git.example/org/edgeloop.git", FlowCode("git", "https://git.example/org/edgeloop.git")),
        ("git@git.example:org/edgeloop.git#release", FlowCode("git", "git@git.example:org/edgeloop.git", "release")),
        ("file:///srv/edgeloop.git", FlowCode("git", "file:///srv/edgeloop.git")),
    ],
)  # fmt: skip
def test_a_flow_source_is_the_package_a_git_url_or_the_checkout(
    value: str | None, code: FlowCode
) -> None:
    assert parse_flow_source(value) == code


@pytest.mark.parametrize("value", ["/srv/edgeloop", "edgeloop", "https://git.example/x.git#", ""])
def test_anything_else_is_refused_by_both_settings(value: str) -> None:
    with pytest.raises(ValueError, match="not a flow source"):
        parse_flow_source(value)
    with pytest.raises(ValidationError, match=r"placement\.source|source"):
        Params.model_validate({"placement": {"source": value}})
    with pytest.raises(ValidationError, match="runner_source"):
        Params.model_validate({"gates": {"runner_source": value}})


def test_both_pool_kinds_default_to_the_installed_package() -> None:
    params = Params()
    assert params.gates.runner_source is None and params.placement.source is None
    assert PlacementParams(source="https://git.example/o/r.git").source is not None


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The deployments deploy_flow registers, recorded instead of sent to a Prefect server."""
    from prefect.deployments.runner import RunnerDeployment

    seen: list[Any] = []
    monkeypatch.setattr(RunnerDeployment, "apply", lambda self, *a, **k: seen.append(self))
    return seen


def test_by_default_a_worker_imports_the_flow_from_its_own_install(applied: list[Any]) -> None:
    from prefect.types.entrypoint import EntrypointType

    names = pool.deploy_flow(pool.RUNNER_FLOW, [("hw-a", "hw-a"), ("hw-b", "hw-b")])

    assert names == ["hardware-validate/hw-a", "hardware-validate/hw-b"]
    first = applied[0]
    assert first.entrypoint == "flows.runner_flow.validate_on_runner"
    assert first._entrypoint_type == EntrypointType.MODULE_PATH
    assert first.storage is None and first._path is None  # no pull step, no path on this host
    assert first.work_pool_name == "hw-a"
    assert set(first._parameter_openapi_schema.properties) == {
        "tracking_uri", "run_id", "variant", "profile", "suite_sha256",
    }  # fmt: skip
    assert [d.work_pool_name for d in applied] == ["hw-a", "hw-b"]


def test_the_training_flow_is_deployed_the_same_way(applied: list[Any]) -> None:
    from flows.placement_pools import TRAINING_FLOW

    [name] = pool.deploy_flow(TRAINING_FLOW, [("train-eu", "train-eu")], "package")
    assert name == "placed-training/train-eu"
    assert applied[0].entrypoint == "flows.placement_flow.placed_training"
    assert applied[0].storage is None


def git_repo(folder: Path) -> Path:
    """A git repository holding this checkout's flows/runner_flow.py on branch ``release``."""
    (folder / "flows").mkdir(parents=True)
    shutil.copy(REPO / "flows" / "runner_flow.py", folder / "flows" / "runner_flow.py")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    git("init", "-q", "-b", "release")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "flows")
    return folder


def test_a_git_url_makes_each_run_clone_the_repository_first(
    applied: list[Any], tmp_path: Path
) -> None:
    url = git_repo(tmp_path / "origin").as_uri()

    [name] = pool.deploy_flow(pool.RUNNER_FLOW, [("hw-a", "hw-a")], f"{url}#release")

    assert name == "hardware-validate/hw-a"
    deployment = applied[0]
    assert deployment.entrypoint == "flows/runner_flow.py:validate_on_runner"
    [step] = [deployment.storage.to_pull_step()]
    clone = step["prefect.deployments.steps.git_clone"]
    assert clone["repository"] == url and clone["branch"] == "release"


def test_checkout_is_this_folder_and_only_when_asked_for(applied: list[Any]) -> None:
    pool.deploy_flow(pool.RUNNER_FLOW, [("hw-a", "hw-a")], "checkout")
    deployment = applied[0]
    assert deployment.entrypoint == "flows/runner_flow.py:validate_on_runner"
    step = deployment.storage.to_pull_step()["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == str(pool.CHECKOUT)


def test_the_ops_deployments_stay_on_this_hosts_checkout(applied: list[Any]) -> None:
    from flows.deployments import _deploy

    _deploy("flows.rollout.rollout_flow", "promoted")
    assert applied[0].entrypoint == "flows/rollout.py:rollout_flow"
    assert applied[0].storage is not None


def test_the_suite_bundle_holds_the_suite_and_the_profiles_as_the_build_host_loaded_them(
    tmp_path: Path,
) -> None:
    profile = load_profile("edge-small", SUITE / "profiles")
    digest = pool.pack_suite(SUITE, [profile], tmp_path / "bundle")

    bundle = tmp_path / "bundle"
    assert {p.name for p in bundle.glob("*.py")} == {p.name for p in SUITE.glob("*.py")}
    assert load_profile("edge-small", bundle / "profiles") == profile
    assert digest == suite_digest(bundle) == pool.pack_suite(SUITE, [profile], tmp_path / "again")
    (bundle / "profiles" / "edge-small.yaml").write_text(
        yaml.safe_dump({**profile.model_dump(mode="json"), "budgets": {}})
    )
    assert suite_digest(bundle) != digest  # a looser budget is a different bundle


def test_no_suite_is_a_hardware_check_error(tmp_path: Path) -> None:
    with pytest.raises(HardwareCheckError, match="no hardware-tests suite"):
        pool.pack_suite(tmp_path, [], tmp_path / "bundle")


def test_a_runner_never_runs_a_bundle_whose_digest_the_build_host_did_not_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    import flows.runner_flow as runner_flow

    bundle = tmp_path / "store" / SUITE_FOLDER
    digest = pool.pack_suite(SUITE, [load_profile("host-cpu", SUITE / "profiles")], bundle)
    (bundle / "conftest.py").write_text("import os\n")  # changed in MLflow after the run

    def download(*, run_id: str, artifact_path: str, dst_path: str) -> str:
        return str(tmp_path / "store" / artifact_path)

    ran: list[Any] = []
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    monkeypatch.setattr(runner_flow, "run_profile", lambda *a, **k: ran.append(a))
    with pytest.raises(HardwareCheckError, match="not running it"):
        validate_on_runner.fn("http://127.0.0.1:9", "run1", "fp32", "host-cpu", digest)
    assert ran == []
