"""Judging one stage: per cohort, the data minimums and every gate, from the observations of its window.

This is the evidence a transition rests on, kept apart from the transitions themselves (``decide``) so
that the status can carry it (``RolloutStatus.last_check``: what ``edgeloop rollout status`` shows) and
so that it can be tested without a state machine around it.

Who counts for what, per cohort:

* **targeted**: the devices the status assigned to the canary in this cohort;
* **confirmed**: targeted devices whose latest report, received in the window, came FROM the canary;
* **canary arm**: canary-version telemetry of targeted devices in the window (inferences, errors,
  latency, labelled feedback);
* **stable arm** (accuracy and MAE only): stable-version labelled feedback from the cohort's devices in the same
  window; when every device of the cohort is targeted (the last stage, or a tiny cohort) no device is
  left to run stable in the window, so the arm is the **baseline**: the stable arm the status kept from
  the last stage that measured one. Without either, the accuracy gate stays INCONCLUSIVE.

* **shadow** (agreement and prediction shift): the canary arm's paired comparisons against the
  stable version, made on the canary devices themselves; no stable device and no label is needed, so
  these gates work in the last stage and on fleets that never send labels.

The minimums (``Gate.DATA``) PASS or stay INCONCLUSIVE; only a gate breaking its limit on enough data
FAILS. A stage passes when every cohort's data minimums and **required** gates (``CohortPolicy.required``)
combine (worst wins) to PASS; a gate the cohort does not require still rolls back when it FAILS, and its
INCONCLUSIVE holds nothing.

Evidence that carries over: accuracy, agreement and error rate are e-processes (``stats`` and
``sequential`` explain them). A stage's window is a fresh one, but the e-values of the earlier windows
of the same rollout, gate and cohort multiply into it (:class:`CarriedEvidence`), so evidence gathered in
stage 1 still counts in stage 3 and the rollout as a whole stays at the gate's alpha with no split over
stages. What is carried is each ended window's final e-value ``E`` floored as ``max(E, FLOOR) / (1 +
FLOOR)``, itself an e-value: a canary that looked fine early cannot bank so much evidence for "fine"
that a later failure goes unseen, at a cost of ``log(1 + FLOOR)`` per window. The prediction-shift bound
does not carry over; it spends ``policy.stage_alpha(alpha)`` per window.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fleet.controller.rollout.assignment import Assignment
from fleet.controller.rollout.observations import (
    DeviceObservation,
    Observations,
    Refusal,
    ShadowSums,
    VersionTelemetry,
)
from fleet.controller.rollout.phase import Verdict, worst
from fleet.controller.rollout.policy import Gates, RolloutPolicy
from fleet.controller.rollout.stats import (
    AccuracyTest,
    ErrorSums,
    Gate,
    GateResult,
    accuracy_gate,
    accuracy_test,
    agreement_gate,
    error_rate_gate,
    latency_gate,
    mae_gate,
    prediction_shift_gate,
)
from fleet.shared.latency import merge_histograms

NAMES_IN_REASON = 20

DEVICE_WEIGHT_CAP = 3.0
"""In a gate, a device counts for at most this many times the median of its arm's other devices
(:func:`device_weights`)."""

SHA256_REFUSALS_TO_FAIL = 3
"""sha256 refusals of the canary by one device, in one window, that fail the artifact gate."""
"""At most this many device ids are spelled out in a reason; the full list is kept in the status."""


class StableBaseline(BaseModel):
    """A cohort's stable-arm feedback measured in an earlier stage's window, for when none is left."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware_class: str
    correct: int = Field(ge=0)
    total: int = Field(ge=0)
    targets: ErrorSums = Field(
        default_factory=ErrorSums, description="a regressor's absolute errors on field targets"
    )
    stage: int = Field(ge=0, description="the stage whose window measured it")


CARRIED_GATES = (Gate.ACCURACY, Gate.MAE, Gate.AGREEMENT, Gate.ERROR_RATE)
"""Gates whose evidence multiplies across stage windows."""

