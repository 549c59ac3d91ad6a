"""flows.stages.choose_variant: smallest variant within the accuracy budget, then the fastest."""

from flows.stages import choose_variant


def rec(name: str, accuracy: float, size: int, p50: float = 1.0) -> dict:
    return {"name": name, "accuracy": accuracy, "size_bytes": size, "p50_ms": p50}


def test_smallest_within_max_drop() -> None:
    records = [
        rec("fp32", 0.970, 1000),
        rec("int8-dynamic", 0.965, 400),
        rec("int8-static", 0.968, 300),
    ]
    assert choose_variant(records, 0.01) == "int8-static"


def test_smallest_is_skipped_when_it_drops_too_much() -> None:
    records = [
        rec("fp32", 0.970, 1000),
        rec("int8-dynamic", 0.965, 400),
        rec("int8-static", 0.900, 300),
    ]
    assert choose_variant(records, 0.01) == "int8-dynamic"


def test_falls_back_to_fp32_when_all_int8_drop_too_much() -> None:
    records = [
        rec("fp32", 0.97, 1000),
        rec("int8-dynamic", 0.90, 400),
        rec("int8-static", 0.80, 300),
    ]
    assert choose_variant(records, 0.01) == "fp32"
    assert choose_variant(records, 0.0) == "fp32"


def test_better_than_fp32_is_eligible() -> None:
    records = [rec("fp32", 0.95, 1000), rec("int8-static", 0.99, 300)]
    assert choose_variant(records, 0.0) == "int8-static"


def test_tie_on_size_goes_to_the_faster() -> None:
    records = [
        rec("fp32", 0.97, 1000, p50=0.5),
        rec("int8-dynamic", 0.97, 300, p50=0.30),
        rec("int8-static", 0.97, 300, p50=0.20),
    ]
    assert choose_variant(records, 0.01) == "int8-static"
    records[1]["p50_ms"] = 0.1
    assert choose_variant(records, 0.01) == "int8-dynamic"


def test_larger_budget_allows_the_smaller_variant() -> None:
    records = [rec("fp32", 0.97, 1000), rec("int8-static", 0.93, 300)]
    assert choose_variant(records, 0.01) == "fp32"
    assert choose_variant(records, 0.05) == "int8-static"


def test_drop_equal_to_budget_when_exactly_representable() -> None:
    records = [rec("fp32", 0.5, 1000), rec("int8-static", 0.25, 300)]
    assert choose_variant(records, 0.25) == "int8-static"  # exactly representable: accepted


def test_drop_exactly_max_drop_is_allowed() -> None:
    records = [rec("fp32", 0.95, 1000), rec("int8-static", 0.94, 300)]
    assert choose_variant(records, 0.01) == "int8-static"
