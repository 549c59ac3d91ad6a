"""fleet.simulate.faults.parse_faults: ``--faults drift:0.1`` selection, and each bad entry refused."""

from __future__ import annotations

import pytest

from fleet.simulate.faults import FaultWindow, parse_faults
from fleet.simulate.fleet import main


def test_faults_parse_into_whole_run_windows() -> None:
    plan = parse_faults("drift:0.1, slow:0.05")
    assert plan.drift == FaultWindow(0.1) and plan.slow == FaultWindow(0.05)
    assert plan.offline is None and plan.drift_shift > 0
    assert parse_faults("") == parse_faults(" , ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drift", "expected FAULT:FRACTION"),
        ("melt:0.1", "expected FAULT:FRACTION"),
        ("drift:1.5", "fraction must be within"),
        ("drift:lots", "could not convert"),
    ],
    ids=["no_fraction", "unknown_fault", "fraction_above_one", "not_a_number"],
)
def test_bad_faults_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_faults(text)


def test_the_simulator_command_refuses_bad_faults(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--controller", "http://127.0.0.1:1", "--admin-token", "t", "--faults", "melt:1"])
    assert code == 2
    assert "expected FAULT:FRACTION" in capsys.readouterr().err