EVIDENCE_FLOOR = 0.1
"""An ended window's e-value is carried as ``max(E, EVIDENCE_FLOOR) / (1 + EVIDENCE_FLOOR)``."""

MAX_LOG_E = 700.0
"""Larger log e-values are carried as this: finite, so the status stays valid JSON."""


class CarriedEvidence(BaseModel):
    """The summed log e-values of the ended windows of one gate on one cohort."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gate: Gate
    cohort: str
    log_e: float
    windows: int = Field(ge=1, description="ended windows behind it")


def carry_evidence(
    carried: tuple[CarriedEvidence, ...], check: StageCheck
) -> tuple[CarriedEvidence, ...]:
    """``carried`` with the final e-values of ``check``'s window added (each floored, see the module
    docstring); called when the window ends: its stage passed, or a resume restarts it."""
    sums = {(c.gate, c.cohort): c for c in carried}
    for cohort in check.cohorts:
        for result in cohort.gates:
            if result.gate not in CARRIED_GATES or result.log_e is None:
                continue
            floored = max(min(result.log_e, MAX_LOG_E), math.log(EVIDENCE_FLOOR))
            step = floored - math.log1p(EVIDENCE_FLOOR)
            before = sums.get((result.gate, result.cohort))
            sums[(result.gate, result.cohort)] = CarriedEvidence(
                gate=result.gate,
                cohort=result.cohort,
                log_e=step + (before.log_e if before is not None else 0.0),
                windows=1 + (before.windows if before is not None else 0),
            )
    return tuple(sums[key] for key in sorted(sums))


class DeviceGap(BaseModel):
    """A targeted device that is not giving the stage what it needs, and what is missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    problem: str


class CohortCheck(BaseModel):
    """One cohort in one stage: counts against minimums, and every gate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware_class: str
    targeted: int
    confirmed: int
    required_confirmed: int
    inferences: int
    required_inferences: int
    feedback: int = Field(description="labelled canary predictions: class labels and target values")
    required_feedback: int
    stable_arm: str = Field(description="'window', 'baseline from stage N' or 'none'")
    shadow_compared: int = Field(0, description="rows the canary arm compared with stable")
    gaps: tuple[DeviceGap, ...] = Field(description="targeted devices short of something")
    data: GateResult
    gates: tuple[GateResult, ...] = Field(
        description="p95 latency, error rate, accuracy, and agreement and prediction shift "
        "when the policy sets them"
    )
    required: tuple[str, ...] = Field(
        ("p95_latency", "error_rate", "accuracy"), description="gates that must reach a verdict"
    )
    accuracy: AccuracyTest
    stable_targets: ErrorSums = Field(
        default_factory=ErrorSums, description="the stable arm's absolute errors (regressors)"
    )

    @property
    def results(self) -> tuple[GateResult, ...]:
        """What the stage waits on: the data minimums, every required gate, and any gate that
        FAILED (a failure rolls back whether the gate is required or not)."""
        counted = tuple(
            g for g in self.gates if g.gate in self.required or g.verdict is Verdict.FAIL
        )
        return (self.data, *counted)

    @property
    def verdict(self) -> Verdict:
        """Worst of the data minimums, the required gates and any failed gate."""
        return worst(r.verdict for r in self.results)


class StageCheck(BaseModel):
    """Every cohort of one stage at one moment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: int
    at: AwareDatetime
    elapsed_s: float
    baked: bool
    cohorts: tuple[CohortCheck, ...]

    @property
    def verdict(self) -> Verdict:
        """Worst over cohorts; a stage with no cohort to judge is INCONCLUSIVE."""
        return worst(c.verdict for c in self.cohorts)

    def with_verdict(self, verdict: Verdict) -> tuple[GateResult, ...]:
        """Every result (data and gates, cohort by cohort) with exactly ``verdict``."""
        return tuple(r for c in self.cohorts for r in c.results if r.verdict is verdict)

    @property
    def gaps(self) -> tuple[DeviceGap, ...]:
        """Every short device, cohort by cohort."""
        return tuple(g for c in self.cohorts for g in c.gaps)


