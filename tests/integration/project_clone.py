"""A fresh clone of this project, for tests of its own git and DVC files (dvc.yaml, dvc.lock,
.gitignore): what a user gets from `git clone`, not a temporary repository that never sees them.

The working tree's tracked and untracked (not ignored) files are copied over the clone and committed
there, so uncommitted edits are tested too; generated state (ignored) is not copied, so the clone
starts as a fresh checkout does: no data/splits, no .edgeloop, a clean `git status`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GIT_IDENTITY = ("-c", "user.name=edgeloop tests", "-c", "user.email=tests@edgeloop.invalid")


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *GIT_IDENTITY, "-c", "commit.gpgsign=false", *args],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def _files(root: Path, *args: str) -> set[str]:
    return set(git(root, "ls-files", "-z", *args).split("\0")) - {""}


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    if git(root, "status", "--porcelain"):
        git(root, "commit", "-q", "--no-verify", "-m", message)


def clone_project(dest: Path, **params: dict[str, Any]) -> Path:
    """Clone the repository to ``dest``, bring the working tree over, set ``params`` (merged into
    params.yaml's sections) and commit each step, so ``git status`` is clean there."""
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout")
    git(REPO.parent, "clone", "-q", str(REPO), str(dest))
    worktree = _files(REPO, "--cached", "--others", "--exclude-standard")
    for name in sorted(worktree):
        source, target = REPO / name, dest / name
        if source.is_file() and not source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif not source.exists():
            target.unlink(missing_ok=True)  # deleted in the working tree
    for name in _files(dest) - worktree:
        (dest / name).unlink(missing_ok=True)  # removed from the index (git rm, git mv)
    commit_all(dest, "the working tree of the project under test")
    if params:
        path = dest / "params.yaml"
        values = yaml.safe_load(path.read_text())
        for section, changes in params.items():
            values[section] = {**values.get(section, {}), **changes}
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        commit_all(dest, "fast params for the test")
    assert git(dest, "status", "--porcelain", "--untracked-files=all") == ""
    return dest


def environment(prefect_home: Path | None = None) -> dict[str, str]:
    """The environment of a command run in the clone: its own settings, the venv's `python` and
    `dvc` first on PATH (dvc.yaml's commands call `python`), the session's PREFECT_HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDGELOOP_", "MLFLOW_", "PREFECT_")) and k != "PYTHONPATH"
    }
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        COLUMNS="200",
    )
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def run(
    root: Path, env: dict[str, str], *cmd: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``edgeloop ...`` runs the clone's own code (``python -m edgeloop.cli`` from its root, not the
    console script of the editable install); ``dvc ...`` the venv's DVC."""
    if cmd[0] == "edgeloop":
        cmd = (sys.executable, "-m", "edgeloop.cli", *cmd[1:])
    elif cmd[0] == "dvc":
        cmd = (str(BIN / "dvc"), *cmd[1:])
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
