"""Lineage facts recorded on every version: the code's git state and the data's hash.

The data hash is computed the way DVC hashes a directory, so ``edgeloop.data.hash`` on a version
equals the ``md5`` that ``dvc.lock`` records for the same splits.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool


def git_state(repo: Path = Path()) -> GitState:
    """The HEAD commit and whether tracked files differ from it; ``unknown`` outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return GitState(commit="unknown", dirty=True)
    return GitState(commit=commit, dirty=dirty)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_dir_hash(directory: Path) -> str:
    """DVC's directory hash: md5 of the sorted (relpath, md5) listing, with the ``.dir`` suffix."""
    entries = [
        {"md5": _md5(path), "relpath": path.relative_to(directory).as_posix()}
        for path in sorted(
            p for p in directory.rglob("*") if p.is_file() and p.name != ".gitignore"
        )
    ]
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"
