"""flows.datacheck.check_splits: clean splits pass; each kind of bad data is named with examples.

Great Expectations takes a couple of seconds per run, so the corruptions share one run: each split
gets its own kind of damage, and each test checks the failures reported for it.
"""

import json
import math

import pandas as pd
import pytest

from edgeloop.core.errors import DataCheckError
from edgeloop.core.params import DataParams, Params
from flows.datacheck import check_splits, row_hashes
from flows.datasets import LABEL, Dataset, sklearn_digits, split_dataset


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return sklearn_digits()


@pytest.fixture(scope="module")
def clean(digits: Dataset) -> dict[str, pd.DataFrame]:
    return split_dataset(digits, Params().data.splits, 42)


def run_failing(
    digits: Dataset, splits: dict[str, pd.DataFrame], params: DataParams | None = None
) -> DataCheckError:
    with pytest.raises(DataCheckError) as info:
        check_splits(digits.schema, splits, params or DataParams())
    return info.value


@pytest.fixture(scope="module")
def corrupt(digits: Dataset, clean: dict[str, pd.DataFrame]) -> dict:
    splits = {name: frame.copy() for name, frame in clean.items()}
    # val: class 4 missing, one pixel out of range, one unknown label.
    val = splits["val"]
    val = val[val[LABEL] != 4].reset_index(drop=True)
    val.loc[3, "px_5"] = 99.0
    val.loc[0, LABEL] = 11
    splits["val"] = val
    # test: a NaN pixel, and the first training row copied in at the end (leakage).
    splits["test"].loc[7, "px_10"] = float("nan")
    leaked_row = len(splits["test"])
    splits["test"] = pd.concat([splits["test"], clean["train"].iloc[[0]]], ignore_index=True)
    # field: a feature column missing.
    splits["field"] = splits["field"].drop(columns=["px_3"])
    error = run_failing(digits, splits)
    return {"error": error, "failures": error.report["failures"], "leaked_row": leaked_row}


def only(failures: list[dict], split: str, view: str, expectation: str | None = None) -> dict:
    found = [
        f
        for f in failures
        if f["split"] == split
        and f["view"] == view
        and (expectation is None or f["expectation"] == expectation)
    ]
    assert len(found) == 1, failures
    return found[0]


def test_clean_splits_pass(digits: Dataset, clean: dict[str, pd.DataFrame]) -> None:
    report = check_splits(digits.schema, clean, DataParams())
    assert report["passed"] is True
    assert report["failures"] == []
    assert report["dataset"] == "sklearn-digits"
    # 4 table + 2 values + 1 balance + 1 leakage expectations for each of the 4 splits.
    assert report["expectations_evaluated"] == 32
    assert report["rows"] == {name: len(f) for name, f in clean.items()}
    json.dumps(report)


def test_corrupt_report_summary(corrupt: dict) -> None:
    error = corrupt["error"]
    report = error.report
    assert report["passed"] is False
    assert report["dataset"] == "sklearn-digits"
    failures = corrupt["failures"]
    assert error.message.startswith(f"data checks failed: {len(failures)} expectation(s) (")
    assert f"and {len(failures) - 4} more" in error.message
    assert "data report" in error.hint
    # Exactly the damaged places fail, nothing else.
    assert sorted((f["split"], f["view"]) for f in failures) == [
        ("field", "table"),
        ("test", "leakage"),
        ("test", "values"),
        ("train", "leakage"),
        ("val", "balance"),
        ("val", "table"),
        ("val", "values"),
    ]
    json.dumps(report)  # the validate stage writes the report as JSON


def test_value_out_of_range(corrupt: dict) -> None:
    failure = only(corrupt["failures"], "val", "values")
    assert failure["expectation"] == "expect_column_values_to_be_between"
    assert failure["kwargs"] == {"column": "value", "min_value": 0.0, "max_value": 16.0}
    assert failure["unexpected_count"] == 1
    assert failure["examples"] == [{"value": 99.0, "row": 3, "feature": "px_5"}]


