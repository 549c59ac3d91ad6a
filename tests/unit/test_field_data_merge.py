"""flows.field_data without a controller: merging pulled rows into the splits, reading the pulled
files, and the pull's refusals (a fake controller answers over httpx.MockTransport)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from edgeloop.core.errors import DataCheckError
from flows.datasets import DatasetSchema
from flows.field_data import (
    FieldDataError,
    last_pulled_id,
    merge_field,
    pull,
    read_field_rows,
)

SCHEMA = DatasetSchema("toy", ("a", "b"), (0.0, 16.0), (0, 1))


def frame(rows: list[tuple[float, float, int]]) -> pd.DataFrame:
    df = pd.DataFrame([r[:2] for r in rows], columns=["a", "b"]).astype(np.float32)
    df["label"] = np.array([r[2] for r in rows], dtype=np.int64)
    return df


def splits() -> dict[str, pd.DataFrame]:
    return {
        "train": frame([(0, 0, 0), (1, 1, 1)]),
        "val": frame([(2, 2, 0)]),
        "test": frame([(3, 3, 1)]),
        "field": frame([(4, 4, 0), (5, 5, 1)]),
    }


def test_merge_adds_new_rows_moves_held_out_ones_and_never_leaks_evaluation() -> None:
    pulled = frame([(9, 9, 1), (9, 9, 1), (2, 2, 0), (4, 4, 0), (0, 0, 0)]).astype(
        {"a": "float64", "b": "float64"}  # as read back from CSV
    )
    merged, counts = merge_field(splits(), pulled, SCHEMA)
    assert counts == {"added": 2, "dropped_eval": 1, "moved_from_field": 1}
    assert sorted(merged["train"]["a"].tolist()) == [0, 1, 4, 9]
    assert merged["field"]["a"].tolist() == [5]
    assert merged["val"].equals(splits()["val"]) and merged["test"].equals(splits()["test"])


def test_merge_of_nothing_changes_nothing() -> None:
    merged, counts = merge_field(splits(), read_field_rows(Path("missing"), SCHEMA), SCHEMA)
    assert counts["added"] == 0 and merged["train"].equals(splits()["train"])


def test_a_pulled_file_with_other_columns_is_refused(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1.0], "label": [0]}).to_csv(
        tmp_path / "field-20260101T000000Z-1-1.csv", index=False
    )
    with pytest.raises(DataCheckError, match="columns are not the dataset's features"):
        read_field_rows(tmp_path, SCHEMA)


def fake_controller(samples: list[dict[str, Any]]) -> httpx.MockTransport:
    """The controller's page (``FieldSamplePage``): each sample stored with its version, device and time."""
    stored = {"version": "1", "device_id": "d1", "received_at": "2026-01-01T00:00:00Z"}

    def answer(request: httpx.Request) -> httpx.Response:
        since = int(request.url.params["since"])
        page = [{**stored, **s} for s in samples if s["id"] > since]
        return httpx.Response(200, json={"samples": page, "next_since": since})

    return httpx.MockTransport(answer)


def test_samples_with_the_wrong_feature_count_are_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    bad = [{"id": 7, "model": "toy", "features": [1.0, 2.0, 3.0], "label": 1}]
    with pytest.raises(FieldDataError, match=r"field samples \[7\].*wrong number of features"):
        pull("http://c", "t", model="toy", schema=SCHEMA, field_dir=tmp_path / "field",
             dvc=False, transport=fake_controller(bad))  # fmt: skip
    assert not (tmp_path / "field").exists()


def test_the_file_names_carry_the_cursor(tmp_path: Path) -> None:
    samples = [
        {"id": 3, "model": "toy", "features": [1.0, 2.0], "label": 1},
        {"id": 4, "model": "other", "features": [1.0, 2.0], "label": 1},
    ]
    result = pull("http://c", "t", model="toy", schema=SCHEMA, field_dir=tmp_path,
                  dvc=False, transport=fake_controller(samples))  # fmt: skip
    assert result.samples == 1 and result.skipped_other_models == 1
    assert result.path is not None and result.path.name.endswith("-1-4.csv")
    assert last_pulled_id(tmp_path) == 4


def test_samples_without_a_label_are_counted_not_written(tmp_path: Path) -> None:
    samples = [
        {"id": 1, "model": "toy", "features": [1.0, 2.0], "label": None},
        {"id": 2, "model": "toy", "features": [3.0, 4.0], "label": 0},
        {"id": 3, "model": "toy", "features": [5.0, 6.0], "label": None},
        {"id": 4, "model": "other", "features": [1.0, 2.0], "label": None},
    ]
    result = pull("http://c", "t", model="toy", schema=SCHEMA, field_dir=tmp_path,
                  dvc=False, transport=fake_controller(samples))  # fmt: skip
    assert (result.samples, result.unlabelled, result.skipped_other_models) == (1, 2, 1)
    assert result.path is not None and len(read_field_rows(tmp_path, SCHEMA)) == 1
    only_unlabelled = [{"id": 5, "model": "toy", "features": [1.0, 2.0], "label": None}]
    result = pull("http://c", "t", model="toy", schema=SCHEMA, field_dir=tmp_path / "next",
                  dvc=False, transport=fake_controller(only_unlabelled))  # fmt: skip
    assert (result.path, result.samples, result.unlabelled) == (None, 0, 1)
