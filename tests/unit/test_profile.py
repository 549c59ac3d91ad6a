"""fleet.agent.profile: hardware profiles and their budgets."""

import re
from pathlib import Path

import pytest

from fleet.agent.profile import Budgets, HardwareProfile, ProfileError, load_profile

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
    assert profile.variant == "chosen"
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
    assert profile.cpu_affinity == (0,)
    assert profile.memory_cap_mb == 512
    assert profile.budgets.p95_latency_ms == 2
    assert profile.budgets.model_size_mb == 1
    assert profile.budgets.peak_memory_mb == 512


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
    ],
)
def test_invalid_fields(tmp_path: Path, text: str, key: str) -> None:
    write(tmp_path, "bad", text)
    with pytest.raises(ProfileError, match=re.escape(f"is invalid: {key}: ")):
        load_profile("bad", tmp_path)


def test_invalid_yaml(tmp_path: Path) -> None:
    write(tmp_path, "broken", "name: [unclosed\n")
    with pytest.raises(ProfileError, match="is not valid YAML"):
        load_profile("broken", tmp_path)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("jetson", PROFILES)
    assert str(info.value) == (
        "hardware profile 'jetson' not found (known: ['edge-small', 'host-cpu'])"
    )


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)
