"""fleet.shared.backoff: the one exponential back-off every retry loop uses."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.shared.backoff import backoff_delay

attempts = st.integers(min_value=1, max_value=2000)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_doubles_from_initial_up_to_the_cap() -> None:
    delays = [backoff_delay(n, initial_s=0.5, max_s=3.0) for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_no_cap_by_default() -> None:
    assert backoff_delay(11, initial_s=5.0) == 5.0 * 2**10
    assert backoff_delay(5000, initial_s=1.0) == math.inf


@given(attempt=attempts, initial_s=seconds, max_s=seconds)
def test_never_above_max(attempt: int, initial_s: float, max_s: float) -> None:
    assert 0 <= backoff_delay(attempt, initial_s=initial_s, max_s=max_s) <= max_s


@given(attempt=attempts, initial_s=seconds, max_s=seconds)
def test_non_decreasing_without_jitter(attempt: int, initial_s: float, max_s: float) -> None:
    now = backoff_delay(attempt, initial_s=initial_s, max_s=max_s)
    assert backoff_delay(attempt + 1, initial_s=initial_s, max_s=max_s) >= now


@given(
    attempt=attempts,
    initial_s=seconds,
    max_s=seconds,
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_jitter_only_shortens(
    attempt: int, initial_s: float, max_s: float, jitter: float, seed: int
) -> None:
    plain = backoff_delay(attempt, initial_s=initial_s, max_s=max_s)
    jittered = backoff_delay(
        attempt, initial_s=initial_s, max_s=max_s, jitter=jitter, rng=random.Random(seed)
    )
    assert (1 - jitter) * plain <= jittered <= plain


def test_jitter_draws_from_the_given_rng() -> None:
    a = backoff_delay(3, initial_s=1.0, max_s=60.0, jitter=0.2, rng=random.Random(7))
    b = backoff_delay(3, initial_s=1.0, max_s=60.0, jitter=0.2, rng=random.Random(7))
    assert a == b == 4.0 * (1 - 0.2 * random.Random(7).random())


@pytest.mark.parametrize(
    ("attempt", "kwargs"),
    [(0, {}), (1, {"jitter": 1.5}), (1, {"jitter": -0.1}), (1, {"initial_s": -1.0})],
)
def test_rejects_nonsense(attempt: int, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, **{"initial_s": 1.0, **kwargs})
