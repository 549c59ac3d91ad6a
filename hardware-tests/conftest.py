"""Fixtures and report for the hardware-tests suite: one ONNX model checked against one profile.

The suite runs on the hardware runner itself, often a small device, so it imports only what the
on-device agent installs (numpy, onnxruntime, pyyaml, pydantic, psutil, pytest, ``fleet.agent``)
and runs the model through ``fleet.agent.runtime``, the code the device runs. It never imports
flows, registry, torch, mlflow or prefect. The build side (``flows.hardware``) starts it as a
subprocess and reads the JSON report written here at session end: that file (plus the exit code)
is the whole interface between them.

Sizes and memory are in MB of 2**20 bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pytest

from fleet.agent.profile import HardwareProfile, ProfileError, load_profile
from fleet.agent.runtime import open_session, predict, session_latency

MB = 1024 * 1024


class _Run:
    """What this session learned: the checked inputs, the measurements and each test's outcome."""

    def __init__(
        self,
        profile: HardwareProfile,
        model: Path,
        golden: Path,
        reference: Path | None,
        report: Path | None,
    ) -> None:
        self.profile = profile
        self.model = model
        self.golden = golden
        self.reference = reference
        self.report = report
        self.metrics: dict[str, float] = {}
        self.tests: dict[str, dict[str, str]] = {}

    # Registered as a plugin in pytest_configure, so these hook methods see every test's report.

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.split("::")[-1]
        entry = self.tests.setdefault(name, {"name": name, "outcome": "passed", "message": ""})
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
            entry.update(outcome=outcome, message=_message(report))
        elif report.skipped and entry["outcome"] == "passed":
            entry.update(outcome="skipped", message=_message(report))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.tests[report.nodeid] = {
                "name": report.nodeid,
                "outcome": "error",
                "message": _message(report),
            }

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        if self.report is None:
            return
        tests = list(self.tests.values())
        failed = exitstatus != 0 or any(t["outcome"] in ("failed", "error") for t in tests)
        report: dict[str, Any] = {
            "profile": self.profile.name,
            "model": str(self.model),
            "sha256": _sha256(self.model),
            "status": "failed" if failed else "passed",
            "metrics": self.metrics,
            "tests": tests,
        }
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.write_text(json.dumps(report, indent=2) + "\n")


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The one-line reason a test failed, errored or was skipped; empty when it passed."""
    longrepr = report.longrepr
    if report.passed or longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    message = str(crash.message if crash is not None else longrepr).strip()
    return message.removeprefix("Failed: ")  # pytest.fail(...) adds it


RUN = pytest.StashKey[_Run]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hardware", "edgeloop hardware tests")
    group.addoption("--model-path", help="ONNX model file to check")
    group.addoption("--profile", help="hardware profile name (in --profiles-dir) or YAML path")
    group.addoption("--golden", help=".npz with x (float32, n by d) and y (int64 labels)")
    group.addoption("--reference", default=None, help="reference ONNX model for disagreement")
    group.addoption("--report", default=None, help="write a JSON report here at session end")
    group.addoption(
        "--profiles-dir",
        default=str(Path(__file__).parent / "profiles"),
        help="folder of profile YAML files (default: profiles/ next to this conftest)",
    )


def _existing_file(config: pytest.Config, option: str, what: str) -> Path:
    value = config.getoption(option)
    if not value:
        raise pytest.UsageError(f"--{option.replace('_', '-')} is required ({what})")
    path = Path(value)
    if not path.is_file():
        raise pytest.UsageError(f"{what} {path} not found")
    return path


def pytest_configure(config: pytest.Config) -> None:
    # Bad inputs are usage errors (exit code 4), never test failures: a missing file or a typo in a
    # profile says nothing about the model.
    if config.getoption("help"):
        return
    name = config.getoption("profile")
    if not name:
        raise pytest.UsageError("--profile is required (a profile name or a YAML path)")
    try:
        profile = load_profile(name, Path(config.getoption("profiles_dir")))
    except ProfileError as exc:
        raise pytest.UsageError(str(exc)) from exc
    model = _existing_file(config, "model_path", "model file")
    golden = _existing_file(config, "golden", "golden set")
    reference = (
        _existing_file(config, "reference", "reference model")
        if config.getoption("reference")
        else None
    )
    report = config.getoption("report")
    run = _Run(profile, model, golden, reference, Path(report) if report else None)
    config.stash[RUN] = run
    config.pluginmanager.register(run, "edgeloop-hardware-run")


@pytest.fixture(scope="session")
def run(pytestconfig: pytest.Config) -> _Run:
    return pytestconfig.stash[RUN]


@pytest.fixture(scope="session")
def profile(run: _Run) -> HardwareProfile:
    return run.profile


@pytest.fixture(scope="session")
def golden(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """The golden set ``(x, y)``; a malformed file errors every test that needs it."""
    with np.load(run.golden) as data:
        if "x" not in data or "y" not in data:
            pytest.fail(f"golden set {run.golden} must hold arrays 'x' and 'y'", pytrace=False)
        x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        pytest.fail(
            f"golden set {run.golden}: x must be n by d and y n labels (got {x.shape}, {y.shape})",
            pytrace=False,
        )
    return x, y


@pytest.fixture(scope="session")
def model_session(run: _Run, profile: HardwareProfile) -> ort.InferenceSession:
    start = time.perf_counter()
    session = open_session(
        str(run.model), threads=profile.threads, providers=profile.execution_providers
    )
    run.metrics["load_ms"] = (time.perf_counter() - start) * 1e3
    return session


@pytest.fixture(scope="session")
def outputs(
    run: _Run, model_session: ort.InferenceSession, golden: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The model's outputs on the whole golden set, in one batch."""
    return predict(model_session, golden[0])


