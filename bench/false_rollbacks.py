"""False rollbacks and power of the canary gates when they are looked at on every controller pass.

Simulates ``--rollouts`` rollouts of one cohort of ``--devices`` devices through stages targeting 5%,
25%, 50% and 100% of them, each baked ``--bake-s`` seconds and judged every ``--look-s`` seconds on the
data of its own window (120 looks a stage, 480 a rollout, by default). Each canary device sends
labelled feedback (Poisson, ``--labels-per-s`` per device), runs inferences (``--inferences-per-s``)
and scores ``--shadow-per-s`` of its inputs with the stable model too (paired shadow comparisons). The
stable arm of the accuracy gate is the cohort's devices left on stable; in the last stage, when none is
left, it is the baseline kept from the stage before, as ``evaluate`` does.

Three procedures judge the same simulated data:

* old: what the gates did before the sequential tests. Accuracy: the one-sided Wald z-test at
  ``alpha`` on every look. Error rate: the plain compare ``errors / inferences > max_rate``.
  Agreement (a new gate): a one-sided z-test at ``alpha`` on every look, as the accuracy gate did.
  Prediction shift: Pearson's chi-square test of homogeneity at ``alpha / stages`` (what the controller
  passed it) and the total variation distance above ``max_distance``, on every look.
* mSPRT alpha/stages: the former sequential gates, each stage window a test of its own at
  ``alpha / stages`` (Bonferroni over stages): the two-sided mixture ratio ``Λ ≥ stages/alpha`` with
  the estimate on H1's side. For prediction shift, the anytime lower confidence bound of the distance
  (per-class confidence sequences dual to the mSPRT, Bonferroni over the classes) above
  ``max_distance``, at ``alpha / stages``.
* e-values carried: the controller's gates (``fleet.controller.rollout.stats``) as the controller
  uses them: one-sided e-values (the mSPRT's normal mixture truncated to H1's side) at the FULL
  ``alpha``, each stage's multiplied by the final e-values of the earlier stages' windows, each carried
  as ``max(E, floor)/(1 + floor)`` (``--carry-floor``, 0.1 as the controller's ``evaluate`` carries
  it; 0 carries ``E`` itself). Prediction shift: the same bound at ``alpha / stages`` as in the column
  before; it does not carry over.

Shadow comparisons are paired: stable's class is drawn from a 5-class distribution, and the canary keeps
it or, with probability ``r``, draws afresh from a shifted distribution, so that its marginal is at a
known total variation (``0.45 r``) from stable's and the two arms' counts are positively correlated.

Scenarios: a canary exactly as good as stable (accuracy equal; also exactly δ worse, the edge of what
the accuracy gate tolerates; disagreement exactly at its bound; error rate exactly at its limit): every
rollback is a false one; a canary whose class distribution is at total variation exactly
``max_distance`` from stable's, too. Then a canary 5 points worse (accuracy 85% against 90%;
disagreement 5 points above its bound; total variation 15% against a bound of 10%): the share rolled
back, and how many samples (canary labels, or comparisons, in the stage's window) and seconds it took.

The looks are computed with numpy over all rollouts at once; every e-values-carried verdict is the
same arithmetic as the controller's, and a sample of looks (all the first rollbacks, random others, and
random rollouts' last looks, whose e-values are carried) is checked against the controller's gate
functions themselves, verdicts and log e-values: the bench stops on a mismatch.

    python bench/false_rollbacks.py [--rollouts 1000] [--seed 1] [--alpha 0.05] [--carry-floor 0.1]

Measured (defaults, seed 1; 500 devices, 0.02 labels/s, 1 inference/s and 0.1 comparisons/s per device;
δ = 0.02, error limit 1%, disagreement bound 5%, distance bound 10%; about 3 s), rolled back:

| gate             | canary           | old    | mSPRT alpha/4 | e-values carried, alpha |
| ---------------- | ---------------- | ------ | ------------- | ----------------------- |
| accuracy         | = stable (90%)   | 4.6%   | 0.0%          | 0.1%                    |
| accuracy         | δ worse (88%)    | 55.2%  | 0.9%          | 1.4%                    |
| agreement        | at the bound     | 75.7%  | 1.2%          | 4.3% [3.2%, 5.7%]       |
| error rate       | at the limit     | 100.0% | 1.3%          | 3.7% [2.7%, 5.1%]       |
| prediction shift | TV at the bound  | 100.0% | 0.0%          | 0.0% (alpha/4, as before) |

Carrying spends the alpha that the split over stages left unused: the rate gates' false rollbacks rise
towards alpha, most of them in the first stage's window, where the whole alpha is now at stake on a few
hundred comparisons (4,000 rollouts, seed 7: agreement 3.1%, error rate 3.6%, accuracy at δ 1.6%).

A canary 5 points worse: accuracy (85% against 90%) rolled back 100% old, 89.5% by the mSPRT at
alpha/4, 99.6% [99.0%, 99.8%] by the carried e-values (median 223, 1,398 and 610 canary labels; 575 s,
1,465 s and 945 s: most now in the second stage, with the first's evidence carried in); agreement (10%
against 5%) 100% by all three (median 207, 231 and 210 comparisons); prediction shift (TV 15% against
10%) 100% by all, but the sequential bound needs far more comparisons (median 218 against 10,418: the
third stage's window, 1,615 s, against the first's, 90 s). That is the price of a bound that holds at
every look; the old rule's speed is that of a rule that also rolled back every canary exactly at the
bound.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from _common import machine_info, write_report
from rich.console import Console
from rich.table import Table

from fleet.controller.rollout.phase import Verdict
from fleet.controller.rollout.stats import (
    accuracy_test,
    agreement_gate,
    error_rate_gate,
    prediction_shift_gate,
)

FRACTIONS = (0.05, 0.25, 0.5, 1.0)
STABLE_ACCURACY = 0.90
STABLE_CLASSES = np.array([0.40, 0.25, 0.15, 0.12, 0.08])
"""The stable model's predicted-class distribution (5 classes)."""
REDRAWN = np.array([0.10, 0.10, 0.20, 0.30, 0.30])
"""Where a canary's answer goes when it does not keep stable's: at total variation 0.45 from stable."""


