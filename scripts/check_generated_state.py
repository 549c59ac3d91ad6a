"""`make check`: `make demo` and `dvc repro` can only leave `git status` clean if everything they write
is git-ignored and untracked, and DVC's own project files are committed and not ignored.

Nothing is hard-coded that can be read: the written paths come from dvc.yaml (each stage's outs,
metrics and plots), the settings (state folder, splits, model cards) and params.yaml (the model's
name); the fixed ones are DVC's temporary files and Python's bytecode (a ``__pycache__`` beside every
tracked module). Files that must be in git: dvc.yaml, dvc.lock (DVC refuses to write a git-ignored
lock), the params file, ``.dvc/config``, every stage dependency no stage writes (code, data/field) and
each ``.gitignore`` that ignores a written path (a fresh clone has only what is committed).

tests/integration/test_clean_tree.py runs the real `edgeloop run` and `dvc repro` in a fresh clone
and checks that every file they wrote lies under a path :func:`written_paths` lists.

Usage: ``python scripts/check_generated_state.py [--root DIR] [--list]``; exit 1 with one line per
problem; ``--list`` prints the written paths.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ("dvc.yaml", "dvc.lock", ".dvc/config")
DVC_WRITES = (".dvc/tmp/", ".dvc/cache/", ".dvc/config.local")


@dataclass(frozen=True)
class Written:
    path: str  # relative to the root, POSIX; a trailing "/" marks a folder
    by: str  # what writes it, for the message


def _git(root: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, input=stdin, capture_output=True, text=True, check=True
    ).stdout


def _relative(root: Path, path: Path) -> str | None:
    """``path`` relative to the root, or None when it lies outside (an EDGELOOP_HOME elsewhere)."""
    absolute = path if path.is_absolute() else root / path
    try:
        return absolute.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _entries(items: list[Any] | None) -> list[str]:
    """Paths of a dvc.yaml list: plain strings or one-key mappings (``path: {cache: false}``)."""
    return [item if isinstance(item, str) else next(iter(item)) for item in items or []]


def dvc_stages(root: Path) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return stages


def written_paths(root: Path = ROOT) -> list[Written]:
    """Every path `edgeloop run`, `edgeloop fleet demo` and `dvc repro` write inside the project."""
    sys.path.insert(0, str(root))  # the settings of the tree being checked
    from edgeloop.core.settings import Settings

    settings = Settings()
    params = yaml.safe_load((root / settings.params_file).read_text()) or {}
    model = str(params.get("model_name", "model"))
    written: list[Written] = []
    for name, stage in dvc_stages(root).items():
        for key in ("outs", "metrics", "plots"):
            written += [
                Written(p, f"the {name} stage (dvc.yaml {key})") for p in _entries(stage.get(key))
            ]
    state = {
        settings.home: "edgeloop (EDGELOOP_HOME: MLflow, Prefect, keys, work, fleet demo)",
        settings.data_dir / "splits": "the ingest stage (settings.splits_dir)",
        settings.model_cards_dir / model: f"registration (model cards of {model})",
        settings.model_cards_dir / "any-model": "registration (model cards of any other model)",
    }
    for path, by in state.items():
        relative = _relative(root, path)
        if relative is not None and relative not in {w.path.rstrip("/") for w in written}:
            written.append(Written(relative + "/", by))
    written += [Written(p, "DVC") for p in DVC_WRITES]
    modules = sorted({Path(p).parent for p in _git(root, "ls-files", "*.py").splitlines()})
    written += [Written(f"{(d / '__pycache__').as_posix()}/", "Python (bytecode)") for d in modules]
    return written


def committed_paths(root: Path = ROOT) -> dict[str, str]:
    """Paths that must be tracked and not ignored, each with the reason."""
    stages = dvc_stages(root)
    outs = {
        p.rstrip("/")
        for s in stages.values()
        for k in ("outs", "metrics", "plots")
        for p in _entries(s.get(k))
    }
    required = {f: "a DVC project file; DVC refuses to write a git-ignored lock" for f in DVC_FILES}
    required["params.yaml"] = "the stages' params; DVC reads them from this file"
    for name, stage in stages.items():
        for dep in _entries(stage.get("deps")):
            if dep.rstrip("/") not in outs:
                required.setdefault(
                    dep.rstrip("/"), f"the {name} stage depends on it; no stage writes it"
                )
    return required


def _ignore_rules(root: Path, paths: list[str]) -> dict[str, tuple[str, str]]:
    """The paths that an ignore rule excludes: (the rule's file, ``file:line:pattern``).

    Patterns only (``--no-index``): whether a file is tracked is checked apart, and DVC asks whether
    its lock is ignored without looking at the index either."""
    out = _git(
        root,
        "check-ignore",
        "--no-index",
        "-v",
        "-n",
        "-z",
        "--stdin",
        stdin="\0".join(paths) + "\0",
    )
    fields = out.split("\0")
    result: dict[str, tuple[str, str]] = {}
    for i in range(0, len(fields) - 3, 4):
        source, line, pattern, path = fields[i : i + 4]
        if source and not pattern.startswith("!"):  # "!pattern" re-includes the path
            result[path] = (source, f"{source}:{line}:{pattern}")
    return result


def _under(files: set[str], path: str) -> list[str]:
    """The files of ``files`` that are ``path`` or lie under it."""
    path = path.rstrip("/")
    return sorted(f for f in files if f == path or f.startswith(path + "/"))


def problems(root: Path = ROOT) -> list[str]:
    found: list[str] = []
    written = written_paths(root)
    # A path DVC may write as a file or a folder is probed both ways; a folder only as a folder.
    probes = {w.path: [w.path] if w.path.endswith("/") else [w.path, w.path + "/"] for w in written}
    required = committed_paths(root)
    rules = _ignore_rules(
        root,
        [p for ps in probes.values() for p in ps] + [p + "/" for p in required] + list(required),
    )
    tracked_files = set(_git(root, "ls-files", "-z").split("\0")) - {""}
    for w in written:
        if any(p not in rules for p in probes[w.path]):
            found.append(f"{w.path}: written by {w.by}, but not git-ignored")
        for source in sorted({rules[p][0] for p in probes[w.path] if p in rules}):
            if _relative(root, root / source) not in tracked_files:
                found.append(
                    f"{w.path}: ignored by {source}, which is not committed (a fresh clone lacks it)"
                )
        tracked = _under(tracked_files, w.path)
        if tracked:
            found.append(
                f"{w.path}: written by {w.by}, but git tracks {len(tracked)} file(s) there "
                f"(git rm -r --cached {w.path.rstrip('/')})"
            )
    for path, why in required.items():
        if not _under(tracked_files, path):
            found.append(f"{path}: not committed ({why})")
        probe = path if (root / path).is_file() else path + "/"
        rule = rules.get(path) or rules.get(probe)
        if rule:
            found.append(f"{path}: git-ignored by {rule[1]} ({why})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--list", action="store_true", help="print the written paths and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(w.path for w in written_paths(args.root)))
        return 0
    found = problems(args.root)
    for line in found:
        print(f"generated state: {line}", file=sys.stderr)
    if found:
        return 1
    print("generated state: every path the demo and `dvc repro` write is git-ignored and untracked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