def evaluate_stage(
    *,
    policy: RolloutPolicy,
    stage: int,
    canary_version: str,
    stable_version: str,
    assignments: tuple[Assignment, ...],
    baselines: tuple[StableBaseline, ...],
    observations: Observations,
    stage_started_at: datetime,
    now: datetime,
    evidence: tuple[CarriedEvidence, ...] = (),
) -> StageCheck:
    """Judge ``stage`` from observations summed since ``stage_started_at``, with the ``evidence``
    carried from earlier windows; see the module docstring."""
    devices = observations.by_id()
    kept = {b.hardware_class: b for b in baselines}
    prior = {(c.gate, c.cohort): c.log_e for c in evidence}
    cohorts = tuple(
        _check_cohort(
            policy=policy,
            stage=stage,
            cohort=a.hardware_class,
            targeted=a.device_ids,
            canary=canary_version,
            stable=stable_version,
            baseline=kept.get(a.hardware_class),
            devices=devices,
            window_start=stage_started_at,
            prior=prior,
        )
        for a in sorted(assignments, key=lambda a: a.hardware_class)
        if a.device_ids and a.hardware_class in policy.cohorts
    )
    elapsed = (now - stage_started_at).total_seconds()
    return StageCheck(
        stage=stage,
        at=now,
        elapsed_s=elapsed,
        baked=elapsed >= policy.stage(stage).bake_s,
        cohorts=cohorts,
    )


def _check_cohort(
    *,
    policy: RolloutPolicy,
    stage: int,
    cohort: str,
    targeted: tuple[str, ...],
    canary: str,
    stable: str,
    baseline: StableBaseline | None,
    devices: dict[str, DeviceObservation],
    window_start: datetime,
    prior: dict[tuple[Gate, str], float],
) -> CohortCheck:
    rules = policy.stage(stage)
    is_targeted = set(targeted)
    on_canary = [devices[d].of_version(canary) for d in targeted if d in devices]
    canary_arm = [t for t in on_canary if t is not None]
    confirmed = [d for d in targeted if d in devices and devices[d].reports(canary, window_start)]
    required = rules.required_confirmed(len(targeted))
    everyone_targeted = all(
        d.device_id in is_targeted for d in devices.values() if d.hardware_class == cohort
    )
    canary_ids = [d for d in targeted if d in devices and devices[d].of_version(canary)]
    stable_arm: list[tuple[str, VersionTelemetry]] | None = None
    if not everyone_targeted:
        stable_arm = [
            (d.device_id, t)
            for d in devices.values()
            if d.hardware_class == cohort and (t := d.of_version(stable)) is not None
        ]
        arm = "window"
    elif baseline is not None:
        arm = f"baseline from stage {baseline.stage + 1}"
    else:
        arm = "none"
    note = ""
    if arm != "window":
        note = "every device of the cohort is targeted, so stable is " + (
            f"the {arm}" if baseline is not None else "unmeasured (no earlier stage measured it)"
        )
    judge = _Judge(policy=policy, cohort=cohort, stable=stable, baseline=baseline, prior=prior,
                   note=note, min_inferences=rules.min_inferences)  # fmt: skip
    canary_pairs = list(zip(canary_ids, canary_arm, strict=True))
    everyone = judge(canary_pairs, stable_arm)
    inferences, feedback = everyone.inferences, everyone.labelled

    short_inferences = inferences < rules.min_inferences
    short_feedback = feedback < rules.min_feedback
    gaps = tuple(
        _gaps(
            targeted,
            devices,
            canary=canary,
            stable=stable,
            window_start=window_start,
            min_inferences=rules.min_inferences if short_inferences else None,
            min_feedback=rules.min_feedback if short_feedback else None,
        )
    )
    data_ok = len(confirmed) >= required and not short_inferences and not short_feedback
    data_reason = (
        f"{cohort}: {len(confirmed)}/{len(targeted)} targeted devices confirmed on {canary} "
        f"(need {required}), {inferences} inferences (need {rules.min_inferences}), "
        f"{feedback} labelled (need {rules.min_feedback})"
    )
    if policy.shadow is not None:
        data_reason += f", {everyone.compared} compared in shadow with {stable}"
    if gaps:
        data_reason += f"; short: {describe_gaps(gaps)}"
    data = GateResult(
        gate=Gate.DATA,
        cohort=cohort,
        verdict=Verdict.PASS if data_ok else Verdict.INCONCLUSIVE,
        measured=float(len(confirmed)),
        threshold=float(required),
        samples=inferences,
        reason=data_reason,
    )

    judged = _without_any_one_device(judge, everyone, canary_pairs, stable_arm)
    test, stable_targets = judged.accuracy, judged.stable_targets

    results = (
        _artifact_gate(targeted, devices, canary=canary, cohort=cohort),
        latency_gate(
            merge_histograms(t.latency for t in canary_arm if t.latency is not None),
            budget_ms=policy.cohorts[cohort].p95_latency_ms,
            min_samples=rules.min_inferences,
            cohort=cohort,
        ),
        *judged.gates,
    )
    return CohortCheck(
        hardware_class=cohort,
        targeted=len(targeted),
        confirmed=len(confirmed),
        required_confirmed=required,
        inferences=inferences,
        required_inferences=rules.min_inferences,
        feedback=feedback,
        required_feedback=rules.min_feedback,
        stable_arm=arm,
        shadow_compared=everyone.compared,
        gaps=gaps,
        data=data,
        gates=results,
        required=policy.cohorts[cohort].required,
        accuracy=test,
        stable_targets=stable_targets,
    )


