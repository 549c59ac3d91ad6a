"""fleet.controller.rollout.policy: rollout policies as data, and every way one can be wrong."""

from __future__ import annotations

import copy

import pytest
import yaml

from fleet.controller.errors import PolicyError
from fleet.controller.rollout.policy import (
    DEFAULT_FRACTIONS,
    RolloutPolicy,
    StagePolicy,
    default_policy,
    load_policy,
    policy_from_yaml,
)

POLICY_YAML = """
cohorts:
  host-cpu: {p95_latency_ms: 5}
  edge-small: {p95_latency_ms: 20}
stages:
  - {fraction: 0.1, bake_s: 60, deadline_s: 600, min_inferences: 100, min_feedback: 50}
  - {fraction: 0.5, bake_s: 120, deadline_s: 600, min_confirmed_devices: 3, min_inferences: 500}
  - {fraction: 1.0, bake_s: 120, deadline_s: 900, min_confirmed_fraction: 0.9, min_inferences: 900}
gates:
  max_error_rate: 0.02
  accuracy: {delta: 0.03, alpha: 0.01, min_samples: 150}
on_inconclusive: pause
"""


def raw() -> dict[str, object]:
    """The parsed POLICY_YAML, a fresh copy to break."""
    return copy.deepcopy(yaml.safe_load(POLICY_YAML))


def problems(broken: object) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(broken)
    return str(info.value)


def test_a_policy_from_yaml() -> None:
    policy = policy_from_yaml(POLICY_YAML)
    assert policy.cohorts["edge-small"].p95_latency_ms == 20
    assert [s.fraction for s in policy.stages] == [0.1, 0.5, 1.0]
    assert policy.stages[0].min_confirmed_devices == 1  # default
    assert policy.stages[0].min_confirmed_fraction == 0.8  # default
    assert policy.stages[1].min_feedback == 0
    assert (policy.gates.accuracy.delta, policy.gates.accuracy.alpha) == (0.03, 0.01)
    assert policy.on_inconclusive == "pause" and policy.rollback_timeout_s == 600
    assert policy.last_stage == 2
    assert RolloutPolicy.model_validate(policy.model_dump(mode="json")) == policy


def test_the_default_policy() -> None:
    policy = default_policy({"host-cpu": 5, "edge-small": 20})
    assert DEFAULT_FRACTIONS == (0.05, 0.25, 0.5, 1.0)
    assert [s.fraction for s in policy.stages] == list(DEFAULT_FRACTIONS)
    assert all(s.deadline_s >= s.bake_s for s in policy.stages)
    assert [s.min_inferences for s in policy.stages] == sorted(
        s.min_inferences for s in policy.stages
    )
    assert policy.cohorts["edge-small"].p95_latency_ms == 20
    assert policy.on_inconclusive == "fail"
    assert policy_from_yaml(yaml.safe_dump(policy.model_dump(mode="json"))) == policy


def test_a_policy_is_immutable() -> None:
    policy = policy_from_yaml(POLICY_YAML)
    with pytest.raises(ValueError, match="frozen"):
        policy.on_inconclusive = "fail"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("stages", 1, "fraction"), 0.1, "stages.1.fraction: 0.1 does not grow from stages.0"),
        (("stages", 2, "fraction"), 0.9, "stages.2.fraction: the last stage must target the whole"),
        (("stages", 0, "bake_s"), 0, "stages.0.bake_s: Input should be greater than 0"),
        (("stages", 1, "deadline_s"), 60, "stages.1.deadline_s: 60 s is before the bake ends"),
        (("stages", 0, "fraction"), 1.5, "stages.0.fraction: Input should be less than or equal"),
        (("stages", 0, "min_inferences"), 0, "stages.0.min_inferences: Input should be greater"),
        (("stages", 0, "min_confirmed_fraction"), 0, "stages.0.min_confirmed_fraction: Input"),
        (("gates", "accuracy", "alpha"), 1.0, "gates.accuracy.alpha: Input should be less than 1"),
        (("gates", "accuracy", "alpha"), 0, "gates.accuracy.alpha: Input should be greater than 0"),
        (("gates", "accuracy", "delta"), -0.1, "gates.accuracy.delta: Input should be greater"),
        (("gates", "accuracy", "min_samples"), 0, "gates.accuracy.min_samples: Input should be"),
        (("gates", "max_error_rate"), 1.5, "gates.max_error_rate: Input should be less than"),
        (("cohorts", "edge-small", "p95_latency_ms"), -1, "cohorts.edge-small.p95_latency_ms:"),
        (("on_inconclusive",), "ignore", "on_inconclusive: Input should be 'fail' or 'pause'"),
        (("rollback_timeout_s",), 0, "rollback_timeout_s: Input should be greater than 0"),
    ],
)
def test_each_error_names_its_field(path: tuple[object, ...], value: object, message: str) -> None:
    broken = raw()
    target: object = broken
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    assert message in problems(broken)


def test_unknown_keys_are_errors_not_ignored() -> None:
    broken = raw()
    broken["gates"]["max_latency_ms"] = 5  # type: ignore[index]
    broken["stages"][0]["bake"] = 60  # type: ignore[index]
    text = problems(broken)
    assert "gates.max_latency_ms: Extra inputs are not permitted" in text
    assert "stages.0.bake: Extra inputs are not permitted" in text