def test_nan_value(corrupt: dict) -> None:
    failure = only(corrupt["failures"], "test", "values")
    assert failure["expectation"] == "expect_column_values_to_not_be_null"
    assert failure["unexpected_count"] == 1
    [example] = failure["examples"]
    assert example["row"] == 7
    assert example["feature"] == "px_10"
    assert math.isnan(example["value"])


def test_missing_class_in_one_split(corrupt: dict) -> None:
    failure = only(corrupt["failures"], "val", "balance")
    assert failure["expectation"] == "expect_column_values_to_be_between"
    assert failure["kwargs"]["min_value"] == 0.5
    assert failure["kwargs"]["max_value"] == 2.0
    assert failure["examples"] == [{"share_of_uniform": 0.0, "class": 4, "count": 0}]


def test_unknown_label(corrupt: dict) -> None:
    failure = only(corrupt["failures"], "val", "table")
    assert failure["expectation"] == "expect_column_values_to_be_in_set"
    assert failure["kwargs"] == {"column": LABEL}  # the value set itself is left out
    assert failure["examples"] == [{"label": 11, "row": 0}]


def test_row_leaked_from_train_into_test(corrupt: dict) -> None:
    test_leak = only(corrupt["failures"], "test", "leakage")
    train_leak = only(corrupt["failures"], "train", "leakage")
    assert test_leak["expectation"] == "expect_column_values_to_not_be_in_set"
    assert test_leak["unexpected_count"] == 1
    assert train_leak["unexpected_count"] == 1
    assert [e["row"] for e in test_leak["examples"]] == [corrupt["leaked_row"]]
    assert [e["row"] for e in train_leak["examples"]] == [0]
    assert test_leak["examples"][0]["row_hash"] == train_leak["examples"][0]["row_hash"]


def test_missing_column(corrupt: dict) -> None:
    failure = only(corrupt["failures"], "field", "table")
    assert failure["expectation"] == "expect_table_columns_to_match_ordered_list"
    [example] = failure["examples"]
    assert example["observed_value"][:4] == ["row", "px_0", "px_1", "px_2"]
    assert "px_3" not in example["observed_value"]
    assert failure["kwargs"]["column_list"][4] == "px_3"


def test_too_few_rows_and_class_share_bounds(
    digits: Dataset, clean: dict[str, pd.DataFrame]
) -> None:
    splits = dict(clean)
    splits["field"] = clean["field"].iloc[:5]
    # Demanding exactly a uniform share fails every split: none is perfectly balanced any more.
    error = run_failing(digits, splits, DataParams(min_class_share=1.0, max_class_share=1.0))
    failures = error.report["failures"]
    rows = only(failures, "field", "table", "expect_table_row_count_to_be_between")
    assert rows["kwargs"]["min_value"] == 10
    assert rows["examples"] == [{"observed_value": 5}]
    assert {f["split"] for f in failures if f["view"] == "balance"} == {
        "train",
        "val",
        "test",
        "field",
    }
    train = only(failures, "train", "balance")
    assert train["kwargs"]["min_value"] == train["kwargs"]["max_value"] == 1.0
    assert error.report["rows"]["field"] == 5


def test_row_hashes_depend_on_features_only(clean: dict[str, pd.DataFrame]) -> None:
    features = tuple(c for c in clean["train"].columns if c != LABEL)
    frame = clean["train"].iloc[:3]
    hashes = row_hashes(frame, features)
    assert len(set(hashes)) == 3
    assert all(len(h) == 16 for h in hashes)
    assert row_hashes(frame.assign(**{LABEL: 0}), features).tolist() == hashes.tolist()
    changed = frame.copy()
    changed.loc[changed.index[0], "px_0"] += 1
    assert row_hashes(changed, features).tolist()[1:] == hashes.tolist()[1:]
    assert row_hashes(changed, features).iloc[0] != hashes.iloc[0]
