"""`make demo` leaves `git status` clean and `dvc repro` works after it, in a fresh clone of the
project: generated state (splits, model cards, .edgeloop) is ignored and untracked, dvc.lock is
committed and not ignored, and the version the run registers is tagged ``edgeloop.git_dirty=false``.

scripts/check_generated_state.py is the fast, static half (in `make check`); these tests hold it to
the real run and show that it fails where a demo would leave the tree dirty.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from project_clone import clone_project, environment, git, run

pytestmark = pytest.mark.integration

MODEL = "digits-classifier"
CHECK = "scripts/check_generated_state.py"
FAST: dict[str, dict[str, Any]] = {
    "training": {"epochs": 5},
    "compress": {"prune_finetune_epochs": 2, "warmup_runs": 5, "latency_runs": 50},
    "gates": {"profiles": ["host-cpu"]},
}


def status(root: Path) -> list[str]:
    return git(root, "status", "--porcelain", "--untracked-files=all").splitlines()


def ignored_files(root: Path) -> list[str]:
    lines = git(root, "status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
    return [line[3:] for line in lines if line.startswith("!! ")]


def unlisted(root: Path, listed: list[str]) -> list[str]:
    """The ignored files that lie under no path the static check lists."""
    prefixes = [p.rstrip("/") for p in listed]
    return [
        f for f in ignored_files(root) if not any(f == p or f.startswith(p + "/") for p in prefixes)
    ]


def test_edgeloop_run_then_dvc_repro_leave_a_fresh_clone_clean(
    tmp_path: Path, prefect_home: Path, prefect_sqlite: str
) -> None:
    root = clone_project(tmp_path / "clone", **FAST)
    env = {**environment(prefect_home), "PREFECT_API_URL": prefect_sqlite}
    head = git(root, "rev-parse", "HEAD").strip()
    check = run(root, env, sys.executable, CHECK)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (root / "data" / "splits").exists()  # the run writes them, as on a fresh clone

    result = run(root, env, "edgeloop", "run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(root) == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / '.edgeloop' / 'mlflow.db'}")
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["edgeloop.git_dirty"] == "false"
    assert tags["edgeloop.git_commit"] == head
    assert (root / "model-cards" / MODEL / "v1.md").is_file()
    listed = run(root, env, sys.executable, CHECK, "--list").stdout.split()
    assert unlisted(root, listed) == []

    repro = run(root, env, "dvc", "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    # DVC wrote no .gitignore entry and nothing untracked; it may only have updated its lock
    # (the evaluation's latencies, and the stages these params re-ran).
    assert set(status(root)) <= {" M dvc.lock"}
    assert unlisted(root, listed) == []
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    splits = next(o for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/splits")
    assert splits["md5"] == tags["edgeloop.data.hash"]
    again = run(root, env, "dvc", "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout


def test_the_static_check_fails_where_a_demo_would_leave_the_tree_dirty(tmp_path: Path) -> None:
    root = clone_project(tmp_path / "clone")
    env = environment()

    def check() -> str:
        result = run(root, env, sys.executable, CHECK)
        assert result.returncode == (1 if result.stderr else 0), result.stdout + result.stderr
        return result.stderr

    assert check() == ""

    card = root / "model-cards" / MODEL / "v1.md"  # a committed card: every demo rewrites it
    card.parent.mkdir(parents=True)
    card.write_text("# card\n")
    git(root, "add", "-f", str(card))
    assert f"git rm -r --cached model-cards/{MODEL}" in check()
    git(root, "rm", "-q", "--cached", str(card))

    gitignore = root / ".gitignore"  # DVC refuses to write a git-ignored lock
    original = gitignore.read_text()
    gitignore.write_text(original + "dvc.lock\n")
    assert "dvc.lock: git-ignored by .gitignore:" in check()
    gitignore.write_text(original)

    git(root, "rm", "-q", "--cached", "data/.gitignore")  # a fresh clone would lack the rule
    assert "data/splits: ignored by data/.gitignore, which is not committed" in check()
    git(root, "add", "data/.gitignore")

    dvc_yaml = root / "dvc.yaml"
    pipeline = yaml.safe_load(dvc_yaml.read_text())
    pipeline["stages"]["evaluate"]["outs"].append("reports/summary.json")  # DVC would edit a
    pipeline["stages"]["evaluate"]["deps"].append("flows/moved.py")  # .gitignore; repro fails
    dvc_yaml.write_text(yaml.safe_dump(pipeline))
    problems = check()
    assert (
        "reports/summary.json: written by the evaluate stage (dvc.yaml outs), but not" in problems
    )
    assert "flows/moved.py: not committed (the evaluate stage depends on it" in problems
