"""Fixtures and report for the hardware-tests suite: one ONNX model checked against one profile.

The suite runs on the hardware runner itself, often a small device, so it imports only what the
on-device agent installs (numpy, onnxruntime, pyyaml, pydantic, psutil, pytest, ``fleet.agent``)
and runs the model through ``fleet.shared.runtime``, the code the device runs. It never imports
flows, registry, torch, mlflow or prefect: ``--model-uri`` fetches the model in a separate process
(``python -m registry.fetch``), so MLflow neither has to be installed on the device nor counts
against the memory measured and capped here. The build side (``flows.hardware``) starts the suite
as a subprocess and reads the JSON report written here at session end: that file (plus the exit
code) is the whole interface between them.

Emulating a smaller device happens here, before any session exists: the process is pinned to the
profile's ``cpu_affinity`` and its address space capped at ``memory_cap_mb`` (``flows.hardware``
also caps the interpreter from its first byte; a runner that calls pytest directly gets the cap
from here). A host that cannot stand in for the profile (another arch, its first execution
provider missing) skips every test with the reason and reports ``unavailable``, with exit code
:data:`EXIT_UNAVAILABLE`, never a pass.

Sizes and memory are in MB of 2**20 bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before numpy loads: one BLAS thread, as on a device. Each extra OpenBLAS thread reserves address
# space that a memory cap would count against the model (flows.hardware sets these too).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

from fleet.shared.modelspec import ModelSpec, read_spec  # noqa: E402
from fleet.shared.profile import (  # noqa: E402
    HardwareProfile,
    HardwareStatus,
    ProfileError,
    load_profile,
)
from fleet.shared.runtime import (  # noqa: E402
    ProviderUnavailableError,
    address_space_mb,
    cap_address_space,
    host_arch,
    host_info,
    is_allocation_failure,
    missing_providers,
    open_session,
    peak_rss_mb,
    pin_to_cores,
    scored_output,
    session_latency,
)

MB = 1024 * 1024
EXIT_UNAVAILABLE = 6
"""pytest's exit code when this host cannot stand in for the profile (pytest itself uses 0 to 5)."""
GOLDEN_BATCH = 16
"""Golden rows run through the model this many at a time: a device runs small batches, and one
batch of the whole golden set would hold activations a small device never holds."""
SUITE_SHARE = 0.9  # the suite alone may use this share of a memory cap before the model loads
SUITE_ENV_HINT = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 MALLOC_ARENA_MAX=2 and -p no:cacheprovider"


