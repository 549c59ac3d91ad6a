"""The import-linter contracts of pyproject.toml hold the tree, and break when a file crosses a line.

Each test copies the packages, the tests and pyproject.toml into a temporary folder, adds one
import that crosses a forbidden line, and runs the real ``lint-imports`` there: a contract that
cannot break would be no contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("edgeloop", "flows", "registry", "fleet", "tests")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("file", "line", "contract"),
    [
        ("fleet/shared/net.py", "import edgeloop.cli", "Layers: a package imports only"),
        ("fleet/agent/store.py", "import sqlalchemy", "Device code installs on a small device"),
        ("fleet/controller/rollout/phase.py", "import httpx", "The pure rollout core does no I/O"),
        (
            "fleet/controller/storage/overview.py",
            "import fleet.controller.api.app",
            "The controller by concern",
        ),
        (
            "tests/unit/test_agent_client.py",
            "import fleet.controller.api.app",
            "Agent tests run against the agent's own fake controller",
        ),
        ("tests/unit/test_next_state.py", "import sqlalchemy", "Tests of the pure rollout core"),
        (
            "fleet/controller/observe/alerts.py",
            "from sqlalchemy import select",
            "Only the controller's storage runs SQL",
        ),
        (
            "fleet/controller/artifacts/local.py",
            "import fleet.controller.storage.store",
            "The controller by concern",
        ),
        (
            "fleet/controller/artifacts/s3.py",
            "import sqlalchemy",
            "Only the controller's storage runs SQL",
        ),
        ("fleet/shared/signature.py", "import boto3", "Device code installs on a small device"),
        (
            "fleet/controller/storage/outcomes.py",
            "import mlflow",
            "The controller never talks to the registry",
        ),
        ("flows/runner_flow.py", "import torch", "A hardware runner installs the runner extra"),
        ("edgeloop/cli/runner.py", "import flows.retrain", "A hardware runner installs the runner"),
    ],
)
def test_a_file_that_crosses_a_line_breaks_its_contract(
    tree: Path, file: str, line: str, contract: str
) -> None:
    add_import(tree / file, line)
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
