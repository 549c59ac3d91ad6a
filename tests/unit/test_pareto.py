"""The Pareto front over size, accuracy and p95."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flows.pareto import dominates, pareto_table


def rec(name: str, size: int, acc: float, p95: float) -> dict[str, object]:
    return {"name": name, "size_bytes": size, "accuracy": acc, "p95_ms": p95}


def test_front_drops_dominated_variants() -> None:
    rows = pareto_table(
        [
            rec("fp32", 1000, 0.98, 0.05),
            rec("int8-dynamic", 300, 0.98, 0.03),
            rec("int8-static", 310, 0.98, 0.04),  # dominated by int8-dynamic
            rec("pruned-int8", 100, 0.96, 0.02),
        ]
    )
    assert [(r["name"], r["pareto"]) for r in rows] == [
        ("pruned-int8", True),
        ("int8-dynamic", True),
        ("int8-static", False),
        ("fp32", False),
    ]


def test_equal_records_do_not_dominate_each_other() -> None:
    a, b = rec("a", 10, 0.9, 1.0), rec("b", 10, 0.9, 1.0)
    assert not dominates(a, b) and not dominates(b, a)


records = st.lists(
    st.builds(
        rec,
        st.text(min_size=1, max_size=4),
        st.integers(1, 1000),
        st.floats(0, 1),
        st.floats(0.001, 10),
    ),
    min_size=1,
    max_size=8,
)


@given(records)
def test_front_is_never_empty_and_no_front_member_is_dominated(
    rows: list[dict[str, object]],
) -> None:
    table = pareto_table(rows)
    front = [r for r in table if r["pareto"]]
    assert front
    assert not any(dominates(o, f) for f in front for o in table)