class _Run:
    """What this session learned: the checked inputs, the measurements and each test's outcome."""

    def __init__(
        self,
        profile: HardwareProfile,
        model: Path,
        golden: Path,
        reference: Path | None,
        report: Path | None,
        *,
        variant: str,
        model_uri: str | None = None,
    ) -> None:
        self.profile = profile
        self.model = model
        self.golden = golden
        self.reference = reference
        self.report = report
        self.variant = variant
        self.model_uri = model_uri
        self.sha256 = _sha256(model)  # now, before a memory cap could make reading it fail
        self.unavailable = ""  # why this host cannot stand in for the profile; empty when it can
        self.host: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.tests: dict[str, dict[str, str]] = {}
        self.workdir: tempfile.TemporaryDirectory[str] | None = None  # --model-uri downloads

    # Registered as a plugin in pytest_configure, so these hook methods see every test's report.

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.unavailable:
            skip = pytest.mark.skip(reason=self.unavailable)
            for item in items:
                item.add_marker(skip)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.split("::")[-1]
        entry = self.tests.setdefault(name, {"name": name, "outcome": "passed", "message": ""})
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
            message = _message(report)
            if self.profile.memory_cap_mb is not None and "MemoryError" in str(report.longrepr):
                message = (
                    f"model does not fit the memory cap of {self.profile.memory_cap_mb} MB on "
                    f"profile {self.profile.name}: MemoryError in {name} ({message})"
                )
            entry.update(outcome=outcome, message=message)
        elif report.skipped and entry["outcome"] == "passed":
            entry.update(outcome="skipped", message=_message(report))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.tests[report.nodeid] = {
                "name": report.nodeid,
                "outcome": "error",
                "message": _message(report),
            }

    def status(self, exitstatus: int) -> HardwareStatus:
        """Worst wins: a failed or errored test, then an unavailable host, then passed."""
        tests = self.tests.values()
        if any(t["outcome"] in ("failed", "error") for t in tests):
            return HardwareStatus.FAILED
        if self.unavailable:
            return HardwareStatus.UNAVAILABLE
        return HardwareStatus.FAILED if exitstatus != 0 else HardwareStatus.PASSED

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        status = self.status(exitstatus)
        if status is HardwareStatus.UNAVAILABLE:
            session.exitstatus = EXIT_UNAVAILABLE  # a CI job on the wrong runner must not go green
        if self.report is None:
            return
        tests = list(self.tests.values())
        failures = [t["message"] or t["name"] for t in tests if t["outcome"] in ("failed", "error")]
        report: dict[str, Any] = {
            "profile": self.profile.name,
            "variant": self.variant,
            "model": str(self.model),
            "model_uri": self.model_uri,
            "sha256": self.sha256,
            "status": str(status),
            "reason": self.unavailable
            if status is HardwareStatus.UNAVAILABLE
            else "; ".join(failures),
            "metrics": self.metrics,
            "tests": tests,
            "host": self.host,
            "profile_settings": self.profile.model_dump(mode="json"),
        }
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.write_text(json.dumps(report, indent=2) + "\n")

    def pytest_unconfigure(self) -> None:
        if self.workdir is not None:
            self.workdir.cleanup()


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
    group.addoption(
        "--model-uri",
        help="a registered model to fetch and check instead: models:/NAME@ALIAS, models:/NAME/VERSION "
        "or runs:/RUN_ID/variants/VARIANT.onnx (needs the full edgeloop install, with MLflow)",
    )
    group.addoption(
        "--variant",
        default=None,
        help="with --model-uri, the variant to fetch (default: the profile's pinned variant, then the "
        "version's edgeloop.hw.<profile>.variant and edgeloop.variant tags); with --model-path, "
        "its name in the report (default: the file's stem)",
    )
    group.addoption("--tracking-uri", default=None, help="MLflow tracking URI for --model-uri")
    group.addoption("--profile", help="hardware profile name (in --profiles-dir) or YAML path")
    group.addoption(
        "--golden",
        help=".npz with x (float32, n by d) and y (int64 labels); with --model-uri, defaults to "
        "the version's golden set",
    )
    group.addoption(
        "--reference",
        default=None,
        help="reference ONNX model for disagreement; with --model-uri, defaults to its fp32 variant",
    )
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


@dataclass(frozen=True)
class _Model:
    """The model to check and what it is checked against, from --model-path or --model-uri."""

    model: Path
    golden: Path
    reference: Path | None
    variant: str


def _fetch(config: pytest.Config, uri: str, profile: HardwareProfile, dest: Path) -> _Model:
    """Download the variant through ``python -m registry.fetch`` in a child process.

    A child, so MLflow (hundreds of MB) is never loaded into the process whose memory is measured
    and capped, and so a device with only the agent installed gets a clear error instead.
    """
    command = [sys.executable, "-m", "registry.fetch", uri, "--dest", str(dest)]
    command += ["--profile", profile.name]
    variant = config.getoption("variant") or profile.pinned_variant
    if variant:
        command += ["--variant", variant]
    if config.getoption("tracking_uri"):
        command += ["--tracking-uri", config.getoption("tracking_uri")]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no output"]
        if "No module named 'registry'" in proc.stderr or "No module named 'mlflow'" in proc.stderr:
            raise pytest.UsageError(
                f"--model-uri needs the full edgeloop install with MLflow ({lines[-1]}); "
                "on a small device fetch the variant elsewhere and pass --model-path"
            )
        raise pytest.UsageError(f"could not fetch {uri}: {lines[-1].removeprefix('error: ')}")
    fetched = json.loads(proc.stdout.strip().splitlines()[-1])
    golden = config.getoption("golden")
    reference = config.getoption("reference") or fetched["reference"]
    return _Model(
        model=Path(fetched["model"]),
        golden=Path(golden) if golden else Path(fetched["golden"]),
        reference=Path(reference) if reference else None,
        variant=str(fetched["variant"]),
    )


def _model(config: pytest.Config, profile: HardwareProfile, run_dir: Path | None) -> _Model:
    uri, path = config.getoption("model_uri"), config.getoption("model_path")
    if uri and path:
        raise pytest.UsageError("--model-uri and --model-path are mutually exclusive; give one")
    if uri:
        assert run_dir is not None
        chosen = _fetch(config, uri, profile, run_dir)
        for option, file in (("golden", chosen.golden), ("reference", chosen.reference)):
            if file is not None and not file.is_file():
                raise pytest.UsageError(f"{option} {file} not found")
        return chosen
    if not path:
        raise pytest.UsageError(
            "--model-path is required (the ONNX model file to check), or --model-uri"
        )
    model = _existing_file(config, "model_path", "model file")
    return _Model(
        model=model,
        golden=_existing_file(config, "golden", "golden set"),
        reference=(
            _existing_file(config, "reference", "reference model")
            if config.getoption("reference")
            else None
        ),
        variant=config.getoption("variant") or model.stem,
    )