Arm = list[tuple[str, VersionTelemetry]]
"""An arm's telemetry, device by device: ``(device id, what it reported of the version)``."""

SUSPECTS = 3
"""Devices of each arm whose removal is tried when a gate fails (:func:`_without_any_one_device`)."""


class _Judged(NamedTuple):
    """The sequential gates of one cohort from one choice of devices."""

    accuracy: AccuracyTest
    gates: tuple[GateResult, ...]
    """error rate, accuracy, MAE (when set), agreement and prediction shift (when set)"""
    stable_targets: ErrorSums
    inferences: int
    """the canary arm's inferences, labelled predictions and shadow comparisons, as counted"""
    labelled: int
    compared: int


@dataclass(frozen=True)
class _Judge:
    """The cohort's sequential gates from a canary arm and a stable arm (or the baseline)."""

    policy: RolloutPolicy
    cohort: str
    stable: str
    baseline: StableBaseline | None
    prior: dict[tuple[Gate, str], float]
    note: str
    min_inferences: int

    def __call__(self, canary: Arm, stable_arm: Arm | None) -> _Judged:
        gates, cohort, prior = self.policy.gates, self.cohort, self.prior
        canary_arm = [t for _, t in canary]
        inferences, errors = _counts(
            [(t.inferences, t.errors) for t in canary_arm], floor=self.min_inferences
        )
        labels, correct = _labels(canary_arm, gates.accuracy.min_samples)
        canary_targets = _targets(canary_arm, gates)
        if stable_arm is not None:
            on_stable = [t for _, t in stable_arm]
            stable_total, stable_correct = _labels(on_stable, gates.accuracy.min_samples)
            stable_targets = _targets(on_stable, gates)
        elif self.baseline is not None:
            stable_total, stable_correct = self.baseline.total, self.baseline.correct
            stable_targets = self.baseline.targets
        else:
            stable_total, stable_correct, stable_targets = 0, 0, ErrorSums()
        test = accuracy_test(
            canary_correct=correct,
            canary_total=labels,
            stable_correct=stable_correct,
            stable_total=stable_total,
            delta=gates.accuracy.delta,
            alpha=gates.accuracy.alpha,
            min_samples=gates.accuracy.min_samples,
            prior_log_e=prior.get((Gate.ACCURACY, cohort), 0.0),
        )
        if self.note:
            test = test.model_copy(update={"reason": f"{test.reason} ({self.note})"})
        mae = (
            mae_gate(
                canary=canary_targets,
                stable=stable_targets,
                max_increase=gates.mae.max_increase,
                alpha=gates.mae.alpha,
                min_samples=gates.mae.min_samples,
                cohort=cohort,
                mixture_sd=gates.mae.mixture_sd,
                prior_log_e=prior.get((Gate.MAE, cohort), 0.0),
                note=self.note,
            )
            if gates.mae is not None
            else None
        )
        error = error_rate_gate(
            errors=errors,
            inferences=inferences,
            max_rate=gates.max_error_rate,
            min_samples=self.min_inferences,
            cohort=cohort,
            alpha=gates.error_alpha,
            prior_log_e=prior.get((Gate.ERROR_RATE, cohort), 0.0),
        )
        shadow = _shadow(canary_arm, self.stable, gates)
        return _Judged(
            accuracy=test,
            gates=(
                error,
                accuracy_gate(test, cohort),
                *((mae,) if mae is not None else ()),
                *_shadow_gates(self.policy, cohort, shadow, prior),
            ),
            stable_targets=stable_targets,
            inferences=inferences,
            labelled=labels + canary_targets.n,
            compared=shadow.compared,
        )


