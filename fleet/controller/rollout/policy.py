"""The rollout policy: cohorts, stages and gates, as data an operator writes in YAML.

A policy is the whole contract of a rollout: which hardware classes take part, the p95 latency budget
of each (the caller copies it from the class's hardware profile) and the gates each cohort must pass,
the stages with their share of each cohort, how long each stage bakes, by when it must have its data and
how much data that is, the limits the canary must meet, and whether devices compare the canary with
the stable model in shadow.

Gates and labels: a gate a cohort **requires** must reach a verdict for a stage to pass; any gate that
FAILS rolls back, required or not. A fleet without labels requires ``p95_latency``, ``error_rate`` and
``agreement`` (shadow comparisons need no label); accuracy is still judged where feedback arrives and
still rolls back a canary it catches, but its silence does not hold the rollout. A regressor's labels
are target values: its quality gate is ``mae`` (the canary's mean absolute error against stable's),
which a fleet sending targets may require in place of ``accuracy``. It is data, not code, so it can be reviewed, stored in the rollout's status (a
restart judges by the policy the rollout started with, not by whatever the file says now) and validated
before anything is targeted.

Unknown keys are an error, so a typo never silently disables a gate; a policy that contradicts itself
(fractions that do not grow, a deadline before the bake ends, a first stage that leaves no device on the
stable version to compare against) is an error naming the field, collected in one :class:`PolicyError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from fleet.controller.errors import PolicyError

HardwareClass = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")]
"""A hardware class name, the same spelling as a hardware profile's ``name``."""


GateName = Literal["p95_latency", "error_rate", "accuracy", "mae", "agreement", "prediction_shift"]
"""A gate a cohort may require (``fleet.controller.rollout.stats.Gate``, less the data minimums)."""

LABELLED_GATES: tuple[GateName, ...] = ("p95_latency", "error_rate", "accuracy")
"""What a cohort requires unless its policy says otherwise."""

SHADOW_GATES: tuple[GateName, ...] = ("agreement", "prediction_shift")
"""Gates judged from shadow comparisons on the devices."""


class CohortPolicy(BaseModel):
    """One hardware class taking part in the rollout, and the limits specific to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p95_latency_ms: float = Field(gt=0, description="p95 latency budget; the hardware profile's")
    required: tuple[GateName, ...] = Field(
        LABELLED_GATES,
        min_length=1,
        description="gates that must reach a verdict before a stage passes",
    )


class StagePolicy(BaseModel):
    """One step of the rollout. Minimums apply per cohort, to data from the stage's own window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(gt=0, le=1, description="share of each cohort targeted at the canary")
    bake_s: float = Field(gt=0, description="the stage passes no earlier than this after it starts")
    deadline_s: float = Field(
        gt=0, description="without its data by then the stage fails (or pauses)"
    )
    min_confirmed_devices: int = Field(
        1,
        ge=1,
        description="devices reporting telemetry FROM the canary (capped at those targeted)",
    )
    min_confirmed_fraction: float = Field(
        0.8, gt=0, le=1, description="and at least this share of the cohort's targeted devices"
    )
    min_inferences: int = Field(
        ge=1, description="canary inferences; latency and errors judged from here"
    )
    min_feedback: int = Field(0, ge=0, description="labelled feedback on canary predictions")

    @model_validator(mode="after")
    def _deadline_after_bake(self) -> StagePolicy:
        if self.deadline_s < self.bake_s:
            raise ValueError(
                f"deadline_s: {self.deadline_s:g} s is before the bake ends (bake_s {self.bake_s:g} s)"
            )
        return self

    def required_confirmed(self, targeted: int) -> int:
        """Devices that must confirm out of ``targeted``: never more than were targeted."""
        by_share = _ceil(self.min_confirmed_fraction * targeted)
        return min(targeted, max(self.min_confirmed_devices, by_share))

    def targeted_count(self, cohort_size: int) -> int:
        """How many of a cohort of ``cohort_size`` this stage targets: at least one of a non-empty one."""
        return min(cohort_size, _ceil(self.fraction * cohort_size))


