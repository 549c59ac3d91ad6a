"""tests/suite_order.py names files that exist and puts them first, in its order."""

from __future__ import annotations

from suite_order import LONGEST_FIRST, TESTS, rank


def test_every_listed_file_exists() -> None:
    missing = [name for name in LONGEST_FIRST if not (TESTS / name).is_file()]
    assert missing == []


def test_listed_files_rank_in_their_order_before_the_rest() -> None:
    ranks = [rank(TESTS / name) for name in LONGEST_FIRST]
    assert ranks == sorted(ranks) == list(range(len(LONGEST_FIRST)))
    assert rank(TESTS / "unit" / "test_suite_order.py") == len(LONGEST_FIRST)