def _suspects(arm: Arm, weight: Callable[[VersionTelemetry], float]) -> list[tuple[str, int]]:
    ranked = sorted(range(len(arm)), key=lambda i: -weight(arm[i][1]))
    return [(arm[i][0], i) for i in ranked[:SUSPECTS]]


def _without_any_one_device(
    judge: _Judge, judged: _Judged, canary: Arm, stable_arm: Arm | None
) -> _Judged:
    """A gate fails only on evidence that holds without any single device: when one FAILS, it is
    judged again without each of the devices most likely to carry it alone (those that report
    the most errors, wrong labels, disagreements and absolute error on the canary, and the most
    labels on stable), and the most lenient of those verdicts is kept, its reason naming the
    device. So one device, lying or broken, cannot roll a canary back on its own, however much
    it reports; a canary that is really worse fails without any one of its devices as well.
    An arm of one device is its own evidence (a cohort of one device has no other)."""
    failed = {g.gate for g in judged.gates if g.verdict is Verdict.FAIL}
    devices_with_data = len(canary) + len(stable_arm or [])
    if not failed or devices_with_data < 2:
        return judged
    tries: list[tuple[str, _Judged]] = []
    for device_id, i in _suspects(
        canary,
        lambda t: (
            t.errors
            + (t.feedback_total - t.feedback_correct)
            + sum(s.disagreed for s in t.shadow)
            + t.targets.total
        ),
    ):
        if len(canary) > 1:
            tries.append((device_id, judge(canary[:i] + canary[i + 1 :], stable_arm)))
    for device_id, i in _suspects(stable_arm or [], lambda t: t.labelled):
        assert stable_arm is not None
        tries.append((device_id, judge(canary, stable_arm[:i] + stable_arm[i + 1 :])))
    gates = list(judged.gates)
    accuracy = judged.accuracy
    for n, result in enumerate(gates):
        if result.gate not in failed:
            continue
        for device_id, other in tries:
            alternative = next(g for g in other.gates if g.gate is result.gate)
            if alternative.verdict is Verdict.FAIL:
                continue
            gates[n] = alternative.model_copy(
                update={
                    "reason": f"{alternative.reason} (without {device_id}: with it counted the "
                    "gate fails, on that one device's reports alone)"
                }
            )
            if result.gate is Gate.ACCURACY:
                accuracy = other.accuracy
            break
    return judged._replace(gates=tuple(gates), accuracy=accuracy)