def _unavailable(profile: HardwareProfile) -> str:
    """Why this host cannot stand in for ``profile``; empty when it can.

    Only the profile's first execution provider decides: it is what the profile is about (a GPU, an
    accelerator). A missing fallback provider is the model's problem on a host that otherwise
    fits, so it fails ``test_execution_providers`` instead.
    """
    if host_arch() != profile.arch:
        return f"profile {profile.name} targets {profile.arch}; this host is {host_arch()}"
    first = profile.execution_providers[0]
    if missing_providers([first]):
        return (
            f"{first} is not available in onnxruntime {ort.__version__} on this host "
            f"(available: {ort.get_available_providers()}), so profile {profile.name} cannot run here"
        )
    return ""


def _emulate(profile: HardwareProfile, run: _Run) -> None:
    """Pin cores and cap memory before any session exists; a core this host lacks is a usage error."""
    if profile.cpu_affinity is not None:
        try:
            pin_to_cores(profile.cpu_affinity)
        except NotImplementedError as exc:
            run.unavailable = f"profile {profile.name} pins cores: {exc}"
            return
        except ValueError as exc:
            raise pytest.UsageError(
                f"profile {profile.name} pins cores {list(profile.cpu_affinity)}: {exc}"
            ) from exc
    if profile.memory_cap_mb is not None:
        used = address_space_mb("VmSize")
        if used is not None and used > profile.memory_cap_mb * SUITE_SHARE:
            raise pytest.UsageError(
                f"the suite already uses {used:.0f} MB of address space before loading the model, "
                f"too close to profile {profile.name}'s memory cap of {profile.memory_cap_mb} MB; "
                f"start it as flows.hardware does, with {SUITE_ENV_HINT}"
            )
        try:
            cap_address_space(profile.memory_cap_mb)
        except NotImplementedError as exc:
            run.unavailable = f"profile {profile.name} caps memory: {exc}"


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
    workdir = (
        tempfile.TemporaryDirectory(prefix="edgeloop-hw-")
        if config.getoption("model_uri")
        else None
    )
    try:
        chosen = _model(config, profile, Path(workdir.name) if workdir else None)
    except BaseException:
        if workdir is not None:
            workdir.cleanup()
        raise
    report = config.getoption("report")
    run = _Run(
        profile,
        chosen.model,
        chosen.golden,
        chosen.reference,
        Path(report) if report else None,
        variant=chosen.variant,
        model_uri=config.getoption("model_uri"),
    )
    run.workdir = workdir
    run.unavailable = _unavailable(profile)
    if not run.unavailable:
        _emulate(profile, run)
    run.host = host_info() | {"pinned_cores": profile.cpu_affinity}
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
        x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"])
        y = y.astype(np.float32 if y.dtype.kind == "f" else np.int64)  # targets, or class labels
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        pytest.fail(
            f"golden set {run.golden}: x must be n by d and y n labels (got {x.shape}, {y.shape})",
            pytrace=False,
        )
    return x, y


@dataclass(frozen=True)
class Loaded:
    """The model opened under the profile and run once on the golden set, or why it could not be.

    ``problem`` is set when the profile's limits stopped the model (a missing execution provider,
    memory beyond the cap): ``test_execution_providers`` or ``test_fits_memory_cap`` fails with it
    and every measurement that needs the model skips with it, so the report names the cause once.
    Any other error (a corrupt model) propagates and errors every test.
    """

    session: ort.InferenceSession | None = None
    spec: ModelSpec | None = None
    raw: np.ndarray | None = None  # the scored output as the graph emits it
    outputs: np.ndarray | None = None  # its scores: probabilities (softmax of logits) or values
    problem: str = ""
    kind: str = ""  # "provider" or "memory" when problem is set


def _does_not_fit(profile: HardwareProfile, exc: BaseException) -> Loaded:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = (
        f"the memory cap of {profile.memory_cap_mb} MB"
        if profile.memory_cap_mb is not None
        else "the memory of this host"
    )
    problem = (
        f"model does not fit {where} on profile {profile.name}: onnxruntime failed to allocate "
        f"({type(exc).__name__}: {detail[:300]})"
    )
    return Loaded(problem=problem, kind="memory")


