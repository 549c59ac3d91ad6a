"""flows.datasets: the stratified, duplicate-free split and the splits folder round trip."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.params import Params
from flows.datasets import (
    LABEL,
    SPLITS,
    Dataset,
    DatasetSchema,
    read_splits,
    sklearn_digits,
    split_dataset,
    write_splits,
    xy,
)

FRACTIONS = Params().data.splits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return sklearn_digits()


@pytest.fixture(scope="module")
def splits(digits: Dataset) -> dict[str, pd.DataFrame]:
    return split_dataset(digits, FRACTIONS, 42)


def row_keys(frame: pd.DataFrame, schema: DatasetSchema) -> set[bytes]:
    values = frame[list(schema.feature_names)].to_numpy(dtype=np.float32)
    return {row.tobytes() for row in values}


def test_digits_schema(digits: Dataset) -> None:
    schema = digits.schema
    assert schema.name == "sklearn-digits"
    assert schema.feature_names[0] == "px_0"
    assert schema.feature_names[-1] == "px_63"
    assert schema.value_range == (0.0, 16.0)
    assert digits.features.min() >= 0
    assert digits.features.max() <= 16


def test_split_names_and_total(splits: dict[str, pd.DataFrame], digits: Dataset) -> None:
    assert tuple(splits) == SPLITS
    # sklearn's digits has no exact duplicate rows, so every row lands in exactly one split.
    assert sum(len(f) for f in splits.values()) == len(digits.labels) == 1797
    for frame in splits.values():
        assert list(frame.columns) == [*digits.schema.feature_names, LABEL]
        assert list(frame.index) == list(range(len(frame)))


def test_split_sizes_follow_fractions(splits: dict[str, pd.DataFrame]) -> None:
    total = sum(len(f) for f in splits.values())
    for name, fraction in FRACTIONS.items():
        assert abs(len(splits[name]) - fraction * total) <= 2, name


def test_splits_are_disjoint_by_row_content(
    splits: dict[str, pd.DataFrame], digits: Dataset
) -> None:
    keys = {name: row_keys(frame, digits.schema) for name, frame in splits.items()}
    for name, own in keys.items():
        assert len(own) == len(splits[name]), f"duplicate rows inside {name}"
        for other, theirs in keys.items():
            if other != name:
                assert not own & theirs, f"{name} and {other} share rows"


def test_every_class_in_every_split_stratified(
    splits: dict[str, pd.DataFrame], digits: Dataset
) -> None:
    overall = pd.Series(digits.labels).value_counts(normalize=True).sort_index()
    for name, frame in splits.items():
        assert set(frame[LABEL]) == set(digits.schema.classes), name
        share = frame[LABEL].value_counts(normalize=True).sort_index()
        assert np.allclose(share.to_numpy(), overall.to_numpy(), atol=0.02), name


def test_duplicates_are_dropped(digits: Dataset) -> None:
    extra = np.arange(0, 200)
    doubled = Dataset(
        digits.schema,
        np.concatenate([digits.features, digits.features[extra]]),
        np.concatenate([digits.labels, digits.labels[extra]]),
    )
    out = split_dataset(doubled, FRACTIONS, 1)
    assert sum(len(f) for f in out.values()) == 1797
    all_rows = pd.concat(out.values(), ignore_index=True)
    assert not all_rows.duplicated(subset=list(digits.schema.feature_names)).any()


def test_same_seed_same_split_other_seed_other_split(digits: Dataset) -> None:
    a = split_dataset(digits, FRACTIONS, 5)
    b = split_dataset(digits, FRACTIONS, 5)
    c = split_dataset(digits, FRACTIONS, 6)
    for name in SPLITS:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["train"].equals(c["train"])


def test_custom_fractions(digits: Dataset) -> None:
    fractions = {"train": 0.4, "val": 0.2, "test": 0.2, "field": 0.2}
    out = split_dataset(digits, fractions, 0)
    for name, fraction in fractions.items():
        assert abs(len(out[name]) - fraction * 1797) <= 2, name


def test_write_read_round_trip(
    tmp_path: Path, splits: dict[str, pd.DataFrame], digits: Dataset
) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "stale.parquet").write_bytes(b"old")
    write_splits(digits.schema, splits, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(f"{s}.parquet" for s in SPLITS), "schema.json"]
    )
    schema, back = read_splits(folder)
    assert schema == digits.schema
    assert isinstance(schema.feature_names, tuple)
    assert schema.description == digits.schema.description
    for name in SPLITS:
        pd.testing.assert_frame_equal(back[name], splits[name])
        assert back[name][LABEL].dtype == np.int64
        assert back[name]["px_0"].dtype == np.float32


def test_schema_save_load(tmp_path: Path) -> None:
    schema = DatasetSchema("toy", ("a", "b"), (-1, 1), (3, 5), "two features")
    schema.save(tmp_path / "schema.json")
    loaded = DatasetSchema.load(tmp_path / "schema.json")
    assert loaded == DatasetSchema("toy", ("a", "b"), (-1.0, 1.0), (3, 5), "two features")
    assert loaded.n_features == 2


def test_xy_dtypes_and_order(splits: dict[str, pd.DataFrame]) -> None:
    frame = splits["val"]
    x, y = xy(frame)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert x.shape == (len(frame), 64)
    assert np.array_equal(x[:, 10], frame["px_10"].to_numpy())
    assert np.array_equal(y, frame[LABEL].to_numpy())


def test_frame_has_label_column(digits: Dataset) -> None:
    frame = digits.frame()
    assert frame.shape == (1797, 65)
    assert frame.columns[-1] == LABEL
    assert frame[LABEL].tolist()[:5] == digits.labels[:5].tolist()