def test_every_problem_is_listed_at_once() -> None:
    broken = raw()
    broken["stages"][1]["fraction"] = 0.05  # type: ignore[index]
    broken["stages"][2]["fraction"] = 0.04  # type: ignore[index]
    text = problems(broken)
    assert "stages.1.fraction" in text and "stages.2.fraction" in text


def test_a_single_full_stage_leaves_nothing_to_compare_against() -> None:
    broken = raw()
    broken["stages"] = [broken["stages"][2]]  # type: ignore[index]
    assert (
        "stages.0.fraction: the first stage must leave devices on the stable version"
        in problems(broken)
    )


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({**raw(), "cohorts": {}}, "cohorts: Dictionary should have at least 1 item"),
        ({**raw(), "stages": []}, "stages: Tuple should have at least 1 item"),
        ({**raw(), "cohorts": {"Edge_Small": {"p95_latency_ms": 5}}}, "cohorts.Edge_Small.[key]"),
        ({k: v for k, v in raw().items() if k != "gates"}, "gates: Field required"),
        (["a list"], "must be a mapping, not list"),
    ],
)
def test_shapes_that_are_not_a_policy(broken: object, message: str) -> None:
    assert message in problems(broken)


def test_yaml_that_does_not_parse() -> None:
    with pytest.raises(PolicyError, match="not valid YAML"):
        policy_from_yaml("stages: [")
    with pytest.raises(PolicyError, match="cohorts: Field required"):
        policy_from_yaml("")


@pytest.mark.parametrize(
    ("fraction", "size", "targeted"),
    [
        (0.05, 1, 1),
        (0.05, 20, 1),
        (0.05, 21, 2),
        (0.1, 30, 3),
        (0.25, 4, 1),
        (1.0, 7, 7),
        (0.5, 0, 0),
    ],
)
def test_targeted_count_is_a_ceiling_without_float_noise(
    fraction: float, size: int, targeted: int
) -> None:
    stage = StagePolicy(fraction=fraction, bake_s=1, deadline_s=1, min_inferences=1)
    assert stage.targeted_count(size) == targeted


@pytest.mark.parametrize(
    ("min_devices", "min_fraction", "targeted", "required"),
    [(1, 0.8, 10, 8), (3, 0.1, 10, 3), (5, 0.8, 2, 2), (1, 1.0, 3, 3), (1, 0.5, 1, 1)],
)
def test_required_confirmed_never_exceeds_the_targeted(
    min_devices: int, min_fraction: float, targeted: int, required: int
) -> None:
    stage = StagePolicy(
        fraction=0.5,
        bake_s=1,
        deadline_s=1,
        min_inferences=1,
        min_confirmed_devices=min_devices,
        min_confirmed_fraction=min_fraction,
    )
    assert stage.required_confirmed(targeted) == required


def test_a_label_free_policy_requires_agreement_with_shadow_comparisons() -> None:
    label_free = raw()
    required = ["p95_latency", "error_rate", "agreement"]
    label_free["cohorts"] = {"host-cpu": {"p95_latency_ms": 5, "required": required}}
    label_free["gates"]["agreement"] = {"max_disagreement": 0.05}  # type: ignore[index]
    label_free["shadow"] = {"rate": 0.1}
    policy = load_policy(label_free)
    assert policy.cohorts["host-cpu"].required == tuple(required)
    assert policy.shadow is not None and policy.shadow.cpu_budget == 0.25  # default
    assert policy.gates.agreement is not None and policy.gates.agreement.min_samples == 200
    assert policy.stage_alpha(0.05) == pytest.approx(0.05 / 3)
    default = default_policy({"host-cpu": 5})  # fits fleets without labels and tiny cohorts
    assert default.cohorts["host-cpu"].required == ("p95_latency", "error_rate", "agreement")
    assert default.shadow is not None and all(st.min_feedback == 0 for st in default.stages)


def test_a_gate_the_devices_cannot_report_is_refused_naming_gate_and_cohort() -> None:
    broken = raw()
    broken["cohorts"]["edge-small"]["required"] = ["agreement", "prediction_shift"]  # type: ignore[index]
    message = problems(broken)
    assert (
        "cohorts.edge-small.required: gate agreement has no limits: add gates.agreement" in message
    )
    assert "gate prediction_shift has no limits" in message
    broken["gates"]["agreement"] = {"max_disagreement": 0.05}  # type: ignore[index]
    broken["gates"]["prediction_shift"] = {"max_distance": 0.1}  # type: ignore[index]
    message = problems(broken)
    assert (
        "cohorts.edge-small.required: the devices of edge-small cannot report agreement "
        "without shadow comparisons" in message
    )
    broken["cohorts"]["edge-small"]["required"] = ["latency"]  # type: ignore[index]
    assert "cohorts.edge-small.required.0" in problems(broken)


def test_a_policy_stored_with_the_older_on_silence_key_still_loads() -> None:
    older = raw()
    older["on_silence"] = older.pop("on_inconclusive")
    assert load_policy(older).on_inconclusive == "pause"
