"""The decision core of a staged canary rollout: ``next_state`` and the operator commands, all pure.

The controller runs a retry-safe pass (STYLE rule 3)::

    status = load(rollout_id)                          # persisted RolloutStatus
    observations = aggregate(status.window_start)      # telemetry since the stage started
    new, actions = next_state(status, observations, clock())
    save(new, outbox=actions)                          # one transaction
    perform(actions)                                   # idempotent; redone after a crash

Nothing here reads a clock, a file, the network or the database: everything a decision needs is in the
status (the policy the rollout started with, the chosen devices, the stage's start, the stable baseline)
or in the observations, and the clock is an argument. So a pass can be repeated: the same inputs give the
same output, and a controller that restarts resumes exactly where the persisted status stands. Each call
makes at most one transition (one entry appended to ``history``); a call that makes none may still update
``last_check``, the evidence shown by ``edgeloop rollout status``.

Rules, in the order a pass applies them to a stage (PROGRESSING; PAUSED applies only the first):

1. a gate FAILS on any cohort → ROLLING_BACK at once, whatever the bake time: every device of the rollout is
   targeted at stable, then the outcome is recorded, then people are told (STYLE rule 4);
2. the bake time has elapsed and every cohort PASSES (data minimums and gates, worst wins) → the next
   stage, or SUCCEEDED after the last;
3. the deadline has passed → silence, never success: with ``on_inconclusive: fail`` ROLLING_BACK towards
   FAILED, with ``pause`` PAUSED; either way the reason names the silent devices and the missing data;
4. otherwise wait.

Rollback is two phases, on purpose: ROLLING_BACK until every device of the rollout reports the stable
version in telemetry received after the rollback began (or ``rollback_timeout_s`` passes, and the reason
names the devices that never confirmed), then the terminal phase it was heading for (``ending``):
ROLLED_BACK, FAILED or ABORTED. A rollout is not called rolled back while devices still run the canary,
for the same reason a device is not called upgraded while it still runs the old model.

A rollout that ended without success can be retried (argo-rollouts#841): a fresh attempt from stage 0,
with ``attempt`` incremented and the history kept.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from fleet.controller.errors import ObservationsError, RolloutCommandError
from fleet.controller.rollout.actions import (
    Action,
    AttemptOutcome,
    Notify,
    RecordOutcome,
    TargetDevices,
)
from fleet.controller.rollout.assignment import Assignment, assign_stage
from fleet.controller.rollout.evaluate import (
    CarriedEvidence,
    DeviceGap,
    StableBaseline,
    StageCheck,
    carry_evidence,
    describe_gaps,
    device_problem,
    evaluate_stage,
)
from fleet.controller.rollout.observations import Observations
from fleet.controller.rollout.phase import RolloutPhase, Verdict
from fleet.controller.rollout.policy import RolloutPolicy
from fleet.controller.rollout.stats import GateResult


class Transition(BaseModel):
    """One change of phase (or of stage), with the reason a person reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: AwareDatetime
    attempt: int
    stage: int = Field(description="0-based stage index after the transition")
    from_phase: RolloutPhase
    to_phase: RolloutPhase
    reason: str


