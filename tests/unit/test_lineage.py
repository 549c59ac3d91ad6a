"""registry.lineage: git state of the code and DVC's directory hash of the data."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from registry.lineage import GitState, dvc_dir_hash, git_state

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.csv").write_bytes(b"x\r\ny\n")
    (root / "c.bin").write_bytes(bytes(range(256)))
    return root


def test_dvc_dir_hash_deterministic_and_suffixed(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "d")
    first = dvc_dir_hash(tree)
    assert first.endswith(".dir")
    assert len(first) == 32 + len(".dir")
    assert dvc_dir_hash(tree) == first
    # The same content elsewhere hashes the same: only relative paths are listed.
    assert dvc_dir_hash(make_tree(tmp_path / "elsewhere")) == first


def test_dvc_dir_hash_matches_documented_listing(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "d")
    entries = [
        {"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": rel}
        for rel, p in sorted(
            (p.relative_to(tree).as_posix(), p) for p in tree.rglob("*") if p.is_file()
        )
    ]
    expected = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert dvc_dir_hash(tree) == expected


def test_dvc_dir_hash_equals_dvc_data(tmp_path: Path) -> None:
    pytest.importorskip("dvc_data")
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    tree = make_tree(tmp_path / "d")
    fs = LocalFileSystem()
    odb = HashFileDB(fs, str(tmp_path / "odb"))
    _, _, obj = build(odb, str(tree), fs, "md5")
    assert obj.hash_info.value == dvc_dir_hash(tree)


def test_dvc_dir_hash_changes_with_content_and_name(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "d")
    before = dvc_dir_hash(tree)
    (tree / "sub" / "b.csv").write_bytes(b"x\r\nz\n")
    changed = dvc_dir_hash(tree)
    assert changed != before
    (tree / "sub" / "b.csv").rename(tree / "sub" / "b2.csv")
    assert dvc_dir_hash(tree) not in {before, changed}


def test_dvc_dir_hash_ignores_gitignore_and_empty_dirs(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "d")
    before = dvc_dir_hash(tree)
    (tree / ".gitignore").write_text("/x\n")
    (tree / "sub" / ".gitignore").write_text("*.tmp\n")
    (tree / "empty").mkdir()
    assert dvc_dir_hash(tree) == before
    (tree / ".hidden").write_text("counted")
    assert dvc_dir_hash(tree) != before


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def no_outer_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep git from finding a repository above tmp_path, or one named by the environment."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@needs_git
def test_git_state_commit_and_dirty_flag(no_outer_repo: Path) -> None:
    repo = no_outer_repo / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("one\n")
    _git(repo, "add", "tracked.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    assert len(sha) == 40
    assert git_state(repo) == GitState(commit=sha, dirty=False)
    # Untracked files do not make the tree dirty.
    (repo / "untracked.txt").write_text("new\n")
    assert git_state(repo).dirty is False
    # A change to a tracked file does.
    (repo / "tracked.txt").write_text("two\n")
    assert git_state(repo) == GitState(commit=sha, dirty=True)
    _git(repo, "commit", "-q", "-am", "second")
    state = git_state(repo)
    assert state.dirty is False
    assert state.commit != sha
    assert state.commit == _git(repo, "rev-parse", "HEAD")


@needs_git
def test_git_state_outside_a_repo(no_outer_repo: Path) -> None:
    assert git_state(no_outer_repo) == GitState(commit="unknown", dirty=True)


@needs_git
def test_git_state_repo_without_commits(no_outer_repo: Path) -> None:
    _git(no_outer_repo, "init", "-q")
    assert git_state(no_outer_repo).commit == "unknown"


def test_git_state_missing_directory(tmp_path: Path) -> None:
    assert git_state(tmp_path / "nope") == GitState(commit="unknown", dirty=True)
