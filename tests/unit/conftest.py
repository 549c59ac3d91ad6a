"""Fixtures shared by the unit tests of the fleet controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from test_controller_builders import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A controller app in-process (SQLite in ``tmp_path``) with its test clock; imported here, on
    use, so the agent's tests never load the controller."""
    from test_controller_builders import Clock, Fleet, make_fleet

    with make_fleet(tmp_path) as client:
        clock = client.app.state.clock  # type: ignore[attr-defined]
        assert isinstance(clock, Clock)
        yield Fleet(client=client, clock=clock, tmp=tmp_path)