class AccuracyGate(BaseModel):
    """Canary accuracy may not be worse than stable's by more than ``delta`` (one-sided test)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delta: float = Field(
        ge=0, lt=1, description="tolerated drop in accuracy (absolute, 0.02 = 2 points)"
    )
    alpha: float = Field(gt=0, lt=1, description="significance level of the one-sided test")
    min_samples: int = Field(ge=1, description="labelled feedback needed on EACH arm for a verdict")


class MaeGate(BaseModel):
    """Regressors: the canary's mean absolute error on field targets may not exceed stable's by more
    than ``max_increase`` (one-sided sequential test, ``fleet.controller.rollout.stats``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_increase: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="tolerated increase of the MAE, in the target's units",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="false-rollback rate of the whole rollout")
    min_samples: int = Field(200, ge=1, description="labelled predictions needed on EACH arm")
    mixture_sd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the effect size the test is most sensitive to (target units); default "
        "max_increase",
    )


class AgreementGate(BaseModel):
    """The canary may disagree with the stable model (run in shadow on the same inputs) on at most
    ``max_disagreement`` of the rows (sequential one-sided test)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_disagreement: float = Field(ge=0, lt=1, description="0.05 = 5% of rows")
    alpha: float = Field(0.05, gt=0, lt=1, description="false-rollback rate of the whole rollout")
    min_samples: int = Field(200, ge=1, description="paired comparisons needed for a verdict")


class PredictionShiftGate(BaseModel):
    """The canary's predicted-class distribution may not move away from the stable model's by more
    than ``max_distance`` (total variation): it fails when a lower bound of the distance that holds
    over every look with probability ``1 - alpha`` is above it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_distance: float = Field(gt=0, le=1, description="total variation distance, 0.1 = 10%")
    alpha: float = Field(0.05, gt=0, lt=1)
    min_samples: int = Field(200, ge=1, description="compared rows needed for a verdict")


class ShadowPolicy(BaseModel):
    """Devices running the canary also score ``rate`` of their inputs with the stable model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(0.1, gt=0, le=1, description="share of served rows scored in shadow")
    cpu_budget: float = Field(
        0.25, gt=0, le=1, description="shadow time at most this share of serving time"
    )
    tolerance: float = Field(
        0.0, ge=0, description="regressors: |canary - stable| above this is a disagreement"
    )


class Gates(BaseModel):
    """Limits checked per cohort on every pass; one failing gate rolls the rollout back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_rate: float = Field(ge=0, le=1, description="errors / inferences on the canary")
    error_alpha: float = Field(
        0.05, gt=0, lt=1, description="false-rollback rate of the error-rate test"
    )
    accuracy: AccuracyGate
    mae: MaeGate | None = Field(None, description="regressors judged on field targets")
    agreement: AgreementGate | None = None
    prediction_shift: PredictionShiftGate | None = None


