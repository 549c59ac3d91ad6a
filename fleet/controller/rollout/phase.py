"""The phases of a rollout and the verdicts of its gates, each an enum with its behaviour on it.

A phase is the one word the controller persists to say where a rollout stands; everything that acts on a
rollout (the decision in ``decide``, the API, ``edgeloop rollout status``) branches on it, so what each
member means is written beside it and must stay true. Verdicts combine by an explicit order in which the
worst wins (Argo Rollouts' ``analysisStatusOrder``), and "no verdict at all" is never a pass: silence is
not success.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class RolloutPhase(StrEnum):
    """Where a rollout stands. Every transition, one per pass or command::

    PENDING      --start-->   PROGRESSING (stage 1)
    PENDING      --abort-->   ABORTED
    PROGRESSING  --stage k passes-->   PROGRESSING (stage k+1)
    PROGRESSING  --last stage passes-->   SUCCEEDED
    PROGRESSING  --pause, or deadline without data and on_inconclusive: pause-->   PAUSED
    PAUSED       --resume (the stage's window restarts)-->   PROGRESSING
    PROGRESSING, PAUSED  --a gate fails / abort / no data, on_inconclusive: fail-->   ROLLING_BACK
    ROLLING_BACK --every device reports stable, or rollback timeout-->   its ending:
                                                 ROLLED_BACK | ABORTED | FAILED
    ROLLED_BACK, ABORTED, FAILED  --retry (attempt + 1)-->   PROGRESSING (stage 1)
    """

    PENDING = "pending"
    """Created and not started; no device is targeted by it yet."""
    PROGRESSING = "progressing"
    """A stage's devices are targeted at the canary; its gates are checked on every pass."""
    PAUSED = "paused"
    """A stage on hold (operator, or ``on_inconclusive: pause`` at its deadline); a failing gate still rolls back."""
    ROLLING_BACK = "rolling_back"
    """Every device of the rollout is targeted at the stable version; waiting for them to report it."""
    SUCCEEDED = "succeeded"
    """The last stage passed every gate; every device of the rollout is targeted at the canary."""
    ROLLED_BACK = "rolled_back"
    """A gate failed; every device of the rollout is targeted at the stable version."""
    FAILED = "failed"
    """A stage lacked data at its deadline (``on_inconclusive: fail``); every device is targeted at stable."""
    ABORTED = "aborted"
    """An operator aborted; every device the rollout targeted is targeted at the stable version."""

    def is_terminal(self) -> bool:
        """No pass changes a terminal rollout; only ``retry`` (from a non-success) starts it again."""
        return self in _TERMINAL

    def is_active(self) -> bool:
        """Devices may be running or moving between versions because of it: a second rollout waits."""
        return self in _ACTIVE

    def can_retry(self) -> bool:
        """A rollout that ended without success may start a fresh attempt from stage 0."""
        return self in _RETRYABLE


_TERMINAL = frozenset(
    {RolloutPhase.SUCCEEDED, RolloutPhase.ROLLED_BACK, RolloutPhase.FAILED, RolloutPhase.ABORTED}
)
_ACTIVE = frozenset({RolloutPhase.PROGRESSING, RolloutPhase.PAUSED, RolloutPhase.ROLLING_BACK})
_RETRYABLE = frozenset({RolloutPhase.ROLLED_BACK, RolloutPhase.FAILED, RolloutPhase.ABORTED})


class Verdict(StrEnum):
    """What one gate (or the stage's data minimums) says about the canary, best first."""

    PASS = "pass"
    """Enough data, and the canary meets the limit."""
    INCONCLUSIVE = "inconclusive"
    """Not enough data to say; the stage waits, and at its deadline this counts as silence."""
    FAIL = "fail"
    """Enough data, and the canary breaks the limit: the rollout rolls back."""

    def is_worse(self, other: Verdict) -> bool:
        """True when ``self`` ranks after ``other`` in ``VERDICT_ORDER``."""
        return VERDICT_ORDER.index(self) > VERDICT_ORDER.index(other)


VERDICT_ORDER: tuple[Verdict, ...] = (Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.FAIL)
"""Best to worst; combining verdicts keeps the worst."""


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of ``verdicts``; with none at all the answer is INCONCLUSIVE, never PASS."""
    result: Verdict | None = None
    for verdict in verdicts:
        if result is None or verdict.is_worse(result):
            result = verdict
    return Verdict.INCONCLUSIVE if result is None else result
