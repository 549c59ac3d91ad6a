"""fleet.shared.profile: hardware profiles and their budgets."""

import re
from pathlib import Path

import pytest

from fleet.shared.profile import (
    AUTO,
    Budgets,
    HardwareProfile,
    HardwareStatus,
    ProfileError,
    load_profile,
)

PROFILES = Path(__file__).resolve().parents[2] / "hardware-tests" / "profiles"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_host_cpu_profile() -> None:
    profile = load_profile("host-cpu", PROFILES)
    assert profile.name == "host-cpu"
    assert profile.arch == "x86_64"
    assert profile.execution_providers == ("CPUExecutionProvider",)
    assert profile.threads == 1
    assert profile.cpu_affinity is None
    assert profile.memory_cap_mb is None
    assert profile.variant == AUTO and profile.pinned_variant is None
    assert profile.runner == "local"
    assert (profile.warmup_runs, profile.timed_runs) == (50, 1000)
    assert profile.budgets == Budgets(
        p95_latency_ms=5,
        model_size_mb=4,
        min_accuracy=0.9,
        peak_memory_mb=1024,
        max_disagreement=0.03,
    )
    assert "one intra-op thread" in profile.description


def test_edge_small_profile_by_path() -> None:
    profile = load_profile(str(PROFILES / "edge-small.yaml"), PROFILES)
    assert profile.name == "edge-small"
    assert profile.threads == 1
    assert profile.cpu_affinity == (0,)
    assert profile.memory_cap_mb == 256
    assert profile.variant == AUTO and profile.runner == "local"
    assert profile.budgets == Budgets(
        p95_latency_ms=2,
        model_size_mb=1,
        min_accuracy=0.9,
        peak_memory_mb=128,
        max_disagreement=0.03,
    )


def test_gpu_cuda_profile() -> None:
    profile = load_profile("gpu-cuda", PROFILES)
    assert profile.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert profile.runner == "local"
    assert profile.memory_cap_mb is None  # CUDA maps far more address space than it uses


@pytest.mark.parametrize(
    ("name", "providers", "threads"),
    [
        ("rpi4-arm64", ("CPUExecutionProvider",), 4),
        (
            "jetson-orin-trt",
            ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
            2,
        ),
    ],
)
def test_device_profiles_run_on_pools(name: str, providers: tuple[str, ...], threads: int) -> None:
    profile = load_profile(name, PROFILES)
    assert profile.arch == "aarch64"
    assert profile.execution_providers == providers
    assert profile.threads == threads
    assert profile.runner == "pool"
    text = (PROFILES / f"{name}.yaml").read_text()
    assert f"hw-{name}" in text and f"labelled `{name}`" in text


def test_every_shipped_profile_is_complete_and_labelled_for_a_runner() -> None:
    names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    assert names == ["edge-small", "gpu-cuda", "host-cpu", "jetson-orin-trt", "rpi4-arm64"]
    for name in names:
        profile = load_profile(name, PROFILES)
        assert profile.name == name
        assert profile.timed_runs >= 1000
        assert profile.variant == AUTO
        assert None not in profile.budgets.model_dump().values(), name
        assert f"labelled `{name}`" in (PROFILES / f"{name}.yaml").read_text()


def test_shipped_profiles_are_tighter_on_the_small_device() -> None:
    host = load_profile("host-cpu", PROFILES).budgets
    edge = load_profile("edge-small", PROFILES).budgets
    assert edge.p95_latency_ms < host.p95_latency_ms
    assert edge.model_size_mb < host.model_size_mb


def test_minimal_profile_gets_defaults(tmp_path: Path) -> None:
    write(tmp_path, "tiny", "name: tiny\n")
    profile = load_profile("tiny", tmp_path)
    assert profile == HardwareProfile(name="tiny")
    assert profile.budgets == Budgets()
    assert profile.budgets.p95_latency_ms is None


def test_unknown_top_level_key(tmp_path: Path) -> None:
    write(tmp_path, "typo", "name: typo\nthread: 2\n")
    with pytest.raises(ProfileError, match=r"thread: Extra inputs are not permitted"):
        load_profile("typo", tmp_path)