class RolloutPolicy(BaseModel):
    """Cohorts, ordered stages and gates of a rollout; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohorts: dict[HardwareClass, CohortPolicy] = Field(min_length=1)
    stages: tuple[StagePolicy, ...] = Field(min_length=1)
    gates: Gates
    shadow: ShadowPolicy | None = Field(
        None, description="shadow comparisons on canary devices; off when absent"
    )
    on_inconclusive: Literal["fail", "pause"] = Field(
        "fail",
        description="a stage whose data or required gates have no verdict at its deadline "
        "fails (rolls back) or pauses",
    )
    rollback_timeout_s: float = Field(
        600,
        gt=0,
        description="a rollback ends after this even if some devices never reported stable",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: object) -> object:
        """``on_silence`` is the older name of ``on_inconclusive`` (rollouts stored before)."""
        if isinstance(data, dict) and "on_silence" in data and "on_inconclusive" not in data:
            data = {**data, "on_inconclusive": data["on_silence"]}
            del data["on_silence"]
        return data

    @model_validator(mode="after")
    def _required_gates_can_be_judged(self) -> RolloutPolicy:
        """A cohort may require only gates the policy gives limits to and its devices can report."""
        problems = []
        for name, cohort in self.cohorts.items():
            for gate in cohort.required:
                if gate == "mae" and self.gates.mae is None:
                    problems.append(
                        f"cohorts.{name}.required: gate mae has no limits: add gates.mae "
                        "(max_increase)"
                    )
                elif gate in SHADOW_GATES and getattr(self.gates, gate) is None:
                    problems.append(
                        f"cohorts.{name}.required: gate {gate} has no limits: add gates.{gate}"
                    )
                elif gate in SHADOW_GATES and self.shadow is None:
                    problems.append(
                        f"cohorts.{name}.required: the devices of {name} cannot report {gate} "
                        "without shadow comparisons: add shadow (rate, cpu_budget)"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _stages_grow_to_everyone(self) -> RolloutPolicy:
        """Each message starts with the field to fix."""
        problems = []
        for i in range(1, len(self.stages)):
            before, after = self.stages[i - 1].fraction, self.stages[i].fraction
            if after <= before:
                problems.append(
                    f"stages.{i}.fraction: {after:g} does not grow from "
                    f"stages.{i - 1}.fraction ({before:g})"
                )
        last = len(self.stages) - 1
        if self.stages[last].fraction != 1.0:
            problems.append(
                f"stages.{last}.fraction: the last stage must target the whole cohort (1.0), "
                f"not {self.stages[last].fraction:g}"
            )
        if self.stages[0].fraction >= 1.0:
            problems.append(
                "stages.0.fraction: the first stage must leave devices on the stable version "
                "(below 1.0), or the accuracy gate has nothing to compare against"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage(self, index: int) -> StagePolicy:
        """The stage at ``index`` (0-based)."""
        return self.stages[index]

    def stage_alpha(self, alpha: float) -> float:
        """The share of ``alpha`` one stage may spend on a bound that does not carry over between
        stage windows (Bonferroni over stages; the prediction-shift bound), so that the whole
        rollout stays at ``alpha``. The e-value gates carry their evidence instead."""
        return alpha / len(self.stages)

    @property
    def last_stage(self) -> int:
        """Index of the final stage, the one at fraction 1.0."""
        return len(self.stages) - 1


def _ceil(value: float) -> int:
    """``ceil`` that ignores float noise: 0.1 * 30 is 3, not 4."""
    return int(-(-round(value, 9) // 1))


DEFAULT_FRACTIONS = (0.05, 0.25, 0.5, 1.0)
"""The default stages: 5% → 25% → 50% → 100% of each cohort."""


SHADOW_JUDGED: tuple[GateName, ...] = ("p95_latency", "error_rate", "agreement")
"""What the default policy requires: judged without labels, on any cohort size."""


def default_policy(budgets: Mapping[str, float]) -> RolloutPolicy:
    """A sensible production policy for cohorts given as ``{hardware class: p95 budget ms}``.

    Fits fleets with or without labels and cohorts of any size: devices running the canary compare it
    with the stable model in shadow on 10% of their rows (at most 25% of their serving time), and each
    cohort requires p95 latency, error rate ≤ 1% and disagreement with stable ≤ 5% (200 comparisons).
    Accuracy (not worse than stable by more than 2 points) is judged wherever labels arrive and rolls
    back a canary it catches, but its silence holds nothing. Each stage bakes 10 minutes and must have
    its data within an hour: four stages take at least 40 minutes.
    """
    inferences = (200, 500, 1000, 2000)
    return load_policy(
        {
            "cohorts": {
                name: {"p95_latency_ms": budget, "required": list(SHADOW_JUDGED)}
                for name, budget in budgets.items()
            },
            "stages": [
                {
                    "fraction": fraction,
                    "bake_s": 600,
                    "deadline_s": 3600,
                    "min_confirmed_devices": 1,
                    "min_confirmed_fraction": 0.8,
                    "min_inferences": minimum,
                }
                for fraction, minimum in zip(DEFAULT_FRACTIONS, inferences, strict=True)
            ],
            "gates": {
                "max_error_rate": 0.01,
                "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 200},
                "agreement": {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 200},
            },
            "shadow": {"rate": 0.1, "cpu_budget": 0.25},
            "on_inconclusive": "fail",
            "rollback_timeout_s": 600,
        }
    )


def load_policy(raw: object) -> RolloutPolicy:
    """A policy from parsed YAML/JSON (a mapping); :class:`PolicyError` names every bad field."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"rollout policy must be a mapping, not {type(raw).__name__}")
    try:
        return RolloutPolicy.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise PolicyError(f"rollout policy is invalid: {problems}") from exc


def policy_from_yaml(text: str) -> RolloutPolicy:
    """A policy from YAML text (reading the file is the caller's business)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"rollout policy is not valid YAML: {exc}") from exc
    return load_policy(raw if raw is not None else {})


_LEADING_FIELD = re.compile(r"^[a-z0-9_.]+: ")


def _problem(error: object) -> str:
    """``field: message`` for one pydantic error; a cross-field message already names its field."""
    assert isinstance(error, dict)
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not where:
        return message
    if _LEADING_FIELD.match(message):
        return f"{where}.{message}"
    return f"{where}: {message}"
