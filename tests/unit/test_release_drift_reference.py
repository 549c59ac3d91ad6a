"""The devices' drift reference is built from the training split and logged by registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleet.shared.drift import DriftReference
from flows.datasets import LABEL, DatasetSchema, write_splits
from flows.release import drift_reference
from flows.workspace import Workspace
from registry import publish

SCHEMA = DatasetSchema("toy", ("a", "b"), (-100.0, 100.0), (0, 1, 2))


def split(rng: np.random.Generator, shift: float, n: int, classes: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(shift, 1, size=(n, 2)), columns=["a", "b"])
    frame[LABEL] = rng.choice(classes, size=n)
    return frame


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Train around 0 with classes 0 and 1; every other split around 50 with class 2 only."""
    rng = np.random.default_rng(0)
    splits = {
        "train": split(rng, 0.0, 2000, [0, 1]),
        **{name: split(rng, 50.0, 300, [2]) for name in ("val", "test", "field")},
    }
    write_splits(SCHEMA, splits, tmp_path / "splits")
    return Workspace(tmp_path / "splits", tmp_path / "work")


def test_the_reference_describes_the_training_split_not_the_held_out_ones(ws: Workspace) -> None:
    ref = drift_reference(ws)
    assert ref.features == 2 and ref.feature_names == ("a", "b")
    assert all(-2 < edge < 2 for edges in ref.edges for edge in edges)  # train's deciles
    assert len(ref.class_shares) == 3 and ref.class_shares[2] == 0.0
    assert ref.class_shares[0] == pytest.approx(0.5, abs=0.05)


def test_registration_logs_the_reference_it_is_given_next_to_the_golden_set(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: dict[str, str] = {}

    def log_artifact(path: str, artifact_path: str) -> None:
        logged[f"{artifact_path}/{Path(path).name}"] = Path(path).read_text()

    monkeypatch.setattr(publish.mlflow, "log_artifact", log_artifact)
    publish._log_drift_reference(drift_reference(ws))
    logged_ref = DriftReference.from_dict(json.loads(logged["golden/drift-reference.json"]))
    assert logged_ref == drift_reference(ws)