def _artifact_gate(
    targeted: tuple[str, ...], devices: dict[str, DeviceObservation], *, canary: str, cohort: str
) -> GateResult:
    """FAIL as soon as a targeted device reports refusing the canary's artifact: a file that does
    not check out on a device is not waited out until the stage's deadline.

    A bad signature, an older release, a model that does not load or fails its smoke test count at
    the first report; a sha256 mismatch only when one device reports it
    :data:`SHA256_REFUSALS_TO_FAIL` times, since a download can also be damaged on its way (the
    device then fetches it again). As for every gate, one device does not decide it alone: with
    two or more devices targeted, two must refuse (a bad artifact is refused by every device that
    fetches it; a single refusal is shown, and waits for a second)."""
    counts: dict[tuple[str, str], int] = {}
    by_device: dict[str, Refusal] = {}
    for device_id in targeted:
        for r in devices[device_id].refused if device_id in devices else ():
            if r.version != canary:
                continue
            counts[(device_id, r.reason)] = counts.get((device_id, r.reason), 0) + 1
            if r.reason != "sha256" or counts[(device_id, r.reason)] >= SHA256_REFUSALS_TO_FAIL:
                by_device[device_id] = r
    needed = min(2, len(targeted))
    if not by_device:
        return GateResult(
            gate=Gate.ARTIFACT,
            cohort=cohort,
            verdict=Verdict.PASS,
            measured=0.0,
            threshold=float(needed),
            samples=len(targeted),
            reason=f"no device of {cohort} refused {canary}'s artifact",
        )
    named = "; ".join(
        f"{device_id}: {r.reason} ({r.detail})" if r.detail else f"{device_id}: {r.reason}"
        for device_id, r in list(by_device.items())[:NAMES_IN_REASON]
    )
    refused = f"{len(by_device)} device(s) of {cohort} refused {canary}'s artifact: {named}"
    return GateResult(
        gate=Gate.ARTIFACT,
        cohort=cohort,
        verdict=Verdict.FAIL if len(by_device) >= needed else Verdict.PASS,
        measured=float(len(by_device)),
        threshold=float(needed),
        samples=len(targeted),
        reason=refused if len(by_device) >= needed else f"{refused} (waiting for a second)",
    )


def device_weights(sizes: list[int], floor: float) -> list[float]:
    """How much of each device's counts an arm takes: all of it, unless the device reports more
    than :data:`DEVICE_WEIGHT_CAP` times the median of the arm's other devices (and more than
    ``floor``, the gate's own minimum); then its counts are scaled down to that, its rates kept.
    So one device, lying or broken, cannot outweigh the rest of its arm in a gate: not with a
    flood of made-up labels, nor by drowning the others' errors in inferences of its own."""
    weights = []
    for i, size in enumerate(sizes):
        others = sizes[:i] + sizes[i + 1 :]
        cap = max(DEVICE_WEIGHT_CAP * statistics.median(others), floor) if others else size
        weights.append(1.0 if size <= cap else cap / size)
    return weights


def _counts(parts: list[tuple[int, int]], floor: float) -> tuple[int, int]:
    """``(n, k)`` summed over devices with :func:`device_weights` on ``n`` (``k`` is part of ``n``:
    errors of inferences, correct of labelled, disagreed of compared)."""
    weights = device_weights([n for n, _ in parts], floor)
    n = sum(math.floor(p[0] * w) for p, w in zip(parts, weights, strict=True))
    k = sum(math.floor(p[1] * w) for p, w in zip(parts, weights, strict=True))
    return n, k


def _labels(arm: list[VersionTelemetry], floor: float) -> tuple[int, int]:
    """Labelled predictions and the right ones, each device's weight capped."""
    return _counts([(t.feedback_total, t.feedback_correct) for t in arm], floor)


def _targets(arm: list[VersionTelemetry], gates: Gates) -> ErrorSums:
    """A regressor arm's absolute errors, each device's weight capped."""
    floor = gates.mae.min_samples if gates.mae is not None else 0
    weights = device_weights([t.targets.n for t in arm], floor)
    total = ErrorSums()
    for t, w in zip(arm, weights, strict=True):
        part = t.targets
        if w < 1:
            n = math.floor(part.n * w)
            part = ErrorSums(n=n, total=part.total * n / part.n, squares=part.squares * n / part.n)
        total = total.plus(part)
    return total