@pytest.fixture(scope="session")
def loaded(run: _Run, profile: HardwareProfile, golden: tuple[np.ndarray, np.ndarray]) -> Loaded:
    start = time.perf_counter()
    try:
        session = open_session(
            str(run.model), threads=profile.threads, providers=profile.execution_providers
        )
        run.metrics["load_ms"] = (time.perf_counter() - start) * 1e3
        run.host["session_providers"] = list(session.get_providers())
        spec = read_spec(session)
        raw = scored_output(session, golden[0], spec, batch=GOLDEN_BATCH)
    except ProviderUnavailableError as exc:
        return Loaded(
            problem=f"execution provider(s) {exc.missing} of profile {profile.name} are not "
            f"installed in onnxruntime {ort.__version__} on this host (available: {exc.available})",
            kind="provider",
        )
    except Exception as exc:
        if is_allocation_failure(exc):
            return _does_not_fit(profile, exc)
        raise
    return Loaded(
        session=session,
        spec=spec,
        raw=raw,
        outputs=spec.scores({spec.scored.name: raw}),
    )


def _measured(value: Any, loaded: Loaded) -> Any:
    if value is None:
        pytest.skip(f"not measured: {loaded.problem}")
    return value


@pytest.fixture(scope="session")
def model_session(loaded: Loaded) -> ort.InferenceSession:
    return _measured(loaded.session, loaded)


@pytest.fixture(scope="session")
def outputs(loaded: Loaded) -> np.ndarray:
    """The model's scores on the whole golden set, in one batch (``ModelSpec.scores``)."""
    return _measured(loaded.outputs, loaded)


@pytest.fixture(scope="session")
def raw_outputs(loaded: Loaded) -> np.ndarray:
    """The scored output on the golden set as the graph emits it (before any softmax)."""
    return _measured(loaded.raw, loaded)


@pytest.fixture(scope="session")
def spec(loaded: Loaded) -> ModelSpec:
    """The model's contract, as stored in its file."""
    return _measured(loaded.spec, loaded)


@pytest.fixture(scope="session")
def metrics(
    run: _Run,
    profile: HardwareProfile,
    model_session: ort.InferenceSession,
    golden: tuple[np.ndarray, np.ndarray],
    outputs: np.ndarray,
    spec: ModelSpec,
) -> dict[str, float]:
    """Latency, accuracy, size and peak memory, measured the way the device runs the model."""
    x, y = golden
    stats = session_latency(
        model_session, x, warmup=profile.warmup_runs, runs=profile.timed_runs, spec=spec
    )
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
        if spec.task == "classification":
            run.metrics["accuracy"] = float(np.mean(np.argmax(outputs, axis=1) == y))
        else:
            run.metrics["mae"] = float(np.mean(np.abs(outputs[:, 0] - y)))
    # Before the reference model is loaded, which would count against this model's memory.
    run.metrics["peak_rss_mb"] = peak_rss_mb()
    peak_vm = address_space_mb("VmPeak")  # what an address-space cap is measured against
    if peak_vm is not None:
        run.metrics["peak_vm_mb"] = peak_vm
    return run.metrics


@pytest.fixture(scope="session")
def disagreement(
    run: _Run,
    golden: tuple[np.ndarray, np.ndarray],
    metrics: dict[str, float],
    outputs: np.ndarray,
) -> float | None:
    """Share of golden rows whose argmax differs from the reference model's; None without one,
    and for a regressor (its ``mae`` metric is measured against the golden targets instead)."""
    if run.reference is None or outputs.shape[1] == 1:
        return None
    try:
        theirs = _scores(open_session(str(run.reference)), golden[0])
    except Exception as exc:  # the reference shares this process and its memory cap
        if not is_allocation_failure(exc):
            raise
        pytest.fail(
            f"the reference model does not fit beside the model under the memory cap: {exc}"[:500],
            pytrace=False,
        )
    if theirs.shape != outputs.shape:
        pytest.fail(
            f"reference outputs have shape {theirs.shape}, the model's {outputs.shape}",
            pytrace=False,
        )
    value = float(np.mean(np.argmax(outputs, axis=1) != np.argmax(theirs, axis=1)))
    metrics["disagreement"] = value
    metrics["agreement"] = 1.0 - value
    return value


def _scores(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    spec = read_spec(session)
    return spec.scores({spec.scored.name: scored_output(session, rows, spec, batch=GOLDEN_BATCH)})


def _sha256(path: Path) -> str:
    """Not ``fleet.shared.signature.file_sha256``: that module loads cryptography, which would
    count against the memory this process measures and caps."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
