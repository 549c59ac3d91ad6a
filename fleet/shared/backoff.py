"""Exponential back-off: how long to wait before the next try, written once for every retry loop.

The supervisor's restart delay, the agent's download retries and its loop's wait after a failure,
and the controller's playbook retries all wait ``initial_s * 2 ** (attempt - 1)`` seconds, capped at
``max_s``, optionally shortened by a random fraction (jitter) so a fleet that failed together does
not retry together. Device-safe (standard library only), so every layer may import it.
"""

from __future__ import annotations

import math
import random


def backoff_delay(
    attempt: int,
    *,
    initial_s: float,
    max_s: float = math.inf,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``initial_s * 2 ** (attempt - 1)``, at most ``max_s`` (no cap by default). ``jitter`` in [0, 1]
    takes a random fraction of up to that much off the delay (drawn from ``rng``, else the
    ``random`` module), so jitter only ever shortens a wait.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if initial_s < 0 or max_s < 0:
        raise ValueError(f"delays cannot be negative: initial_s={initial_s}, max_s={max_s}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter is a fraction in [0, 1], got {jitter}")
    try:
        delay = min(max_s, initial_s * 2.0 ** (attempt - 1))
    except OverflowError:  # 2.0 ** 1024 and beyond: past any cap
        delay = max_s if initial_s > 0 else 0.0
    if jitter:
        draw = rng.random() if rng is not None else random.random()
        delay *= 1 - jitter * draw
    return delay
