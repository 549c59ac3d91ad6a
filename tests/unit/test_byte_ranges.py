"""The controller's reading of a download's ``Range`` header (fleet.controller.api.ranges): what a
resuming agent asks for is served, what selects nothing is a 416, and anything else is the whole
object."""

from __future__ import annotations

import pytest

from fleet.controller.api.ranges import ByteRange, Unsatisfiable, requested_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=1000-", ByteRange(1000, 5000, 5000)),  # the agent's resume
        ("bytes=0-", ByteRange(0, 5000, 5000)),
        ("bytes=10-19", ByteRange(10, 20, 5000)),
        ("bytes=4990-9999", ByteRange(4990, 5000, 5000)),  # past the end: up to the end
        ("bytes=-100", ByteRange(4900, 5000, 5000)),  # the last 100 bytes
        ("bytes=-9999", ByteRange(0, 5000, 5000)),
        (None, None),
        ("", None),
        ("bytes=0-1,5-6", None),  # several ranges: the whole object
        ("items=0-1", None),
        ("bytes=20-10", None),  # not a range: ignored
        ("bytes=-", None),
        ("bytes=abc-", None),
    ],
)
def test_a_range_is_served_or_ignored(header: str | None, expected: ByteRange | None) -> None:
    assert requested_range(header, 5000) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=5000-", 5000), ("bytes=-0", 5000), ("bytes=0-", 0)]
)
def test_a_range_that_selects_nothing_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        requested_range(header, size)


def test_the_content_range_names_the_last_byte_and_the_size() -> None:
    assert ByteRange(1000, 5000, 5000).content_range() == "bytes 1000-4999/5000"
