"""Hardware checks: run the ``hardware-tests`` suite on one model against one hardware profile.

The suite runs in its own process, the way it runs on a hardware runner: it imports only what a
small device installs, and its measurements (peak memory above all) must not include this process's
torch, mlflow and prefect. The two sides share nothing but the command line, pytest's exit code and
the JSON report the suite writes; this module turns those into a ``ProfileResult``.

A failed budget is a result (``status == "failed"``). A suite that could not judge the model at all
(bad profile, missing file, crash, timeout) raises ``HardwareCheckError`` instead.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.errors import HardwareCheckError

TAIL_LINES = 8


@dataclass(frozen=True)
class ProfileResult:
    """The suite's verdict on one model for one profile, read from its JSON report."""

    profile: str
    status: str  # "passed" | "failed"
    metrics: dict[str, float]
    failures: list[str]  # messages of failed and errored tests
    junit_path: Path
    report_path: Path

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def write_golden(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """Save the golden set the suite reads: ``x`` float32 n by d, ``y`` int64 labels."""
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"golden x must be n by d and y n labels (got {x.shape}, {y.shape})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object, so np.savez does not append ".npz"
        np.savez(f, x=x, y=y)
    return path


def _tail(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:]) or "no output"


def run_profile(
    model_path: Path,
    profile: str,
    golden: Path,
    out_dir: Path,
    *,
    reference: Path | None = None,
    suite_dir: Path = Path("hardware-tests"),
    profiles_dir: Path | None = None,
    timeout_s: float = 600,
) -> ProfileResult:
    """Run the suite; junit.xml, report.json and pytest.log land in ``out_dir/<profile>/``."""
    label = Path(profile).stem if Path(profile).suffix else profile
    target = out_dir / label
    target.mkdir(parents=True, exist_ok=True)
    junit, report = target / "junit.xml", target / "report.json"
    for stale in (junit, report):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", str(suite_dir), "-p", "no:cacheprovider", "-q",
        "--model-path", str(model_path), "--profile", profile, "--golden", str(golden),
        "--report", str(report), f"--junitxml={junit}",
    ]  # fmt: skip
    if reference is not None:
        command += ["--reference", str(reference)]
    if profiles_dir is not None:
        command += ["--profiles-dir", str(profiles_dir)]
    hint = f"fix what the output names, or run `{shlex.join(command)}` to see all of it"

    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        partial = b"".join(
            s if isinstance(s, bytes) else s.encode() for s in (exc.stdout, exc.stderr) if s
        )
        raise HardwareCheckError(
            f"hardware tests for profile {profile!r} timed out after {timeout_s:g} s: "
            f"{_tail(partial.decode(errors='replace'))}",
            hint="raise timeout_s or lower the profile's timed_runs",
        ) from exc
    output = proc.stdout + proc.stderr
    (target / "pytest.log").write_text(output)
    if proc.returncode not in (0, 1) or not report.is_file():
        raise HardwareCheckError(
            f"hardware tests for profile {profile!r} could not run "
            f"(pytest exit code {proc.returncode}{', no report' if not report.is_file() else ''}): "
            f"{_tail(output)}",
            hint=hint,
        )
    try:
        data = json.loads(report.read_text())
        return ProfileResult(
            profile=str(data["profile"]),
            status=str(data["status"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            failures=[
                t["message"] or t["name"]
                for t in data["tests"]
                if t["outcome"] in ("failed", "error")
            ],
            junit_path=junit,
            report_path=report,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise HardwareCheckError(
            f"hardware tests for profile {profile!r} wrote an unreadable report {report}: {exc}",
            hint=hint,
        ) from exc
