"""fleet.controller.rollout.decide: the rollout state machine, driven with a fake clock and built observations."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from fleet.controller.errors import ObservationsError, RolloutCommandError
from fleet.controller.rollout.actions import Action, Notify, RecordOutcome, TargetDevices
from fleet.controller.rollout.assignment import assign_stage, ranked
from fleet.controller.rollout.decide import (
    RolloutStatus,
    abort,
    desired_versions,
    new_rollout,
    next_state,
    pause,
    resume,
    retry,
    start,
)
from fleet.controller.rollout.evaluate import (
    EVIDENCE_FLOOR,
    CarriedEvidence,
    carry_evidence,
    device_weights,
)
from fleet.controller.rollout.observations import (
    DeviceObservation,
    Observations,
    Refusal,
    ShadowSums,
    VersionTelemetry,
)
from fleet.controller.rollout.phase import RolloutPhase, Verdict
from fleet.controller.rollout.policy import RolloutPolicy, load_policy
from fleet.controller.rollout.stats import Gate
from fleet.shared.latency import LatencyHistogram

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STABLE, CANARY = "3", "4"
HOST, EDGE = "host-cpu", "edge-small"
FLEET = {f"host-{i}": HOST for i in range(4)} | {f"edge-{i}": EDGE for i in range(4)}
"""Four devices per cohort: stages of 25%, 50%, 100% target 1, 2 and 4 of each."""

P = RolloutPhase
ACTIONS = TypeAdapter(list[Action])


# --- builders ----------------------------------------------------------------------------------------


def policy(**changes: object) -> RolloutPolicy:
    """A small, fast policy; ``changes`` replace top-level keys or, as ``stage_<key>``, every stage's."""
    stage: dict[str, object] = {
        "bake_s": 60,
        "deadline_s": 300,
        "min_confirmed_devices": 1,
        "min_confirmed_fraction": 1.0,
        "min_inferences": 100,
        "min_feedback": 50,
    }
    stage |= {k.removeprefix("stage_"): v for k, v in changes.items() if k.startswith("stage_")}
    raw: dict[str, object] = {
        "cohorts": {HOST: {"p95_latency_ms": 5}, EDGE: {"p95_latency_ms": 20}},
        "stages": [{"fraction": f, **stage} for f in (0.25, 0.5, 1.0)],
        "gates": {
            "max_error_rate": 0.05,
            "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 50},
        },
        "on_inconclusive": "fail",
        "rollback_timeout_s": 120,
    }
    raw |= {k: v for k, v in changes.items() if not k.startswith("stage_")}
    return load_policy(raw)


def new_status(**changes: object) -> RolloutStatus:
    """A PENDING rollout of CANARY over STABLE, created at T0."""
    return new_rollout(
        rollout_id=str(changes.pop("rollout_id", "r1")),
        model="churn",
        canary_version=CANARY,
        stable_version=STABLE,
        policy=policy(**changes),
        now=T0,
    )


def telemetry(
    version: str,
    *,
    inferences: int = 200,
    errors: int = 0,
    latency_ms: float = 1.0,
    labels: int = 100,
    accuracy: float = 0.95,
    shadow: ShadowSums | None = None,
) -> VersionTelemetry:
    return VersionTelemetry(
        version=version,
        inferences=inferences,
        errors=errors,
        latency=LatencyHistogram.of([latency_ms] * inferences),
        feedback_correct=round(accuracy * labels),
        feedback_total=labels,
        shadow=(shadow,) if shadow is not None else (),
    )