def _shadow(arm: list[VersionTelemetry], stable: str, gates: Gates) -> ShadowSums:
    """The arm's comparisons against ``stable`` (those against another version are from an
    earlier rollout), each device's weight capped in compared and disagreed; the predicted-class
    counts are summed as reported."""
    parts = [s for t in arm if (s := t.shadow_against(stable)) is not None]
    floor = gates.agreement.min_samples if gates.agreement is not None else 0
    compared, disagreed = _counts([(s.compared, s.disagreed) for s in parts], floor)
    total = ShadowSums(against=stable)
    for part in parts:
        total = total.plus(part)
    return total.model_copy(update={"compared": compared, "disagreed": disagreed})


def _shadow_gates(
    policy: RolloutPolicy, cohort: str, shadow: ShadowSums, prior: dict[tuple[Gate, str], float]
) -> tuple[GateResult, ...]:
    """Agreement and prediction shift, each only when the policy sets its limits."""
    gates = policy.gates
    out = []
    if gates.agreement is not None:
        out.append(
            agreement_gate(
                compared=shadow.compared,
                disagreed=shadow.disagreed,
                max_disagreement=gates.agreement.max_disagreement,
                alpha=gates.agreement.alpha,
                min_samples=gates.agreement.min_samples,
                cohort=cohort,
                prior_log_e=prior.get((Gate.AGREEMENT, cohort), 0.0),
            )
        )
    if gates.prediction_shift is not None:
        out.append(
            prediction_shift_gate(
                canary_counts=shadow.canary_classes,
                stable_counts=shadow.stable_classes,
                max_distance=gates.prediction_shift.max_distance,
                alpha=policy.stage_alpha(gates.prediction_shift.alpha),
                min_samples=gates.prediction_shift.min_samples,
                cohort=cohort,
            )
        )
    return tuple(out)


def _gaps(
    targeted: tuple[str, ...],
    devices: dict[str, DeviceObservation],
    *,
    canary: str,
    stable: str,
    window_start: datetime,
    min_inferences: int | None,
    min_feedback: int | None,
) -> Iterable[DeviceGap]:
    """Why each targeted device is not (fully) counted.

    A device that is not confirmed is always named. When a cohort total is short (``min_*`` given),
    confirmed devices that gave less than an equal share of that minimum are named too.
    """
    inference_share = -(-min_inferences // len(targeted)) if min_inferences else 0
    feedback_share = -(-min_feedback // len(targeted)) if min_feedback else 0
    for device_id in targeted:
        device = devices.get(device_id)
        problem = (
            device_problem(device, canary=canary, stable=stable, since=window_start)
            if device is not None
            else "not enrolled any more"
        )
        if problem is None:
            assert device is not None
            telemetry = device.of_version(canary)
            inferences = telemetry.inferences if telemetry is not None else 0
            labelled = telemetry.labelled if telemetry is not None else 0
            if inferences < inference_share:
                problem = f"{inferences} inferences, share {inference_share}"
            elif labelled < feedback_share:
                problem = f"{labelled} labelled, share {feedback_share}"
        if problem is not None:
            yield DeviceGap(device_id=device_id, problem=problem)


def device_problem(
    device: DeviceObservation, *, canary: str, stable: str, since: datetime
) -> str | None:
    """Why ``device`` does not count as running ``canary`` since ``since``; None when it does.

    Also used for rollbacks, with the stable version as ``canary``.
    """
    if device.reports(canary, since):
        return None
    running = device.running_version
    if device.last_seen is None:
        problem = "never reported"
    elif device.last_seen < since:
        problem = f"silent since {device.last_seen.isoformat()}"
    elif running is None:
        problem = f"reports no version, not {canary}"
    else:
        label = " (stable)" if running == stable and stable != canary else ""
        problem = f"reports {running}{label}, not {canary}"
    if device.download_error:
        problem += f"; the controller could not serve its download: {device.download_error}"
    return problem


def describe_gaps(gaps: tuple[DeviceGap, ...], limit: int = NAMES_IN_REASON) -> str:
    """``dev-1 (never reported), dev-2 (reports 3 (stable), not 4)`` and ``and N more``."""
    named = ", ".join(f"{g.device_id} ({g.problem})" for g in gaps[:limit])
    return named + (f" and {len(gaps) - limit} more" if len(gaps) > limit else "")
