"""Hardware checks: run the ``hardware-tests`` suite on one model against one hardware profile.

The suite runs in its own process, the way it runs on a hardware runner: it imports only what a
small device installs, and its measurements (peak memory above all) must not include this process's
torch, mlflow and prefect. The two sides share nothing but the command line, pytest's exit code and
the JSON report the suite writes; this module turns those into a ``ProfileResult``.

A profile with ``memory_cap_mb`` gets an address-space cap (RLIMIT_AS) on that process from its
first instruction: a launcher sets the limit and execs the interpreter, rather than a
``preexec_fn``, which is unsafe in a process with threads (a Prefect flow has several).

A failed budget is a result (``status == "failed"``), and so is a host that cannot stand in for
the profile (``"unavailable"``, never a pass). A suite that could not judge the model at all (bad
profile, missing file, timeout) raises ``HardwareCheckError`` instead.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile, HardwareStatus, ProfileError, load_profile

TAIL_LINES = 8
EXIT_UNAVAILABLE = 6  # hardware-tests/conftest.py: this host cannot stand in for the profile
SUITE_EXIT_CODES = (0, 1, EXIT_UNAVAILABLE)  # the suite judged the model (and wrote a report)

# The suite's process as a device runs it: one BLAS/OpenMP thread (onnxruntime has its own pool,
# sized by the profile), few malloc arenas, and no pytest plugins beyond pytest's own, since a
# device installs none. Each of these also shrinks the address space the cap has to leave room for.
SUITE_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
}

# Sets the soft address-space limit (argv[1] bytes) and execs argv[2:], so the cap holds from the
# interpreter's first byte; the hard limit stays, so the suite's own children may lift it again.
_CAPPED_EXEC = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@dataclass(frozen=True)
class ProfileResult:
    """The suite's verdict on one model for one profile, read from its JSON report.

    ``status`` is a :class:`fleet.shared.profile.HardwareStatus` value: ``passed``, ``failed`` or
    ``unavailable`` (this host cannot stand in for the profile; ``reason`` says why).
    """

    profile: str
    status: str
    metrics: dict[str, float]
    failures: list[str]  # messages of failed and errored tests
    junit_path: Path
    report_path: Path
    variant: str = ""
    sha256: str = ""
    reason: str = ""  # why it is unavailable, or the failures joined; empty when passed
    host: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return HardwareStatus(self.status).is_pass()


def write_golden(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """Save the golden set the suite reads: ``x`` float32 n by d, ``y`` int64 labels (float32
    targets for a regressor)."""
    y = np.asarray(y)
    x, y = (
        np.asarray(x, dtype=np.float32),
        y.astype(np.float32 if y.dtype.kind == "f" else np.int64),
    )
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"golden x must be n by d and y n labels (got {x.shape}, {y.shape})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object, so np.savez does not append ".npz"
        np.savez(f, x=x, y=y)
    return path


def _tail(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:]) or "no output"


def read_result(profile: str, report: Path, junit: Path, *, hint: str = "") -> ProfileResult:
    """The suite's verdict from its JSON report (wherever it ran: here, a container, a device).

    Raises ``HardwareCheckError`` when the report is missing or is not one the suite writes.
    """
    try:
        data = json.loads(report.read_text())
        return ProfileResult(
            profile=str(data["profile"]),
            status=str(HardwareStatus(data["status"])),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            failures=[
                t["message"] or t["name"]
                for t in data["tests"]
                if t["outcome"] in ("failed", "error")
            ],
            junit_path=junit,
            report_path=report,
            variant=str(data.get("variant", "")),
            sha256=str(data.get("sha256", "")),
            reason=str(data.get("reason", "")),
            host=dict(data.get("host") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HardwareCheckError(
            f"hardware tests for profile {profile!r} left no readable report {report}: "
            f"{type(exc).__name__}: {exc}",
            hint=hint or "see the suite's log (pytest.log next to the report)",
        ) from exc


def crashed_under_cap(
    profile: HardwareProfile, how: str, output: str, junit: Path, report: Path
) -> ProfileResult:
    """The suite died (a signal, the OOM killer) under a memory cap: the model did not fit.

    Writes the report the suite could not, so every result has one to log.
    """
    message = (
        f"model does not fit the memory cap of {profile.memory_cap_mb} MB on profile "
        f"{profile.name}: the suite {how} ({_tail(output)})"
    )
    data = {
        "profile": profile.name,
        "status": str(HardwareStatus.FAILED),
        "reason": message,
        "metrics": {},
        "tests": [{"name": "test_fits_memory_cap", "outcome": "failed", "message": message}],
    }
    report.write_text(json.dumps(data, indent=2) + "\n")
    return read_result(profile.name, report, junit)


def resolve_profile(profile: str, profiles_dir: Path) -> HardwareProfile:
    """Load ``profile`` for the build side; an invalid one is a ``HardwareCheckError``."""
    try:
        return load_profile(profile, profiles_dir)
    except ProfileError as exc:
        raise HardwareCheckError(str(exc), hint="fix the profile file or gates.profiles") from exc


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
    spec = resolve_profile(profile, profiles_dir or suite_dir / "profiles")
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
    capped = spec.memory_cap_mb is not None and sys.platform.startswith("linux")
    if capped:
        assert spec.memory_cap_mb is not None
        cap = str(spec.memory_cap_mb * 1024 * 1024)
        command = [sys.executable, "-c", _CAPPED_EXEC, cap, *command]

    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **SUITE_ENV},
        )
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
    if capped and proc.returncode < 0 and not report.is_file():
        try:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-proc.returncode}"
        return crashed_under_cap(spec, how, output, junit, report)
    if proc.returncode not in SUITE_EXIT_CODES or not report.is_file():
        if capped and ("MemoryError" in output or "failed to map segment" in output):
            hint = (
                f"the suite itself (python, numpy, onnxruntime, pytest: about 200 MB of address "
                f"space) does not fit memory_cap_mb {spec.memory_cap_mb}; raise it"
            )
        raise HardwareCheckError(
            f"hardware tests for profile {profile!r} could not run "
            f"(pytest exit code {proc.returncode}{', no report' if not report.is_file() else ''}): "
            f"{_tail(output)}",
            hint=hint,
        )
    return read_result(profile, report, junit, hint=hint)