def compared(rows: int, disagreement: float, shifted: float = 0.0) -> ShadowSums:
    """``rows`` shadow comparisons against STABLE; the canary moves ``shifted`` of its answers from
    class 0 to class 1 (the stable model splits evenly over classes 0..3)."""
    stable = {str(c): rows // 4 for c in range(4)}
    moved = round(shifted * rows)
    canary = stable | {"0": stable["0"] - moved, "1": stable["1"] + moved}
    return ShadowSums(
        against=STABLE,
        compared=rows,
        disagreed=max(round(disagreement * rows), moved),
        canary_classes=canary,
        stable_classes=stable,
    )


def device(
    device_id: str,
    version: str | None,
    *,
    seen: datetime | None,
    window: Iterable[VersionTelemetry] = (),
    hardware_class: str | None = None,
) -> DeviceObservation:
    return DeviceObservation(
        device_id=device_id,
        hardware_class=hardware_class or FLEET[device_id],
        last_seen=seen,
        running_version=version,
        telemetry=tuple(window),
    )


def obs(
    status: RolloutStatus,
    now: datetime,
    *,
    fleet: dict[str, str] = FLEET,
    silent: Iterable[str] = (),
    on_stable: Iterable[str] = (),
    latency_ms: dict[str, float] | None = None,
    canary_accuracy: float = 0.95,
    stable_accuracy: float = 0.95,
    labels: int = 100,
    inferences: int = 200,
    errors: int = 0,
    shadow: ShadowSums | None = None,
) -> Observations:
    """The fleet at ``now`` as the controller would aggregate it for ``status``.

    By default every device reports, targeted ones FROM the canary (in ROLLING_BACK and after: from
    stable) with healthy numbers. ``silent`` devices last reported an hour before T0; ``on_stable``
    targeted devices report, but still from the stable version (download done, swap not confirmed).
    """
    silent, on_stable = set(silent), set(on_stable)
    latency = {HOST: 1.0, EDGE: 4.0} | (latency_ms or {})
    targeted = set(status.targeted)
    runs_canary = status.phase in (P.PROGRESSING, P.PAUSED)
    devices = []
    for device_id, hardware_class in sorted(fleet.items()):
        if device_id in silent:
            devices.append(
                device(
                    device_id, STABLE, seen=T0 - timedelta(hours=1), hardware_class=hardware_class
                )
            )
            continue
        canary = runs_canary and device_id in targeted and device_id not in on_stable
        version = CANARY if canary else STABLE
        window = telemetry(
            version,
            inferences=inferences,
            errors=errors if canary else 0,
            latency_ms=latency.get(hardware_class, 1.0),
            labels=labels,
            accuracy=canary_accuracy if canary else stable_accuracy,
            shadow=shadow if canary else None,
        )
        devices.append(
            device(device_id, version, seen=now, window=[window], hardware_class=hardware_class)
        )
    return Observations(window_start=status.window_start, devices=tuple(devices))


def summary(actions: list[Action]) -> list[tuple[object, ...]]:
    """Actions as short tuples, for asserting exact sequences."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        if isinstance(a, TargetDevices):
            out.append(("target", a.version, a.device_ids))
        elif isinstance(a, RecordOutcome):
            out.append(("outcome", a.outcome))
        else:
            out.append(("notify", a.phase))
    return out


def canaries(n: int, rollout_id: str = "r1") -> tuple[str, ...]:
    """The first ``n`` devices of each cohort in canary order, cohorts by name (edge before host)."""
    out: list[str] = []
    for cls in sorted({EDGE, HOST}):
        out += ranked(rollout_id, [d for d, c in FLEET.items() if c == cls])[:n]
    return tuple(out)


def roundtrip(status: RolloutStatus) -> RolloutStatus:
    return RolloutStatus.model_validate(status.model_dump(mode="json"))


class Driver:
    """Runs passes and commands against a fake clock and records (phase, stage, actions)."""

    def __init__(self, status: RolloutStatus) -> None:
        self.status = status
        self.now = T0
        self.log: list[tuple[str, int, list[tuple[object, ...]]]] = []

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def _record(self, status: RolloutStatus, actions: list[Action]) -> None:
        assert roundtrip(status) == status
        assert ACTIONS.validate_python(ACTIONS.dump_python(actions, mode="json")) == actions
        if status.history != self.status.history:
            self.log.append((status.phase.value, status.stage, summary(actions)))
        else:
            assert actions == []
        self.status = status

    def step(self, **observed: object) -> None:
        observations = obs(self.status, self.now, **observed)  # type: ignore[arg-type]
        first = next_state(self.status, observations, self.now)
        assert next_state(self.status, observations, self.now) == first, "a pass is repeatable"
        self._record(*first)

    def command(self, name: str) -> None:
        s, now = self.status, self.now
        if name in ("start", "retry"):
            result = (start if name == "start" else retry)(s, obs(s, now), now)
        else:
            result = {"pause": pause, "resume": resume, "abort": abort}[name](s, now)
        self._record(*result)


# --- the whole life of a rollout ------------------------------------------------------------------------


def test_a_rollout_walks_through_every_phase() -> None:
    d = Driver(new_status())
    d.step()  # PENDING waits for start
    d.command("start")
    d.tick(30)
    d.step()  # healthy, but not baked yet
    d.command("pause")
    d.tick(60)
    d.step()  # paused: no promotion although baked
    d.command("resume")
    d.tick(30)
    d.step(latency_ms={EDGE: 40.0})  # edge-small over its 20 ms budget: roll back at once
    d.tick(5)
    d.step(silent=["edge-0"])  # one device has not confirmed stable yet
    d.tick(5)
    d.step()  # every device reports stable
    d.command("retry")
    d.tick(300)
    d.step(silent=FLEET)  # attempt 2: nothing heard by the deadline
    d.tick(5)
    d.step()
    d.command("retry")
    d.tick(10)
    d.command("abort")
    d.tick(5)
    d.step()
    d.command("retry")
    for _ in range(3):  # attempt 4: every stage bakes and passes
        d.tick(61)
        d.step()
    d.step()  # terminal stays terminal

    one, two, four = canaries(1), canaries(2), canaries(4)
    assert d.log == [
        ("progressing", 0, [("target", CANARY, one), ("notify", "progressing")]),
        ("paused", 0, [("notify", "paused")]),
        ("progressing", 0, [("notify", "progressing")]),
        (
            "rolling_back",
            0,
            [("target", STABLE, one), ("outcome", "rolled_back"), ("notify", "rolling_back")],
        ),
        ("rolled_back", 0, [("notify", "rolled_back")]),
        ("progressing", 0, [("target", CANARY, one), ("notify", "progressing")]),
        (
            "rolling_back",
            0,
            [("target", STABLE, one), ("outcome", "failed"), ("notify", "rolling_back")],
        ),
        ("failed", 0, [("notify", "failed")]),
        ("progressing", 0, [("target", CANARY, one), ("notify", "progressing")]),
        (
            "rolling_back",
            0,
            [("target", STABLE, one), ("outcome", "aborted"), ("notify", "rolling_back")],
        ),
        ("aborted", 0, [("notify", "aborted")]),
        ("progressing", 0, [("target", CANARY, one), ("notify", "progressing")]),
        (
            "progressing",
            1,
            [("target", CANARY, tuple(x for x in two if x not in one)), ("notify", "progressing")],
        ),
        (
            "progressing",
            2,
            [("target", CANARY, tuple(x for x in four if x not in two)), ("notify", "progressing")],
        ),
        ("succeeded", 2, [("outcome", "succeeded"), ("notify", "succeeded")]),
    ]
    assert {P(phase) for phase, _, _ in d.log} | {P.PENDING} == set(RolloutPhase)
    status = d.status
    assert status.attempt == 4
    assert [t.attempt for t in status.history] == [1] * 5 + [2] * 3 + [3] * 3 + [4] * 4
    assert status.causes == () and status.ending is None
    assert desired_versions(status) == dict.fromkeys(FLEET, CANARY)
    # the last stage compared against the stable arm kept from stage 2
    assert status.last_check is not None
    assert {c.stable_arm for c in status.last_check.cohorts} == {"baseline from stage 2"}


# --- gates ------------------------------------------------------------------------------------------------


def started(**changes: object) -> tuple[RolloutStatus, datetime]:
    status = new_status(**changes)
    status, _ = start(status, obs(status, T0), T0)
    return status, T0


def test_latency_over_budget_on_one_cohort_rolls_back_naming_it() -> None:
    status, now = started()
    now += timedelta(seconds=10)
    new, actions = next_state(status, obs(status, now, latency_ms={EDGE: 40.0}), now)
    assert new.phase is P.ROLLING_BACK and new.ending is P.ROLLED_BACK
    (cause,) = new.causes
    assert (cause.gate, cause.cohort, cause.verdict) == (Gate.P95_LATENCY, EDGE, Verdict.FAIL)
    assert cause.threshold == 20
    assert cause.measured == pytest.approx(25 + 25 * 0.95)  # interpolated in the (25, 50] bucket
    assert "edge-small" in new.reason and "budget 20 ms" in new.reason
    assert isinstance(actions[0], TargetDevices)
    assert actions[0].version == STABLE and actions[0].device_ids == status.targeted
    assert isinstance(actions[1], RecordOutcome)
    assert actions[1].outcome == "rolled_back" and actions[1].causes == (cause,)
    assert isinstance(actions[2], Notify)


def test_clearly_worse_accuracy_rolls_back_with_its_p_value() -> None:
    status, now = started()
    now += timedelta(seconds=10)
    new, _ = next_state(status, obs(status, now, canary_accuracy=0.70), now)
    assert new.phase is P.ROLLING_BACK
    assert [(c.gate, c.cohort) for c in new.causes] == [
        (Gate.ACCURACY, EDGE),
        (Gate.ACCURACY, HOST),
    ]
    cause = new.causes[0]
    assert cause.p_value is not None and cause.p_value < 0.05
    assert cause.measured == pytest.approx(0.70 - 0.95)
    assert cause.threshold == -0.02
    assert "p=" in new.reason and "canary 70.00%" in new.reason


def test_one_device_flooding_wrong_labels_does_not_sway_the_accuracy_gate() -> None:
    """Of ten canary devices, one reports 20,000 labels all wrong (lying, or broken). It counts
    for at most DEVICE_WEIGHT_CAP times the median of the arm's other devices, and a gate fails
    only on evidence that holds without any one device: the healthy canary is not rolled back, and
    the reason names the device. A canary that is worse on every device still fails."""
    big = {f"host-{i:02d}": HOST for i in range(40)} | {f"edge-{i}": EDGE for i in range(4)}
    status = new_status()
    status, _ = start(status, obs(status, T0, fleet=big), T0)
    now = T0 + timedelta(seconds=10)
    healthy = obs(status, now, fleet=big)
    canaries = [d for d in status.targeted if big[d] == HOST]
    assert len(canaries) == 10
    flooded = tuple(
        d.model_copy(update={"telemetry": (telemetry(CANARY, labels=20_000, accuracy=0.0),)})
        if d.device_id == canaries[0]
        else d
        for d in healthy.devices
    )
    new, _ = next_state(status, healthy.model_copy(update={"devices": flooded}), now)
    assert new.phase is P.PROGRESSING, new.reason
    assert new.last_check is not None
    host = next(c for c in new.last_check.cohorts if c.hardware_class == HOST)
    accuracy = next(g for g in host.gates if g.gate is Gate.ACCURACY)
    assert accuracy.verdict is Verdict.PASS and f"without {canaries[0]}" in accuracy.reason
    assert host.accuracy.canary_total == 9 * 100
    worse = obs(status, now, fleet=big, canary_accuracy=0.70)
    new, _ = next_state(status, worse, now)
    assert new.phase is P.ROLLING_BACK and Gate.ACCURACY in {c.gate for c in new.causes}
    assert device_weights([100, 100, 20_000], floor=0) == [1.0, 1.0, 300 / 20_000]
    assert device_weights([500], floor=0) == [1.0]  # a device alone is its arm
    assert device_weights([0, 0, 300], floor=200) == [1.0, 1.0, 200 / 300]


def test_a_refused_artifact_rolls_back_once_two_devices_refuse_it() -> None:
    """A device that refuses the canary's artifact says so; with two or more devices targeted in
    its cohort one refusal is shown and waits for a second (one device does not decide a gate),
    and a second rolls the canary back at once, naming both."""
    big = {f"host-{i}": HOST for i in range(8)} | {f"edge-{i}": EDGE for i in range(4)}
    status = new_status()
    status, _ = start(status, obs(status, T0, fleet=big), T0)
    now = T0 + timedelta(seconds=5)
    hosts = [d for d in status.targeted if big[d] == HOST]
    assert len(hosts) == 2
    refusal = Refusal(version=CANARY, variant="int8", reason="signature", detail="not signed")

    def refusing(ids: list[str]) -> Observations:
        seen = obs(status, now, fleet=big, on_stable=hosts)
        return seen.model_copy(
            update={
                "devices": tuple(
                    d.model_copy(update={"refused": (refusal,)}) if d.device_id in ids else d
                    for d in seen.devices
                )
            }
        )

    new, _ = next_state(status, refusing(hosts[:1]), now)
    assert new.phase is P.PROGRESSING and new.last_check is not None
    host = next(c for c in new.last_check.cohorts if c.hardware_class == HOST)
    artifact = next(g for g in host.gates if g.gate is Gate.ARTIFACT)
    assert artifact.verdict is Verdict.PASS and "waiting for a second" in artifact.reason
    new, _ = next_state(status, refusing(hosts), now)
    assert new.phase is P.ROLLING_BACK
    (cause,) = [c for c in new.causes if c.gate is Gate.ARTIFACT]
    assert all(h in cause.reason for h in hosts) and "signature (not signed)" in cause.reason


def test_too_few_labels_waits_then_fails_at_the_deadline_naming_devices() -> None:
    status, now = started()
    for seconds in (61, 200):  # baked, healthy otherwise: no promotion without labels
        at = now + timedelta(seconds=seconds)
        waited, actions = next_state(status, obs(status, at, labels=10), at)
        assert waited.phase is P.PROGRESSING and waited.stage == 0 and actions == []
        assert waited.last_check is not None and waited.last_check.verdict is Verdict.INCONCLUSIVE
    at = now + timedelta(seconds=300)
    new, actions = next_state(status, obs(status, at, labels=10), at)
    assert new.phase is P.ROLLING_BACK and new.ending is P.FAILED
    assert new.silent_devices == status.targeted
    for device_id in status.targeted:
        assert f"{device_id} (10 labelled, share 50)" in new.reason
    assert {(c.gate, c.verdict) for c in new.causes} == {
        (Gate.DATA, Verdict.INCONCLUSIVE),
        (Gate.ACCURACY, Verdict.INCONCLUSIVE),
    }
    assert summary(actions)[1] == ("outcome", "failed")


@pytest.mark.parametrize(
    ("on_inconclusive", "phase"), [("fail", P.ROLLING_BACK), ("pause", P.PAUSED)]
)
def test_silent_devices_at_the_deadline_are_named(
    on_inconclusive: str, phase: RolloutPhase
) -> None:
    status, now = started(on_inconclusive=on_inconclusive)
    quiet = canaries(1)[0]
    at = now + timedelta(seconds=299)
    waited, _ = next_state(status, obs(status, at, silent=[quiet]), at)
    assert waited.phase is P.PROGRESSING
    at = now + timedelta(seconds=300)
    new, actions = next_state(status, obs(status, at, silent=[quiet]), at)
    assert new.phase is phase
    assert new.silent_devices == (quiet,)
    assert f"{quiet} (silent since {(T0 - timedelta(hours=1)).isoformat()})" in new.reason
    assert "silence is not success" in new.reason
    if phase is P.PAUSED:
        assert summary(actions) == [("notify", "paused")]
        # paused: still no promotion, and a failing gate still rolls back
        later = at + timedelta(seconds=600)
        still, _ = next_state(new, obs(new, later), later)
        assert still.phase is P.PAUSED
        bad, _ = next_state(new, obs(new, later, errors=50), later)
        assert bad.phase is P.ROLLING_BACK and bad.causes[0].gate is Gate.ERROR_RATE


def test_a_device_that_downloaded_but_reports_the_old_version_is_not_confirmed() -> None:
    status, now = started()
    stuck = canaries(1)[0]
    at = now + timedelta(seconds=120)
    new, actions = next_state(status, obs(status, at, on_stable=[stuck]), at)
    assert new.phase is P.PROGRESSING and new.stage == 0 and actions == []
    assert new.last_check is not None
    (edge,) = [c for c in new.last_check.cohorts if c.hardware_class == EDGE]
    assert (edge.confirmed, edge.required_confirmed) == (0, 1)
    assert [(g.device_id, g.problem) for g in edge.gaps] == [
        (stuck, f"reports {STABLE} (stable), not {CANARY}")
    ]


def test_a_device_whose_latest_canary_report_predates_the_stage_is_not_confirmed() -> None:
    status, now = started()
    first = canaries(1)
    now += timedelta(seconds=61)
    status, _ = next_state(status, obs(status, now), now)
    assert status.stage == 1
    # a stage-1 canary went quiet: its last canary report is from the previous window
    old = first[0]
    observations = obs(status, now + timedelta(seconds=61), silent=[old])
    devices = tuple(
        device(old, CANARY, seen=now - timedelta(seconds=1)) if d.device_id == old else d
        for d in observations.devices
    )
    observations = observations.model_copy(update={"devices": devices})
    later = now + timedelta(seconds=61)
    new, _ = next_state(status, observations, later)
    assert new.stage == 1
    assert new.last_check is not None
    assert old in [g.device_id for g in new.last_check.gaps]


def test_rollback_waits_for_devices_then_times_out_naming_them() -> None:
    status, now = started()
    now += timedelta(seconds=10)
    status, _ = next_state(status, obs(status, now, errors=100), now)
    assert status.phase is P.ROLLING_BACK
    laggard = canaries(1)[1]
    at = now + timedelta(seconds=119)
    same, actions = next_state(status, obs(status, at, silent=[laggard]), at)
    assert same == status and actions == []
    at = now + timedelta(seconds=120)
    done, actions = next_state(status, obs(status, at, silent=[laggard]), at)
    assert done.phase is P.ROLLED_BACK
    assert "rollback timeout" in done.reason and laggard in done.reason
    assert done.causes == status.causes  # the gate that failed stays on record
    assert desired_versions(done) == dict.fromkeys(status.targeted, STABLE)


def test_a_device_reporting_stable_from_before_the_rollback_does_not_confirm_it() -> None:
    status, now = started()
    now += timedelta(seconds=10)
    status, _ = next_state(status, obs(status, now, errors=100), now)
    stale = obs(status, now - timedelta(seconds=1))  # reports stamped before the rollback began
    same, _ = next_state(status, stale, now + timedelta(seconds=5))
    assert same.phase is P.ROLLING_BACK


# --- stage mechanics ---------------------------------------------------------------------------------------


def test_stages_keep_their_devices_and_new_devices_join_without_displacing_any() -> None:
    status, now = started()
    now += timedelta(seconds=61)
    fleet = FLEET | {"host-9": HOST, "host-8": HOST}
    status2, _ = next_state(status, obs(status, now, fleet=fleet), now)
    assert status2.stage == 1
    assert set(status.targeted) <= set(status2.targeted)
    host = next(a for a in status2.assignments if a.hardware_class == HOST)
    assert len(host.device_ids) == math.ceil(0.5 * 6)
    again = assign_stage(
        rollout_id="r1",
        policy=status.policy,
        stage=1,
        previous=status.assignments,
        observations=obs(status, now, fleet=fleet),
    )
    assert again == status2.assignments


def test_assignment_does_not_depend_on_device_order() -> None:
    status = new_status()
    observations = obs(status, T0)
    shuffled = observations.model_copy(update={"devices": observations.devices[::-1]})
    assert start(status, observations, T0) == start(status, shuffled, T0)


def test_a_cohort_with_every_device_targeted_and_no_baseline_is_inconclusive() -> None:
    fleet = {"host-0": HOST, "host-1": HOST, "edge-0": EDGE}  # one edge device: 25% is all of it
    status = new_status()
    status, _ = start(status, obs(status, T0, fleet=fleet), T0)
    at = T0 + timedelta(seconds=61)
    new, _ = next_state(status, obs(status, at, fleet=fleet), at)
    assert new.stage == 0
    assert new.last_check is not None
    (edge,) = [c for c in new.last_check.cohorts if c.hardware_class == EDGE]
    assert edge.stable_arm == "none"
    assert edge.accuracy.verdict is Verdict.INCONCLUSIVE
    assert "no earlier stage measured it" in edge.accuracy.reason


def test_observations_from_another_window_are_refused() -> None:
    status, now = started()
    wrong = obs(status, now).model_copy(update={"window_start": T0 - timedelta(seconds=1)})
    with pytest.raises(ObservationsError, match="observations summed from"):
        next_state(status, wrong, now)


def test_the_clock_must_be_timezone_aware() -> None:
    status = new_status()
    with pytest.raises(ValueError, match="timezone-aware"):
        next_state(status, obs(status, T0), datetime(2026, 3, 1, 12, 0))


# --- commands --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "phase"),
    [
        ("resume", P.PROGRESSING),
        ("pause", P.PENDING),
        ("start", P.PROGRESSING),
        ("retry", P.PROGRESSING),
        ("retry", P.SUCCEEDED),
        ("abort", P.SUCCEEDED),
        ("abort", P.ROLLING_BACK),
    ],
)
def test_commands_are_refused_where_the_phase_does_not_allow_them(
    command: str, phase: RolloutPhase
) -> None:
    status, now = started()
    ending = P.ABORTED if phase is P.ROLLING_BACK else None
    status = status.model_copy(update={"phase": phase, "ending": ending})
    with pytest.raises(RolloutCommandError, match=f"is {phase.value}: cannot {command}") as info:
        if command in ("start", "retry"):
            (start if command == "start" else retry)(status, obs(status, now), now)
        else:
            {"pause": pause, "resume": resume, "abort": abort}[command](status, now)
    assert (info.value.command, info.value.phase) == (command, phase)


def test_start_without_any_device_of_the_policy_is_refused() -> None:
    status = new_status()
    with pytest.raises(RolloutCommandError, match="no enrolled device"):
        start(status, obs(status, T0, fleet={"x-1": "gpu-big"}), T0)


def test_abort_before_start_ends_at_once() -> None:
    status, actions = abort(new_status(), T0)
    assert status.phase is P.ABORTED
    assert summary(actions) == [("outcome", "aborted"), ("notify", "aborted")]


def test_resume_restarts_the_window() -> None:
    status, now = started()
    status, _ = pause(status, now + timedelta(seconds=100))
    later = now + timedelta(seconds=1000)
    status, _ = resume(status, later)
    assert status.stage_started_at == later and status.window_start == later
    at = later + timedelta(seconds=59)
    waiting, _ = next_state(status, obs(status, at), at)
    assert waiting.stage == 0  # bakes again from the resume


# --- properties ---------------------------------------------------------------------------------------------

DEVICES = sorted(FLEET)
MODES = ("healthy", "silent", "on_stable", "few", "slow", "errors", "worse", "stale")


def observed(status: RolloutStatus, now: datetime, modes: dict[str, str]) -> Observations:
    """Arbitrary-ish observations: each device in one of MODES."""
    devices = []
    runs_canary = status.phase in (P.PROGRESSING, P.PAUSED)
    for device_id in DEVICES:
        mode = modes.get(device_id, "healthy")
        canary = runs_canary and device_id in status.targeted and mode != "on_stable"
        version = CANARY if canary else STABLE
        if mode == "silent":
            devices.append(device(device_id, None, seen=None))
            continue
        seen = now - timedelta(days=1) if mode == "stale" else now
        window = telemetry(
            version,
            inferences=20 if mode == "few" else 200,
            errors=40 if mode == "errors" and canary else 0,
            latency_ms=400.0 if mode == "slow" and canary else 1.0,
            labels=5 if mode == "few" else 100,
            accuracy=0.6 if mode == "worse" and canary else 0.95,
        )
        devices.append(device(device_id, version, seen=seen, window=[window]))
    return Observations(window_start=status.window_start, devices=tuple(devices))


def data_met(status: RolloutStatus, observations: Observations, now: datetime) -> bool:
    """An oracle written apart from the code: did the stage have its minimum data, baked?"""
    assert status.stage_started_at is not None
    rules = status.policy.stage(status.stage)
    if (now - status.stage_started_at).total_seconds() < rules.bake_s:
        return False
    by_id = observations.by_id()
    min_labels = status.policy.gates.accuracy.min_samples
    for a in status.assignments:
        confirmed = [
            d
            for d in a.device_ids
            if by_id[d].running_version == CANARY
            and by_id[d].last_seen is not None
            and by_id[d].last_seen >= status.stage_started_at  # type: ignore[operator]
        ]
        need = min(
            len(a.device_ids),
            max(
                rules.min_confirmed_devices,
                math.ceil(rules.min_confirmed_fraction * len(a.device_ids)),
            ),
        )
        windows = [t for d in a.device_ids for t in by_id[d].telemetry if t.version == CANARY]
        if not confirmed or len(confirmed) < need:
            return False
        if sum(t.inferences for t in windows) < rules.min_inferences:
            return False
        labels = sum(t.feedback_total for t in windows)
        if labels < max(rules.min_feedback, min_labels):
            return False
    return True


healthy: dict[str, str] = {}
step = st.tuples(
    st.integers(min_value=0, max_value=200),  # seconds to the next pass
    st.one_of(
        st.just(healthy),  # every device reports healthy data: stages can pass
        st.dictionaries(st.sampled_from(DEVICES), st.sampled_from(MODES), max_size=4),
    ),
    st.sampled_from([None] * 12 + ["pause", "resume", "abort", "retry"]),
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=st.lists(step, min_size=1, max_size=20),
    on_inconclusive=st.sampled_from(["fail", "pause"]),
)
def test_no_sequence_promotes_on_inconclusive_or_skips_a_stage(
    steps: list[tuple[int, dict[str, str], str | None]], on_inconclusive: str
) -> None:
    status = new_status(on_inconclusive=on_inconclusive)
    now = T0
    status, _ = start(status, observed(status, now, {}), now)
    passed: set[int] = set()  # stages of the current attempt passed on data the oracle accepts
    for seconds, modes, command in steps:
        now += timedelta(seconds=seconds)
        before = status
        if command is not None:
            try:
                if command == "retry":
                    status, actions = retry(status, observed(status, now, modes), now)
                else:
                    status, actions = {"pause": pause, "resume": resume, "abort": abort}[command](
                        status, now
                    )
            except RolloutCommandError:
                continue
            if command == "retry":
                assert before.phase.can_retry()
                assert (status.attempt, status.stage) == (before.attempt + 1, 0)
                passed = set()
            else:
                assert status.stage == before.stage
        else:
            observations = observed(status, now, modes)
            status, actions = next_state(status, observations, now)
            if before.phase.is_terminal() or before.phase is P.PENDING:
                assert (status, actions) == (before, [])
            advanced = status.stage == before.stage + 1 or (
                status.phase is P.SUCCEEDED and before.phase is not P.SUCCEEDED
            )
            if advanced:
                assert before.phase is P.PROGRESSING
                assert data_met(before, observations, now), "promoted without its data"
                assert status.last_check is not None
                assert status.last_check.verdict is Verdict.PASS
                passed.add(before.stage)
            else:
                assert status.stage == before.stage, "the stage only moves one step, forward"
        assert len(status.history) - len(before.history) in (0, 1), "one transition per call"
        if status.phase is P.SUCCEEDED:
            assert passed == set(range(len(status.policy.stages))), "every stage passed"
        if status.phase is P.ROLLING_BACK and before.phase is not P.ROLLING_BACK:
            first = actions[0]
            assert isinstance(first, TargetDevices)
            assert (first.version, first.device_ids) == (STABLE, status.targeted)
        assert roundtrip(status) == status
    event(f"ended {status.phase.value} at stage {status.stage + 1}, attempt {status.attempt}")


# --- fleets without labels: shadow comparisons ---------------------------------------------------

LABEL_FREE = {
    "cohorts": {
        HOST: {"p95_latency_ms": 5, "required": ["p95_latency", "error_rate", "agreement"]},
        EDGE: {"p95_latency_ms": 20, "required": ["p95_latency", "error_rate", "agreement"]},
    },
    "gates": {
        "max_error_rate": 0.05,
        "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 50},
        "agreement": {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 100},
        "prediction_shift": {"max_distance": 0.1, "alpha": 0.05, "min_samples": 100},
    },
    "shadow": {"rate": 0.2, "cpu_budget": 0.5},
    "stage_min_feedback": 0,
}


def test_a_fleet_without_labels_succeeds_on_agreement_latency_and_errors() -> None:
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0, labels=0), T0)
    now = T0
    for _ in range(3):
        now += timedelta(seconds=61)
        status, _ = next_state(status, obs(status, now, labels=0, shadow=compared(400, 0.01)), now)
    assert status.phase is P.SUCCEEDED, status.reason
    assert status.last_check is not None
    for cohort in status.last_check.cohorts:
        verdicts = {g.gate: g.verdict for g in cohort.gates}
        assert verdicts[Gate.ACCURACY] is Verdict.INCONCLUSIVE  # no label ever came
        assert verdicts[Gate.AGREEMENT] is Verdict.PASS
        assert verdicts[Gate.PREDICTION_SHIFT] is Verdict.PASS


def test_a_canary_that_disagrees_with_stable_rolls_back_on_the_agreement_gate() -> None:
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0, labels=0), T0)
    now = T0 + timedelta(seconds=20)
    new, _ = next_state(status, obs(status, now, labels=0, shadow=compared(400, 0.3)), now)
    assert new.phase is P.ROLLING_BACK
    assert {(c.gate, c.cohort) for c in new.causes} >= {
        (Gate.AGREEMENT, EDGE),
        (Gate.AGREEMENT, HOST),
    }
    assert "disagree" in new.reason


def test_a_shifted_class_distribution_rolls_back_on_prediction_shift() -> None:
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0, labels=0), T0)
    now = T0 + timedelta(seconds=20)
    shifted = compared(2000, 0.0, shifted=0.2)  # a fifth of the answers move from class 0 to 1
    new, _ = next_state(status, obs(status, now, labels=0, shadow=shifted), now)
    assert new.phase is P.ROLLING_BACK
    assert Gate.PREDICTION_SHIFT in {c.gate for c in new.causes}


def test_without_shadow_comparisons_a_required_agreement_gate_is_missing_at_the_deadline() -> None:
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0, labels=0), T0)
    now = T0 + timedelta(seconds=61)
    status, _ = next_state(status, obs(status, now, labels=0), now)
    assert status.phase is P.PROGRESSING and status.stage == 0  # waits for comparisons
    now = T0 + timedelta(seconds=301)
    status, _ = next_state(status, obs(status, now, labels=0), now)
    assert status.phase is P.ROLLING_BACK
    assert {c.gate for c in status.causes} == {Gate.AGREEMENT}
    assert "agreement on edge-small" in status.reason


def test_a_gate_the_cohort_does_not_require_still_rolls_back_when_it_fails() -> None:
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0), T0)
    now = T0 + timedelta(seconds=20)
    labelled = obs(status, now, canary_accuracy=0.5, labels=400, shadow=compared(400, 0.0))
    new, _ = next_state(status, labelled, now)
    assert new.phase is P.ROLLING_BACK
    assert {c.gate for c in new.causes} == {Gate.ACCURACY}


# --- evidence carried across stage windows ---------------------------------------------------------


def test_evidence_from_earlier_windows_tips_a_gate_that_one_window_would_pass() -> None:
    status = new_status()
    status, _ = start(status, obs(status, T0), T0)
    now = T0 + timedelta(seconds=20)
    slightly_worse = obs(status, now, canary_accuracy=0.90)
    alone, _ = next_state(status, slightly_worse, now)
    assert alone.phase is P.PROGRESSING and alone.last_check is not None
    (edge,) = [c for c in alone.last_check.cohorts if c.hardware_class == EDGE]
    log_e = edge.accuracy.log_e
    assert log_e is not None and 0 < log_e < math.log(20)  # some evidence, not enough alone
    banked = CarriedEvidence(
        gate=Gate.ACCURACY, cohort=EDGE, log_e=math.log(20) - log_e / 2, windows=1
    )
    carried = status.model_copy(update={"evidence": (banked,)})
    new, _ = next_state(carried, slightly_worse, now)
    assert new.phase is P.ROLLING_BACK
    assert [(c.gate, c.cohort) for c in new.causes] == [(Gate.ACCURACY, EDGE)]
    assert "carried from earlier stages" in new.reason


def test_each_ended_window_is_carried_floored_and_a_retry_starts_afresh() -> None:
    d = Driver(new_status())
    d.command("start")
    d.tick(61)
    d.step()  # stage 1 passes on healthy numbers: its windows' evidence is carried
    assert d.status.stage == 1
    carried = {(c.gate, c.cohort): c for c in d.status.evidence}
    assert set(carried) == {(g, c) for g in (Gate.ACCURACY, Gate.ERROR_RATE) for c in (EDGE, HOST)}
    floor = math.log(EVIDENCE_FLOOR) - math.log1p(EVIDENCE_FLOOR)
    assert all(c.windows == 1 and floor <= c.log_e < 0 for c in carried.values())
    check = d.status.last_check
    assert check is not None
    twice = carry_evidence(d.status.evidence, check)
    assert all(c.windows == 2 for c in twice)
    d.command("pause")
    d.command("resume")  # the paused window ends: its evidence is carried too
    assert all(c.windows == 2 for c in d.status.evidence)
    d.step(latency_ms={EDGE: 40.0})
    d.tick(5)
    d.step()
    d.command("retry")
    assert d.status.evidence == ()


def test_a_cohort_of_one_device_finishes_on_shadow_comparisons() -> None:
    fleet = {"host-0": HOST, "edge-0": EDGE}  # every stage targets the whole of each cohort
    status = new_status(**LABEL_FREE)
    status, _ = start(status, obs(status, T0, fleet=fleet, labels=0), T0)
    now = T0
    for _ in range(3):
        now += timedelta(seconds=61)
        seen = obs(status, now, fleet=fleet, labels=0, shadow=compared(400, 0.0))
        status, _ = next_state(status, seen, now)
    assert status.phase is P.SUCCEEDED, status.reason
    assert status.last_check is not None
    assert all(c.stable_arm == "none" for c in status.last_check.cohorts)  # no stable device left
