"""fleet.controller.anomaly: the median/MAD robust z-score, with properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet.controller.anomaly import MAD_TO_SIGMA, RobustZ

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(value=values, n=st.integers(8, 60))
def test_a_constant_series_never_alerts(value: float, n: int) -> None:
    detector = RobustZ(direction="both")
    assert not detector.is_anomaly([value] * n, value)


@given(
    base=st.floats(min_value=-100, max_value=100),
    spread=st.floats(min_value=0.5, max_value=10),
    k=st.floats(min_value=1.05, max_value=20),
    n=st.integers(8, 40),
)
def test_a_step_past_k_mad_alerts(base: float, spread: float, k: float, n: int) -> None:
    # alternating base +- spread: median = base (n even) or close, MAD = spread
    history = [base + spread * (1 if i % 2 else -1) for i in range(2 * n)]
    detector = RobustZ(threshold=3.5, direction="up", rel_scale=0.0)
    step = k * 3.5 * spread / MAD_TO_SIGMA
    assert detector.is_anomaly(history, base + step)
    assert not detector.is_anomaly(history, base + step / k * 0.9)


def test_direction_and_short_history() -> None:
    history = [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 10.0, 10.2]
    assert RobustZ(direction="down").is_anomaly(history, 0.0)
    assert not RobustZ(direction="up").is_anomaly(history, 0.0)
    assert not RobustZ(min_history=20).is_anomaly(history, 1e9)
    assert RobustZ().score(history[:3], 5.0) is None


def test_an_outlier_in_the_history_does_not_move_the_limit_much() -> None:
    history = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8, 10.1, 9.9]
    limit = RobustZ().limit(history)
    assert limit is not None
    polluted = RobustZ().limit([*history[:-1], 1000.0])
    assert polluted is not None and abs(polluted - limit) < 1.0