def _peak_rss_mb() -> float:
    """Peak resident memory of this process.

    On Linux ``ru_maxrss`` survives exec, so a suite started from a large parent (a flow with torch
    loaded) would report the parent's peak; ``VmHWM`` belongs to this process image alone.
    """
    if sys.platform.startswith("linux"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    if sys.platform == "darwin":
        import resource  # not on Windows

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB
    return psutil.Process().memory_info().rss / MB


@pytest.fixture(scope="session")
def metrics(
    run: _Run,
    profile: HardwareProfile,
    model_session: ort.InferenceSession,
    golden: tuple[np.ndarray, np.ndarray],
    outputs: np.ndarray,
) -> dict[str, float]:
    """Latency, accuracy, size and peak memory, measured the way the device runs the model."""
    x, y = golden
    stats = session_latency(model_session, x, warmup=profile.warmup_runs, runs=profile.timed_runs)
    run.metrics.update(
        p50_ms=stats.p50_ms,
        p95_ms=stats.p95_ms,
        p99_ms=stats.p99_ms,
        mean_ms=stats.mean_ms,
        throughput_per_s=stats.throughput_per_s,
        runs=stats.runs,
        model_size_mb=run.model.stat().st_size / MB,
    )
    if outputs.ndim == 2 and len(outputs) == len(y):
        run.metrics["accuracy"] = float(np.mean(np.argmax(outputs, axis=1) == y))
    # Before the reference model is loaded, which would count against this model's memory.
    run.metrics["peak_rss_mb"] = _peak_rss_mb()
    return run.metrics


@pytest.fixture(scope="session")
def disagreement(
    run: _Run,
    golden: tuple[np.ndarray, np.ndarray],
    metrics: dict[str, float],
    outputs: np.ndarray,
) -> float | None:
    """Share of golden rows whose argmax differs from the reference model's; None without one."""
    if run.reference is None:
        return None
    theirs = predict(open_session(str(run.reference)), golden[0])
    if theirs.shape != outputs.shape:
        pytest.fail(
            f"reference outputs have shape {theirs.shape}, the model's {outputs.shape}",
            pytrace=False,
        )
    value = float(np.mean(np.argmax(outputs, axis=1) != np.argmax(theirs, axis=1)))
    metrics["disagreement"] = value
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