@dataclass(frozen=True)
class Setup:
    """The fleet, its stages and the gates' limits."""

    rollouts: int
    devices: int
    bake_s: float
    look_s: float
    labels_per_s: float
    inferences_per_s: float
    shadow_per_s: float
    alpha: float
    delta: float
    accuracy_min: int
    max_error_rate: float
    min_inferences: int
    max_disagreement: float
    agreement_min: int
    max_distance: float
    shift_min: int
    accuracy_tau: float = 0.05
    error_tau: float = 0.01
    agreement_tau: float = 0.05
    shift_tau: float = 0.05
    carry_floor: float = 0.1
    """An ended window's e-value is carried as ``max(E, floor)/(1 + floor)``, as the controller
    carries it (``evaluate.EVIDENCE_FLOOR``); 0 carries ``E`` itself."""

    @property
    def looks(self) -> int:
        """Looks per stage."""
        return int(self.bake_s // self.look_s)

    @property
    def stage_alpha(self) -> float:
        """What each stage's test may spend where nothing carries over (Bonferroni over stages)."""
        return self.alpha / len(FRACTIONS)

    def canary_devices(self, stage: int) -> int:
        return math.ceil(FRACTIONS[stage] * self.devices)


Arrays = dict[str, np.ndarray]
"""Cumulative counts in one stage's window, rollouts x looks."""


def cumulative(
    rng: np.random.Generator, setup: Setup, rate_per_device_s: float, devices: int
) -> np.ndarray:
    """Arrivals up to each look: Poisson counts per look, summed."""
    mean = rate_per_device_s * devices * setup.look_s
    return rng.poisson(mean, size=(setup.rollouts, setup.looks)).cumsum(axis=1)


def successes(rng: np.random.Generator, total: np.ndarray, p: float) -> np.ndarray:
    """Binomial successes among the arrivals of each look, summed like ``total``."""
    per_look = np.diff(total, axis=1, prepend=0)
    return rng.binomial(per_look, p).cumsum(axis=1)


def accuracy_stages(rng: np.random.Generator, setup: Setup, canary: float) -> list[Arrays]:
    """Canary and stable labelled feedback per stage; the last stage's stable arm is the baseline."""
    stages: list[Arrays] = []
    for stage in range(len(FRACTIONS)):
        on_canary = setup.canary_devices(stage)
        cn = cumulative(rng, setup, setup.labels_per_s, on_canary)
        cx = successes(rng, cn, canary)
        if on_canary < setup.devices:
            sn = cumulative(rng, setup, setup.labels_per_s, setup.devices - on_canary)
            sx = successes(rng, sn, STABLE_ACCURACY)
        else:
            previous = stages[-1]
            sn = np.repeat(previous["stable_n"][:, -1:], setup.looks, axis=1)
            sx = np.repeat(previous["stable_x"][:, -1:], setup.looks, axis=1)
        stages.append({"n": cn, "x": cx, "stable_n": sn, "stable_x": sx})
    return stages


def rate_stages(rng: np.random.Generator, setup: Setup, per_s: float, rate: float) -> list[Arrays]:
    """Events (inferences, comparisons) and their failures (errors, disagreements) per stage."""
    stages: list[Arrays] = []
    for stage in range(len(FRACTIONS)):
        n = cumulative(rng, setup, per_s, setup.canary_devices(stage))
        stages.append({"n": n, "x": successes(rng, n, rate)})
    return stages


def shift_stages(rng: np.random.Generator, setup: Setup, tv: float) -> list[Arrays]:
    """Paired shadow comparisons per stage: both models' class counts on the same inputs.

    Stable's class is drawn from STABLE_CLASSES; the canary keeps it with probability ``r`` = tv/0.45
    and otherwise draws afresh from REDRAWN, so the canary's marginal is at total variation ``tv`` from
    stable's, and the two arms' counts are positively correlated, as on a device.
    """
    r = tv / float(0.5 * np.abs(REDRAWN - STABLE_CLASSES).sum())
    stages: list[Arrays] = []
    for stage in range(len(FRACTIONS)):
        n = cumulative(rng, setup, setup.shadow_per_s, setup.canary_devices(stage))
        stable = rng.multinomial(np.diff(n, axis=1, prepend=0), STABLE_CLASSES)
        changed = rng.binomial(stable, r)
        canary = stable - changed + rng.multinomial(changed.sum(axis=2), REDRAWN)
        stages.append({"n": n, "canary": canary.cumsum(axis=1), "stable": stable.cumsum(axis=1)})
    return stages


def log_ratio(estimate: np.ndarray, null: float, variance: np.ndarray, tau: float) -> np.ndarray:
    """The two-sided Gaussian mSPRT's log Λ, elementwise (``sequential.log_mixture_ratio``)."""
    spread = variance + tau * tau
    return 0.5 * np.log(variance / spread) + tau * tau * (estimate - null) ** 2 / (
        2 * variance * spread
    )


_erfc = np.frompyfunc(math.erfc, 1, 1)


def erfc(values: np.ndarray) -> np.ndarray:
    """``math.erfc`` elementwise (numpy has none; this is the function ``sequential`` uses)."""
    return np.asarray(_erfc(values), dtype=float)


def log_scaled_normal_cdf(x: np.ndarray) -> np.ndarray:
    """``x²/2 + log Φ(x)`` elementwise, NaN where ``x`` is, as ``sequential`` computes it."""
    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, np.nan)
    with np.errstate(invalid="ignore"):
        above, middle, below = x > 0, (x <= 0) & (x >= -35), x < -35
    xa, xm, xb = x[above], x[middle], x[below]
    out[above] = 0.5 * xa * xa + np.log1p(-0.5 * erfc(xa / math.sqrt(2)))
    out[middle] = 0.5 * xm * xm + np.log(0.5 * erfc(-xm / math.sqrt(2)))
    r = 1 / (xb * xb)
    series = 1 - r * (1 - 3 * r * (1 - 5 * r * (1 - 7 * r)))
    out[below] = -np.log(-xb) - 0.5 * math.log(2 * math.pi) + np.log(series)
    return out