def test_unknown_budget_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "typo", "name: typo\nbudgets: {p95_latency: 3}\n")
    with pytest.raises(ProfileError) as info:
        load_profile("typo", tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "budgets.p95_latency: Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("budgets", "key"),
    [
        ("{p95_latency_ms: -1}", "budgets.p95_latency_ms"),
        ("{p95_latency_ms: 0}", "budgets.p95_latency_ms"),
        ("{min_accuracy: 1.5}", "budgets.min_accuracy"),
        ("{max_disagreement: -0.1}", "budgets.max_disagreement"),
        ("{model_size_mb: -4}", "budgets.model_size_mb"),
    ],
)
def test_impossible_budget(tmp_path: Path, budgets: str, key: str) -> None:
    write(tmp_path, "bad", f"name: bad\nbudgets: {budgets}\n")
    with pytest.raises(ProfileError, match=re.escape(f"is invalid: {key}: ")):
        load_profile("bad", tmp_path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: Bad_Name\n", "name"),
        ("name: x\nthreads: 0\n", "threads"),
        ("name: x\ntimed_runs: 5\n", "timed_runs"),
        ("description: no name\n", "name"),
        ("name: x\nexecution_providers: []\n", "execution_providers"),
        ("name: x\nrunner: cloud\n", "runner"),
        ("name: x\nvariant: ''\n", "variant"),
        ("name: x\ncpu_affinity: []\n", "cpu_affinity"),
        ("name: x\ncpu_affinity: [-1]\n", "cpu_affinity.0"),
        ("name: x\nmemory_cap_mb: 0\n", "memory_cap_mb"),
    ],
)
def test_invalid_fields(tmp_path: Path, text: str, key: str) -> None:
    write(tmp_path, "bad", text)
    with pytest.raises(ProfileError, match=re.escape(f"is invalid: {key}: ")):
        load_profile("bad", tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "memory_cap_mb: 256\nbudgets: {peak_memory_mb: 512}\n",
            "budgets.peak_memory_mb: 512 MB is above memory_cap_mb (256 MB), so it could never "
            "be reached",
        ),
        (
            "threads: 4\ncpu_affinity: [0, 1]\n",
            "threads: 4 threads but cpu_affinity pins only 2 core(s)",
        ),
        ("cpu_affinity: [0, 0]\n", "cpu_affinity: a core is listed twice in [0, 0]"),
        (
            "execution_providers: [CPUExecutionProvider, CPUExecutionProvider]\n",
            "execution_providers: listed twice in ['CPUExecutionProvider', 'CPUExecutionProvider']",
        ),
    ],
)
def test_settings_that_could_never_pass_name_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "bad", f"name: bad\n{text}")
    with pytest.raises(ProfileError) as info:
        load_profile("bad", tmp_path)
    assert str(info.value) == f"hardware profile {path} is invalid: {message}"


def test_every_contradiction_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "bad", "name: bad\nthreads: 2\ncpu_affinity: [3]\nmemory_cap_mb: 64\n"
          "budgets: {peak_memory_mb: 65}\n")  # fmt: skip
    with pytest.raises(ProfileError, match=r"threads: 2 threads .*; budgets.peak_memory_mb: 65 MB"):
        load_profile("bad", tmp_path)


def test_budget_at_the_cap_and_threads_on_every_pinned_core_are_fine(tmp_path: Path) -> None:
    write(tmp_path, "edge", "name: edge\nthreads: 2\ncpu_affinity: [2, 3]\nmemory_cap_mb: 64\n"
          "budgets: {peak_memory_mb: 64}\nvariant: int8-static\nrunner: pool\n")  # fmt: skip
    profile = load_profile("edge", tmp_path)
    assert profile.pinned_variant == "int8-static" and profile.runner == "pool"


def test_status_only_passed_is_a_pass() -> None:
    assert [s.value for s in HardwareStatus] == ["failed", "unavailable", "passed"]
    assert [s.is_pass() for s in HardwareStatus] == [False, False, True]
    assert HardwareStatus("unavailable") == "unavailable"


def test_invalid_yaml(tmp_path: Path) -> None:
    write(tmp_path, "broken", "name: [unclosed\n")
    with pytest.raises(ProfileError, match="is not valid YAML"):
        load_profile("broken", tmp_path)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("jetson", PROFILES)
    assert str(info.value) == (
        "hardware profile 'jetson' not found (known: ['edge-small', 'gpu-cuda', 'host-cpu', "
        "'jetson-orin-trt', 'rpi4-arm64'])"
    )


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)