class RolloutStatus(BaseModel):
    """Everything persisted about one rollout; a decision needs nothing else but observations and now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout_id: str = Field(min_length=1)
    model: str
    canary_version: str
    stable_version: str
    policy: RolloutPolicy
    phase: RolloutPhase = RolloutPhase.PENDING
    attempt: int = Field(1, ge=1)
    stage: int = Field(0, ge=0, description="0-based index into policy.stages")
    created_at: AwareDatetime
    phase_since: AwareDatetime
    stage_started_at: AwareDatetime | None = Field(
        None,
        description="start of the stage's window: bake, deadline and telemetry count from here",
    )
    assignments: tuple[Assignment, ...] = Field((), description="devices targeted at the canary")
    baselines: tuple[StableBaseline, ...] = ()
    evidence: tuple[CarriedEvidence, ...] = Field(
        (), description="e-values of the ended windows of this attempt, per gate and cohort"
    )
    ending: RolloutPhase | None = Field(
        None, description="while ROLLING_BACK: the terminal phase it ends in"
    )
    causes: tuple[GateResult, ...] = Field(
        (),
        description="why it is rolling back, failed, or paused for silence: gate, cohort, values",
    )
    silent_devices: tuple[str, ...] = Field(
        (), description="devices named when a stage lacked data at its deadline"
    )
    last_check: StageCheck | None = None
    history: tuple[Transition, ...] = ()

    @model_validator(mode="after")
    def _coherent(self) -> RolloutStatus:
        if self.canary_version == self.stable_version:
            raise ValueError("canary_version: the same as stable_version")
        if self.stage > self.policy.last_stage:
            raise ValueError(f"stage: {self.stage} but the policy has {len(self.policy.stages)}")
        if (self.ending is not None) != (self.phase is RolloutPhase.ROLLING_BACK):
            raise ValueError("ending: set exactly while rolling back")
        if self.ending is not None and not self.ending.can_retry():
            raise ValueError(f"ending: {self.ending} is not where a rollback ends")
        return self

    @property
    def window_start(self) -> datetime | None:
        """Where the observations for the next pass must start summing telemetry; None: any window."""
        if self.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED):
            return self.stage_started_at
        return None

    @property
    def targeted(self) -> tuple[str, ...]:
        """Every device this attempt targeted at the canary, cohort by cohort, in rank order."""
        return tuple(d for a in self.assignments for d in a.device_ids)

    @property
    def reason(self) -> str:
        """Why it is in its phase: the reason of the latest transition."""
        return self.history[-1].reason if self.history else "created"

    def stage_label(self, stage: int | None = None) -> str:
        """``stage 2/4 (25%)``: 1-based, as people count."""
        index = self.stage if stage is None else stage
        fraction = self.policy.stage(index).fraction
        return f"stage {index + 1}/{len(self.policy.stages)} ({fraction:.0%})"


Decision = tuple[RolloutStatus, list[Action]]
"""What every function here returns: the status to persist, then the actions to perform in order."""


def new_rollout(
    *,
    rollout_id: str,
    model: str,
    canary_version: str,
    stable_version: str,
    policy: RolloutPolicy,
    now: datetime,
) -> RolloutStatus:
    """A PENDING rollout of ``canary_version`` replacing ``stable_version``; ``start`` begins it."""
    _aware(now)
    return RolloutStatus(
        rollout_id=rollout_id,
        model=model,
        canary_version=canary_version,
        stable_version=stable_version,
        policy=policy,
        created_at=now,
        phase_since=now,
    )


def desired_versions(status: RolloutStatus) -> dict[str, str]:
    """The version each device of the rollout should run now, from the status alone.

    For reconciling the desired-state table after a restart. Devices not listed are not this rollout's
    business (the controller's default: the ``production`` version).
    """
    if status.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED, RolloutPhase.SUCCEEDED):
        version = status.canary_version
    elif status.phase is RolloutPhase.PENDING:
        return {}
    else:
        version = status.stable_version
    return dict.fromkeys(status.targeted, version)


# --- the pass ---------------------------------------------------------------------------------------


def next_state(status: RolloutStatus, observations: Observations, now: datetime) -> Decision:
    """One retry-safe pass: at most one transition, and the actions it calls for, in order."""
    _aware(now)
    phase = status.phase
    if phase is RolloutPhase.PENDING or phase.is_terminal():
        return status, []
    if phase is RolloutPhase.ROLLING_BACK:
        return _follow_rollback(status, observations, now)
    _same_window(status, observations)
    assert status.stage_started_at is not None
    check = evaluate_stage(
        policy=status.policy,
        stage=status.stage,
        canary_version=status.canary_version,
        stable_version=status.stable_version,
        assignments=status.assignments,
        baselines=status.baselines,
        observations=observations,
        stage_started_at=status.stage_started_at,
        now=now,
        evidence=status.evidence,
    )
    status = status.model_copy(update={"last_check": check})
    failed = check.with_verdict(Verdict.FAIL)
    if failed:
        reason = f"{status.stage_label()}: " + "; ".join(
            f"gate {r.gate} failed on {r.cohort}: {r.reason}" for r in failed
        )
        return _roll_back(
            status, now, ending=RolloutPhase.ROLLED_BACK, reason=reason, causes=failed, silent=()
        )
    if phase is RolloutPhase.PAUSED:
        return status, []
    if check.baked and check.verdict is Verdict.PASS:
        return _advance(status, observations, check, now)
    if check.elapsed_s >= status.policy.stage(status.stage).deadline_s:
        return _silence(status, check, now)
    return status, []


def _advance(
    status: RolloutStatus, observations: Observations, check: StageCheck, now: datetime
) -> Decision:
    passed = (
        f"{status.stage_label()} passed after {check.elapsed_s:.0f} s on "
        f"{', '.join(c.hardware_class for c in check.cohorts)}: "
        + "; ".join(g.reason for c in check.cohorts for g in c.gates)
    )
    if status.stage == status.policy.last_stage:
        new = _moved(status, now, RolloutPhase.SUCCEEDED, f"{passed}; rollout succeeded")
        return new, [
            _outcome(new, "succeeded", new.reason, causes=()),
            _notify(
                new,
                f"{status.model} {status.canary_version} passed every stage; "
                "every device of the rollout is targeted at it",
            ),
        ]
    stage = status.stage + 1
    assignments = assign_stage(
        rollout_id=status.rollout_id,
        policy=status.policy,
        stage=stage,
        previous=status.assignments,
        observations=observations,
    )
    before = set(status.targeted)
    added = tuple(d for a in assignments for d in a.device_ids if d not in before)
    started = f"{status.stage_label(stage)} started, {len(added)} more device(s) targeted"
    new = _moved(
        status,
        now,
        RolloutPhase.PROGRESSING,
        f"{passed}; {started}",
        stage=stage,
        stage_started_at=now,
        assignments=assignments,
        baselines=_baselines(status, check),
        evidence=carry_evidence(status.evidence, check),
    )
    actions: list[Action] = []
    if added:
        actions.append(_target(new, added, status.canary_version))
    actions.append(_notify(new, started))
    return new, actions


def _baselines(status: RolloutStatus, check: StageCheck) -> tuple[StableBaseline, ...]:
    """Keep each cohort's stable arm when this stage measured one with enough labels."""
    kept = {b.hardware_class: b for b in status.baselines}
    gates = status.policy.gates
    for cohort in check.cohorts:
        test = cohort.accuracy
        labels = test.stable_total >= gates.accuracy.min_samples
        targets = gates.mae is not None and cohort.stable_targets.n >= gates.mae.min_samples
        if cohort.stable_arm == "window" and (labels or targets):
            kept[cohort.hardware_class] = StableBaseline(
                hardware_class=cohort.hardware_class,
                correct=test.stable_correct,
                total=test.stable_total,
                targets=cohort.stable_targets,
                stage=status.stage,
            )
    return tuple(kept[name] for name in sorted(kept))


def _silence(status: RolloutStatus, check: StageCheck, now: datetime) -> Decision:
    stage = status.policy.stage(status.stage)
    gaps = check.gaps
    silent = tuple(g.device_id for g in gaps)
    missing = check.with_verdict(Verdict.INCONCLUSIVE)
    reason = (
        f"{status.stage_label()} has no verdict at its deadline ({stage.deadline_s:g} s); "
        f"silence is not success. Silent devices: {describe_gaps(gaps) if gaps else 'none'}. "
        "Missing: " + "; ".join(f"{r.gate} on {r.cohort}: {r.reason}" for r in missing)
    )
    if status.policy.on_inconclusive == "pause":
        new = _moved(
            status, now, RolloutPhase.PAUSED, reason, causes=missing, silent_devices=silent
        )
        return new, [_notify(new, reason)]
    return _roll_back(
        status, now, ending=RolloutPhase.FAILED, reason=reason, causes=missing, silent=silent
    )


def _roll_back(
    status: RolloutStatus,
    now: datetime,
    *,
    ending: RolloutPhase,
    reason: str,
    causes: tuple[GateResult, ...],
    silent: tuple[str, ...],
) -> Decision:
    """Target every device of the rollout at stable, record the outcome, notify: in this order."""
    devices = status.targeted
    outcomes: dict[RolloutPhase, AttemptOutcome] = {
        RolloutPhase.ROLLED_BACK: "rolled_back",
        RolloutPhase.FAILED: "failed",
        RolloutPhase.ABORTED: "aborted",
    }
    outcome = outcomes[ending]
    to = RolloutPhase.ROLLING_BACK if devices else ending
    new = _moved(
        status,
        now,
        to,
        reason,
        ending=ending if devices else None,
        causes=causes,
        silent_devices=silent,
    )
    actions: list[Action] = []
    if devices:
        actions.append(_target(new, devices, status.stable_version))
    actions.append(_outcome(new, outcome, reason, causes=causes))
    actions.append(_notify(new, reason))
    return new, actions


def _follow_rollback(status: RolloutStatus, observations: Observations, now: datetime) -> Decision:
    """ROLLING_BACK → its ending once every device reports stable since it began, or on timeout."""
    assert status.ending is not None
    devices = observations.by_id()
    gaps = []
    for device_id in status.targeted:
        device = devices.get(device_id)
        problem = (
            device_problem(
                device,
                canary=status.stable_version,
                stable=status.stable_version,
                since=status.phase_since,
            )
            if device is not None
            else "not enrolled any more"
        )
        if problem is not None:
            gaps.append(DeviceGap(device_id=device_id, problem=problem))
    waited = (now - status.phase_since).total_seconds()
    if not gaps:
        reason = (
            f"every device of the rollout ({len(status.targeted)}) reports "
            f"{status.stable_version} after {waited:.0f} s"
        )
    elif waited >= status.policy.rollback_timeout_s:
        reason = (
            f"rollback timeout ({status.policy.rollback_timeout_s:g} s): "
            f"{len(status.targeted) - len(gaps)}/{len(status.targeted)} devices report "
            f"{status.stable_version}; not confirmed, targeted at it: {describe_gaps(tuple(gaps))}"
        )
    else:
        return status, []
    new = _moved(status, now, status.ending, reason, ending=None)
    return new, [_notify(new, reason)]


# --- operator commands --------------------------------------------------------------------------------


def start(status: RolloutStatus, observations: Observations, now: datetime) -> Decision:
    """PENDING → PROGRESSING at stage 1: target its share of every cohort at the canary."""
    _aware(now)
    _allowed(status, "start", status.phase is RolloutPhase.PENDING)
    return _begin(status, observations, now, "start", f"started: {status.stage_label(0)}")


def retry(status: RolloutStatus, observations: Observations, now: datetime) -> Decision:
    """A fresh attempt from stage 1 after ROLLED_BACK, FAILED or ABORTED; history is kept."""
    _aware(now)
    _allowed(
        status, "retry", status.phase.can_retry(), hint="only a rollout that ended unsuccessfully"
    )
    fresh = status.model_copy(
        update={
            "attempt": status.attempt + 1,
            "stage": 0,
            "assignments": (),
            "baselines": (),
            "evidence": (),
            "causes": (),
            "silent_devices": (),
            "last_check": None,
        }
    )
    return _begin(
        fresh,
        observations,
        now,
        "retry",
        f"retry: attempt {fresh.attempt} from {fresh.stage_label(0)}",
    )


def pause(
    status: RolloutStatus, now: datetime, *, reason: str = "paused by an operator"
) -> Decision:
    """PROGRESSING → PAUSED: no promotion and no deadline; failing gates still roll back."""
    _aware(now)
    _allowed(status, "pause", status.phase is RolloutPhase.PROGRESSING)
    new = _moved(status, now, RolloutPhase.PAUSED, f"{status.stage_label()}: {reason}")
    return new, [_notify(new, new.reason)]


def resume(status: RolloutStatus, now: datetime) -> Decision:
    """PAUSED → PROGRESSING, restarting the stage's window: bake and deadline count again from now."""
    _aware(now)
    _allowed(status, "resume", status.phase is RolloutPhase.PAUSED)
    reason = f"{status.stage_label()} resumed; its window restarts"
    check = status.last_check
    new = _moved(
        status,
        now,
        RolloutPhase.PROGRESSING,
        reason,
        stage_started_at=now,
        evidence=carry_evidence(status.evidence, check) if check else status.evidence,
        causes=(),
        silent_devices=(),
        last_check=None,
    )
    return new, [_notify(new, reason)]


def abort(
    status: RolloutStatus, now: datetime, *, reason: str = "aborted by an operator"
) -> Decision:
    """PENDING, PROGRESSING or PAUSED → ABORTED, through ROLLING_BACK when devices were targeted."""
    _aware(now)
    _allowed(
        status,
        "abort",
        status.phase in (RolloutPhase.PENDING, RolloutPhase.PROGRESSING, RolloutPhase.PAUSED),
    )
    return _roll_back(status, now, ending=RolloutPhase.ABORTED, reason=reason, causes=(), silent=())


def _begin(
    status: RolloutStatus, observations: Observations, now: datetime, command: str, reason: str
) -> Decision:
    assignments = assign_stage(
        rollout_id=status.rollout_id,
        policy=status.policy,
        stage=0,
        previous=(),
        observations=observations,
    )
    devices = tuple(d for a in assignments for d in a.device_ids)
    if not devices:
        raise RolloutCommandError(
            f"rollout {status.rollout_id}: no enrolled device of "
            f"{', '.join(sorted(status.policy.cohorts))} to roll out to",
            command=command,
            phase=status.phase,
            hint="enrol a device of a class the policy names",
        )
    counts = ", ".join(f"{a.hardware_class} {len(a.device_ids)}" for a in assignments)
    new = _moved(
        status,
        now,
        RolloutPhase.PROGRESSING,
        f"{reason}, devices targeted: {counts}",
        stage=0,
        stage_started_at=now,
        assignments=assignments,
    )
    return new, [_target(new, devices, status.canary_version), _notify(new, new.reason)]


# --- helpers ------------------------------------------------------------------------------------------


def _moved(
    status: RolloutStatus, now: datetime, to: RolloutPhase, reason: str, **changes: object
) -> RolloutStatus:
    """``status`` with one transition to ``to`` appended and ``changes`` applied."""
    stage = changes.get("stage", status.stage)
    assert isinstance(stage, int)
    entry = Transition(
        at=now,
        attempt=status.attempt,
        stage=stage,
        from_phase=status.phase,
        to_phase=to,
        reason=reason,
    )
    changes.setdefault("ending", None)
    return status.model_copy(
        update={
            **changes,
            "phase": to,
            "phase_since": now,
            "history": (*status.history, entry),
        }
    )


def _target(new: RolloutStatus, devices: tuple[str, ...], version: str) -> TargetDevices:
    return TargetDevices(
        rollout_id=new.rollout_id,
        attempt=new.attempt,
        transition=len(new.history) - 1,
        version=version,
        device_ids=devices,
    )


def _notify(new: RolloutStatus, message: str) -> Notify:
    return Notify(
        rollout_id=new.rollout_id,
        attempt=new.attempt,
        transition=len(new.history) - 1,
        phase=new.phase,
        message=message,
    )


def _outcome(
    new: RolloutStatus, outcome: AttemptOutcome, reason: str, *, causes: tuple[GateResult, ...]
) -> RecordOutcome:
    return RecordOutcome(
        rollout_id=new.rollout_id,
        attempt=new.attempt,
        transition=len(new.history) - 1,
        model=new.model,
        version=new.canary_version,
        stable_version=new.stable_version,
        outcome=outcome,
        reason=reason,
        causes=causes,
    )


def _allowed(status: RolloutStatus, command: str, ok: bool, hint: str = "") -> None:
    if not ok:
        raise RolloutCommandError(
            f"rollout {status.rollout_id} is {status.phase}: cannot {command}",
            command=command,
            phase=status.phase,
            hint=hint,
        )


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now: must be timezone-aware (UTC)")


def _same_window(status: RolloutStatus, observations: Observations) -> None:
    expected = status.window_start
    if expected is not None and observations.window_start != expected:
        raise ObservationsError(
            f"rollout {status.rollout_id}: observations summed from {observations.window_start}, "
            f"but {status.stage_label()} started at {expected}",
            expected=str(expected),
            got=str(observations.window_start),
        )


__all__ = [
    "Decision",
    "RolloutStatus",
    "Transition",
    "abort",
    "desired_versions",
    "new_rollout",
    "next_state",
    "pause",
    "resume",
    "retry",
    "start",
]