def log_e(
    estimate: np.ndarray, null: float, variance: np.ndarray, tau: float, side: int
) -> np.ndarray:
    """The one-sided (half-normal) mixture's log E, elementwise (``sequential.log_e_value``);
    ``side`` is -1 when H1 is below ``null``, +1 when above."""
    spread = variance + tau * tau
    x = side * (estimate - null) * tau / np.sqrt(variance * spread)
    return 0.5 * np.log(variance / spread) + math.log(2) + log_scaled_normal_cdf(x)


def haldane_variance(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """p(1 - p)/n, at p = (x + 1/2)/(n + 1) for an arm all right or all wrong (as the gate does)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where((x > 0) & (x < n), x / np.maximum(n, 1), (x + 0.5) / (n + 1))
        return p * (1 - p) / np.maximum(n, 1)


def accuracy_old(setup: Setup, s: Arrays) -> np.ndarray:
    """The former gate: Wald z = (θ̂ + δ)/SE, FAIL when Φ(z) < alpha, at every look."""
    enough = (s["n"] >= setup.accuracy_min) & (s["stable_n"] >= setup.accuracy_min)
    variance = haldane_variance(s["x"], s["n"]) + haldane_variance(s["stable_x"], s["stable_n"])
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = s["x"] / s["n"] - s["stable_x"] / s["stable_n"]
        z = (diff + setup.delta) / np.sqrt(variance)
    return enough & (z < NormalDist().inv_cdf(setup.alpha))


def accuracy_msprt(setup: Setup, s: Arrays) -> np.ndarray:
    """The former sequential gate: two-sided Λ ≥ stages/alpha, estimate on H1's side, per stage."""
    enough = (s["n"] >= setup.accuracy_min) & (s["stable_n"] >= setup.accuracy_min)
    variance = haldane_variance(s["x"], s["n"]) + haldane_variance(s["stable_x"], s["stable_n"])
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = s["x"] / s["n"] - s["stable_x"] / s["stable_n"]
        evidence = log_ratio(diff, -setup.delta, variance, setup.accuracy_tau)
    return enough & (diff < -setup.delta) & (evidence >= -math.log(setup.stage_alpha))


def accuracy_evidence(setup: Setup, s: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """The accuracy gate's log E in its window (NaN where an arm has no label), and where it may
    give a verdict."""
    enough = (s["n"] >= setup.accuracy_min) & (s["stable_n"] >= setup.accuracy_min)
    variance = haldane_variance(s["x"], s["n"]) + haldane_variance(s["stable_x"], s["stable_n"])
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = s["x"] / s["n"] - s["stable_x"] / s["stable_n"]
        evidence = log_e(diff, -setup.delta, variance, setup.accuracy_tau, -1)
    return evidence, enough


def error_old(setup: Setup, s: Arrays) -> np.ndarray:
    """The former gate: the plain compare errors / inferences > max_rate."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (s["n"] >= setup.min_inferences) & (s["x"] / s["n"] > setup.max_error_rate)


def one_sample_msprt(s: Arrays, bound: float, minimum: int, tau: float, alpha: float) -> np.ndarray:
    """The former sequential gate of rate ≤ bound (null boundary's variance): two-sided Λ ≥ 1/alpha
    and the rate above the bound."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = s["x"] / s["n"]
        evidence = log_ratio(rate, bound, bound * (1 - bound) / s["n"], tau)
    return (s["n"] >= minimum) & (rate > bound) & (evidence >= -math.log(alpha))


def one_sample_evidence(
    s: Arrays, bound: float, minimum: int, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """log E of rate ≤ bound against rate > bound (NaN without data), and where it may give a verdict."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = s["x"] / s["n"]
        evidence = log_e(rate, bound, bound * (1 - bound) / s["n"], tau, 1)
    return evidence, s["n"] >= minimum


def error_msprt(setup: Setup, s: Arrays) -> np.ndarray:
    return one_sample_msprt(
        s, setup.max_error_rate, setup.min_inferences, setup.error_tau, setup.stage_alpha
    )


def error_evidence(setup: Setup, s: Arrays) -> tuple[np.ndarray, np.ndarray]:
    return one_sample_evidence(s, setup.max_error_rate, setup.min_inferences, setup.error_tau)


def agreement_old(setup: Setup, s: Arrays) -> np.ndarray:
    """A z-test at alpha on every look, as the accuracy gate was."""
    b = setup.max_disagreement
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (s["x"] / s["n"] - b) / np.sqrt(b * (1 - b) / s["n"])
    return (s["n"] >= setup.agreement_min) & (z > NormalDist().inv_cdf(1 - setup.alpha))


def agreement_msprt(setup: Setup, s: Arrays) -> np.ndarray:
    return one_sample_msprt(
        s, setup.max_disagreement, setup.agreement_min, setup.agreement_tau, setup.stage_alpha
    )


def agreement_evidence(setup: Setup, s: Arrays) -> tuple[np.ndarray, np.ndarray]:
    return one_sample_evidence(s, setup.max_disagreement, setup.agreement_min, setup.agreement_tau)


def chi2_sf(statistic: float, dof: int) -> float:
    """``P(χ²(dof) ≥ statistic)`` for a positive integer ``dof``, in closed form (Poisson sums, erfc)."""
    half = statistic / 2
    if dof % 2 == 0:
        term = total = math.exp(-half)
        for j in range(1, dof // 2):
            term *= half / j
            total += term
        return total
    total = math.erfc(math.sqrt(half))
    term = math.exp(-half) * math.sqrt(half) / math.gamma(1.5)
    for j in range(1, (dof - 1) // 2 + 1):
        total += term
        term *= half / (j + 0.5)
    return total


def chi2_critical(alpha: float, dof: int) -> float:
    """The statistic at which ``chi2_sf`` falls to ``alpha`` (bisection): p < alpha beyond it."""
    low, high = 0.0, 1.0
    while chi2_sf(high, dof) >= alpha:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if chi2_sf(middle, dof) >= alpha else (low, middle)
    return high


def shift_old(setup: Setup, s: Arrays) -> np.ndarray:
    """The former gate at every look: Pearson's χ² p < alpha / stages (what the controller passed it)
    and the total variation distance above ``max_distance``."""
    n = s["n"][..., None]
    column = s["canary"] + s["stable"]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = n * column / (2 * n)  # both arms have n rows: canary's and stable's alike
        terms = 2 * (s["canary"] - expected) ** 2 / expected
        statistic = np.where(column > 0, terms, 0.0).sum(axis=2)
        distance = 0.5 * np.abs(s["canary"] - s["stable"]).sum(axis=2) / s["n"]
    dof = (column > 0).sum(axis=2) - 1
    critical = np.array(
        [math.inf] + [chi2_critical(setup.stage_alpha, k) for k in range(1, len(STABLE_CLASSES))]
    )
    significant = statistic > critical[np.maximum(dof, 0)]
    return (s["n"] >= setup.shift_min) & significant & (distance > setup.max_distance)


def shift_new(setup: Setup, s: Arrays) -> np.ndarray:
    """The sequential gate: the anytime lower bound of the distance above ``max_distance``.

    Per class, the confidence-sequence radius at alpha / stages / K (``sequential.confidence_radius``);
    TV_low is the larger of the sums of the differences' positive and negative parts beyond it.
    """
    n = s["n"][..., None]
    canary, stable = s["canary"], s["stable"]
    seen = (canary + stable) > 0
    level = setup.stage_alpha / np.maximum(seen.sum(axis=2, keepdims=True), 1)
    tau2 = setup.shift_tau**2
    variance = haldane_variance(canary, n) + haldane_variance(stable, n)
    spread = variance + tau2
    radius = np.sqrt(
        2 * variance * spread / tau2 * (-np.log(level) + 0.5 * np.log(spread / variance))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = (canary - stable) / n
    above = np.where(seen, np.maximum(0.0, difference - radius), 0.0).sum(axis=2)
    below = np.where(seen, np.maximum(0.0, -difference - radius), 0.0).sum(axis=2)
    enough = (s["n"] >= setup.shift_min) & (s["n"] > 0)
    return enough & (np.maximum(above, below) > setup.max_distance)


Procedure = Callable[[Setup, Arrays], np.ndarray]
"""One stage window's verdicts: FAIL at each look, rollouts x looks."""
Evidence = Callable[[Setup, Arrays], tuple[np.ndarray, np.ndarray]]
"""One stage window's log e-values (NaN where there is none) and where the gate may give a verdict."""
Staged = Callable[[Setup, list[Arrays]], list[np.ndarray]]
"""Every stage's verdicts at once, for procedures that carry something from stage to stage."""
Controller = Callable[[Setup, Arrays, int, int], tuple[bool, float | None]]
"""The controller's own gate on one rollout (row) at one look (column): does it FAIL, and its log_e."""


def per_stage(procedure: Procedure) -> Staged:
    """A procedure that judges each stage's window on its own."""
    return lambda setup, stages: [procedure(setup, s) for s in stages]


def carried(evidence: Evidence) -> Staged:
    """E-values at the full alpha, each stage's multiplied by the earlier stages' final ones.

    A window's final log E is carried as ``log(max(E, floor)/(1 + floor))`` (the controller's
    ``carry_evidence``); a window without one carries nothing. Each stage's ``log_e`` and ``prior`` are
    kept in its arrays, for the check against the controller.
    """

    def staged(setup: Setup, stages: list[Arrays]) -> list[np.ndarray]:
        prior = np.zeros(setup.rollouts)
        fails = []
        for s in stages:
            values, enough = evidence(setup, s)
            s["log_e"] = values
            s["prior"] = np.repeat(prior[:, None], values.shape[1], axis=1)
            with np.errstate(invalid="ignore"):
                fails.append(enough & (prior[:, None] + values >= -math.log(setup.alpha)))
            final = values[:, -1]
            if setup.carry_floor > 0:
                floored = np.maximum(np.exp(np.minimum(final, 700.0)), setup.carry_floor)
                step = np.log(floored) - math.log1p(setup.carry_floor)
            else:
                step = final
            prior = prior + np.where(np.isnan(final), 0.0, step)
        return fails

    return staged


def accuracy_controller(setup: Setup, s: Arrays, row: int, col: int) -> tuple[bool, float | None]:
    test = accuracy_test(
        canary_correct=int(s["x"][row, col]),
        canary_total=int(s["n"][row, col]),
        stable_correct=int(s["stable_x"][row, col]),
        stable_total=int(s["stable_n"][row, col]),
        delta=setup.delta,
        alpha=setup.alpha,
        min_samples=setup.accuracy_min,
        mixture_sd=setup.accuracy_tau,
        prior_log_e=float(s["prior"][row, col]),
    )
    return test.verdict is Verdict.FAIL, test.log_e


def error_controller(setup: Setup, s: Arrays, row: int, col: int) -> tuple[bool, float | None]:
    gate = error_rate_gate(
        errors=int(s["x"][row, col]),
        inferences=int(s["n"][row, col]),
        max_rate=setup.max_error_rate,
        min_samples=setup.min_inferences,
        cohort="bench",
        alpha=setup.alpha,
        mixture_sd=setup.error_tau,
        prior_log_e=float(s["prior"][row, col]),
    )
    return gate.verdict is Verdict.FAIL, gate.log_e


def agreement_controller(setup: Setup, s: Arrays, row: int, col: int) -> tuple[bool, float | None]:
    gate = agreement_gate(
        compared=int(s["n"][row, col]),
        disagreed=int(s["x"][row, col]),
        max_disagreement=setup.max_disagreement,
        alpha=setup.alpha,
        min_samples=setup.agreement_min,
        cohort="bench",
        mixture_sd=setup.agreement_tau,
        prior_log_e=float(s["prior"][row, col]),
    )
    return gate.verdict is Verdict.FAIL, gate.log_e


def shift_controller(setup: Setup, s: Arrays, row: int, col: int) -> tuple[bool, float | None]:
    gate = prediction_shift_gate(
        canary_counts={str(k): int(c) for k, c in enumerate(s["canary"][row, col])},
        stable_counts={str(k): int(c) for k, c in enumerate(s["stable"][row, col])},
        max_distance=setup.max_distance,
        alpha=setup.stage_alpha,
        min_samples=setup.shift_min,
        cohort="bench",
        mixture_sd=setup.shift_tau,
    )
    return gate.verdict is Verdict.FAIL, gate.log_e


@dataclass(frozen=True)
class Outcome:
    """Per rollout: rolled back or not, and at which look with how many canary samples."""

    rolled_back: np.ndarray
    look: np.ndarray
    samples: np.ndarray


def outcome(fails: list[np.ndarray], samples: list[np.ndarray]) -> Outcome:
    """The first failing look over the stages, in order."""
    failed = np.concatenate(fails, axis=1)
    counts = np.concatenate(samples, axis=1)
    rolled_back = np.asarray(failed.any(axis=1))
    look = np.where(rolled_back, failed.argmax(axis=1), -1)
    at = counts[np.arange(len(look)), np.maximum(look, 0)]
    return Outcome(rolled_back=rolled_back, look=look, samples=np.where(rolled_back, at, -1))


def check_against_controller(
    rng: np.random.Generator,
    setup: Setup,
    stages: list[Arrays],
    fails: list[np.ndarray],
    controller: Controller,
    sample: int,
) -> int:
    """Compare the vectorised verdicts (and log e-values, where carried) with the controller's gates;
    raise on any difference. Checked: the first failing looks, random looks, and random rollouts'
    last looks (the values carried into the next stage)."""
    checked = 0
    for stage, (s, failed) in enumerate(zip(stages, fails, strict=True)):
        firsts = [(int(r), int(failed[r].argmax())) for r in np.flatnonzero(failed.any(axis=1))]
        rows = rng.integers(0, setup.rollouts, size=sample).tolist()
        cols = rng.integers(0, setup.looks, size=sample).tolist()
        lasts = rng.integers(0, setup.rollouts, size=sample).tolist()
        looks = [
            *firsts[:sample],
            *zip(rows, cols, strict=True),
            *((row, setup.looks - 1) for row in lasts),
        ]
        for row, col in looks:
            verdict, log_e_there = controller(setup, s, row, col)
            expected = s["log_e"][row, col] if "log_e" in s else None
            same_log_e = expected is None or (
                math.isnan(expected)
                if log_e_there is None
                else math.isclose(log_e_there, expected, rel_tol=1e-9, abs_tol=1e-9)
            )
            if verdict != bool(failed[row, col]) or not same_log_e:
                raise AssertionError(
                    f"stage {stage + 1}, rollout {row}, look {col}: the controller's gate "
                    f"({verdict}, log_e {log_e_there}) and the bench disagree on "
                    f"{ ({k: v[row, col].tolist() for k, v in s.items()}) }"
                )
            checked += 1
    return checked


@dataclass(frozen=True)
class Scenario:
    gate: str
    canary: str
    stages: Callable[[np.random.Generator, Setup], list[Arrays]]
    old: Procedure
    """What the gate did before the sequential tests."""
    msprt: Procedure
    """The former sequential gate: two-sided mSPRT with a side condition at alpha / stages."""
    new: Staged
    """The controller's gate: one-sided e-values at alpha, carried across stages."""
    controller: Controller
    """The controller's gate itself, to check ``new`` against."""


def scenarios(setup: Setup) -> tuple[list[Scenario], list[Scenario]]:
    """(no worse than allowed: every rollback is false, 5 points worse: every rollback is right)."""
    worse_by_delta = STABLE_ACCURACY - setup.delta
    bound = setup.max_disagreement
    distance = setup.max_distance
    return (
        [
            Scenario(
                "accuracy",
                f"= stable ({STABLE_ACCURACY:.0%})",
                lambda rng, s: accuracy_stages(rng, s, STABLE_ACCURACY),
                accuracy_old,
                accuracy_msprt,
                carried(accuracy_evidence),
                accuracy_controller,
            ),
            Scenario(
                "accuracy",
                f"δ worse ({worse_by_delta:.0%})",
                lambda rng, s: accuracy_stages(rng, s, worse_by_delta),
                accuracy_old,
                accuracy_msprt,
                carried(accuracy_evidence),
                accuracy_controller,
            ),
            Scenario(
                "agreement",
                f"at the bound ({bound:.0%})",
                lambda rng, s: rate_stages(rng, s, s.shadow_per_s, bound),
                agreement_old,
                agreement_msprt,
                carried(agreement_evidence),
                agreement_controller,
            ),
            Scenario(
                "error rate",
                f"at the limit ({setup.max_error_rate:.0%})",
                lambda rng, s: rate_stages(rng, s, s.inferences_per_s, s.max_error_rate),
                error_old,
                error_msprt,
                carried(error_evidence),
                error_controller,
            ),
            Scenario(
                "prediction shift",
                f"TV at the bound ({distance:.0%})",
                lambda rng, s: shift_stages(rng, s, s.max_distance),
                shift_old,
                shift_new,
                per_stage(shift_new),
                shift_controller,
            ),
        ],
        [
            Scenario(
                "accuracy",
                f"{STABLE_ACCURACY - 0.05:.0%} vs {STABLE_ACCURACY:.0%}",
                lambda rng, s: accuracy_stages(rng, s, STABLE_ACCURACY - 0.05),
                accuracy_old,
                accuracy_msprt,
                carried(accuracy_evidence),
                accuracy_controller,
            ),
            Scenario(
                "agreement",
                f"{bound + 0.05:.0%} vs {bound:.0%}",
                lambda rng, s: rate_stages(rng, s, s.shadow_per_s, bound + 0.05),
                agreement_old,
                agreement_msprt,
                carried(agreement_evidence),
                agreement_controller,
            ),
            Scenario(
                "prediction shift",
                f"TV {distance + 0.05:.0%} vs {distance:.0%}",
                lambda rng, s: shift_stages(rng, s, s.max_distance + 0.05),
                shift_old,
                shift_new,
                per_stage(shift_new),
                shift_controller,
            ),
        ],
    )


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(result: Outcome, setup: Setup) -> dict[str, Any]:
    n = len(result.rolled_back)
    k = int(result.rolled_back.sum())
    low, high = wilson(k, n)
    looks = result.look[result.rolled_back]
    samples = result.samples[result.rolled_back]
    return {
        "rolled_back": k,
        "rollouts": n,
        "rate": k / n,
        "wilson95": [low, high],
        "median_samples": float(np.median(samples)) if k else None,
        "median_seconds": float(np.median((looks + 1) * setup.look_s)) if k else None,
        "by_stage": [int(((looks // setup.looks) == s).sum()) for s in range(len(FRACTIONS))],
    }


PROCEDURES = ("old", "msprt", "new")
LABELS = {"old": "old", "msprt": "mSPRT alpha/stages", "new": "e-values carried"}


def run_scenario(scenario: Scenario, setup: Setup, seed: int, check_sample: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    stages = scenario.stages(rng, setup)
    samples = [s["n"] for s in stages]
    old_fails = [scenario.old(setup, s) for s in stages]
    msprt_fails = [scenario.msprt(setup, s) for s in stages]
    new_fails = scenario.new(setup, stages)
    checked = check_against_controller(
        rng, setup, stages, new_fails, scenario.controller, check_sample
    )
    return {
        "gate": scenario.gate,
        "canary": scenario.canary,
        "old": summarise(outcome(old_fails, samples), setup),
        "msprt": summarise(outcome(msprt_fails, samples), setup),
        "new": summarise(outcome(new_fails, samples), setup),
        "checked_against_controller": checked,
    }


def rate_cell(summary: dict[str, Any]) -> str:
    low, high = summary["wilson95"]
    return f"{summary['rate']:.1%} [{low:.1%}, {high:.1%}]"


def median_cell(summary: dict[str, Any], key: str, unit: str = "") -> str:
    value = summary[key]
    return "—" if value is None else f"{value:,.0f}{unit}"


def false_table(rows: list[dict[str, Any]], setup: Setup) -> Table:
    table = Table(
        title=f"false rollbacks: {setup.rollouts} rollouts, {len(FRACTIONS)} stages x "
        f"{setup.bake_s:g} s, a look every {setup.look_s:g} s, alpha={setup.alpha:g}"
    )
    table.add_column("gate")
    table.add_column("canary")
    table.add_column("old [95% CI]", justify="right")
    table.add_column(f"mSPRT alpha/{len(FRACTIONS)} [95% CI]", justify="right")
    table.add_column(f"e-values carried, alpha={setup.alpha:g} [95% CI]", justify="right")
    for row in rows:
        table.add_row(row["gate"], row["canary"], *(rate_cell(row[p]) for p in PROCEDURES))
    return table


def power_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="power: a canary 5 points worse")
    table.add_column("gate")
    table.add_column("canary")
    table.add_column("test")
    table.add_column("rolled back [95% CI]", justify="right")
    table.add_column("median n", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("by stage", justify="right")
    for row in rows:
        for name in PROCEDURES:
            summary = row[name]
            table.add_row(
                row["gate"] if name == "old" else "",
                row["canary"] if name == "old" else "",
                LABELS[name],
                rate_cell(summary),
                median_cell(summary, "median_samples"),
                median_cell(summary, "median_seconds"),
                "/".join(str(n) for n in summary["by_stage"]),
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--devices", type=int, default=500, help="devices in the cohort")
    parser.add_argument("--bake-s", type=float, default=600, help="seconds each stage bakes")
    parser.add_argument("--look-s", type=float, default=5, help="seconds between controller passes")
    parser.add_argument("--labels-per-s", type=float, default=0.02, help="per device")
    parser.add_argument("--inferences-per-s", type=float, default=1.0, help="per device")
    parser.add_argument("--shadow-per-s", type=float, default=0.1, help="per device")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.02, help="tolerated accuracy drop")
    parser.add_argument("--accuracy-min", type=int, default=200, help="labels on each arm")
    parser.add_argument("--max-error-rate", type=float, default=0.01)
    parser.add_argument("--min-inferences", type=int, default=1000)
    parser.add_argument("--max-disagreement", type=float, default=0.05)
    parser.add_argument("--agreement-min", type=int, default=200, help="comparisons")
    parser.add_argument("--max-distance", type=float, default=0.1, help="total variation")
    parser.add_argument("--shift-min", type=int, default=200, help="comparisons")
    parser.add_argument(
        "--carry-floor",
        type=float,
        default=0.1,
        help="an ended window's e-value is carried as max(E, floor)/(1 + floor); 0: E itself",
    )
    parser.add_argument(
        "--check", type=int, default=200, help="looks per stage checked against the controller"
    )
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench/false_rollbacks.json"))
    args = parser.parse_args()
    setup = Setup(
        rollouts=args.rollouts,
        devices=args.devices,
        bake_s=args.bake_s,
        look_s=args.look_s,
        labels_per_s=args.labels_per_s,
        inferences_per_s=args.inferences_per_s,
        shadow_per_s=args.shadow_per_s,
        alpha=args.alpha,
        delta=args.delta,
        accuracy_min=args.accuracy_min,
        max_error_rate=args.max_error_rate,
        min_inferences=args.min_inferences,
        max_disagreement=args.max_disagreement,
        agreement_min=args.agreement_min,
        max_distance=args.max_distance,
        shift_min=args.shift_min,
        carry_floor=args.carry_floor,
    )
    console = Console()
    started = time.perf_counter()
    null, worse = scenarios(setup)
    false_rows = [run_scenario(s, setup, args.seed + i, args.check) for i, s in enumerate(null)]
    power_rows = [
        run_scenario(s, setup, args.seed + 100 + i, args.check) for i, s in enumerate(worse)
    ]
    elapsed = time.perf_counter() - started
    console.print(false_table(false_rows, setup))
    console.print(power_table(power_rows))
    per_stage = ", ".join(
        f"{setup.canary_devices(k) * setup.labels_per_s * setup.bake_s:,.0f}/"
        f"{setup.canary_devices(k) * setup.shadow_per_s * setup.bake_s:,.0f}"
        for k in range(len(FRACTIONS))
    )
    checked = sum(r["checked_against_controller"] for r in false_rows + power_rows)
    console.print(
        "old: Wald z-test at alpha on every look (error rate: rate > limit; prediction shift: "
        "χ² p < alpha/stages and distance > bound). mSPRT alpha/stages: the former sequential gates, "
        "two-sided Λ ≥ stages/alpha with the estimate on H1's side, each stage on its own. "
        "e-values carried: the controller's gates, one-sided (half-normal) e-values at the full "
        "alpha, each stage's multiplied by the earlier stages' final ones (carried as "
        f"max(E, {setup.carry_floor:g})/{1 + setup.carry_floor:g}); prediction shift has no "
        "e-value and keeps its anytime bound at alpha/stages in both sequential columns. "
        "median n: canary labels (accuracy) or comparisons (agreement, prediction shift) in the "
        "stage's window at rollback; median s: from the rollout's start. Expected canary "
        f"labels/comparisons per stage: {per_stage}. {checked:,} looks checked against the "
        f"controller's gates (verdicts and log e-values), all agree; {elapsed:.1f} s.",
        highlight=False,
    )
    write_report(
        console,
        args.out,
        {
            "bench": "false_rollbacks",
            "machine": machine_info(("numpy",)),
            "setup": {**vars(setup), "fractions": FRACTIONS, "looks_per_stage": setup.looks},
            "seed": args.seed,
            "false_rollbacks": false_rows,
            "power": power_rows,
            "seconds": elapsed,
        },
    )


if __name__ == "__main__":
    main()
