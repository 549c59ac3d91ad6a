"""Run keys: registration against a real MLflow (SQLite in tmp) happens once per key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from test_fetch import FEATURES, tiny_model

from registry import tags as tag
from registry.publish import Release, ReleaseGateResult, VariantRecord, publish
from registry.run_key import existing_version, run_key

CARD = {
    "intended_use": "tests",
    "limitations": ["none"],
    "data": {"dataset": "tiny", "description": "", "hash": "h", "rows": {"train": 3}},
    "metrics": {"test": 1.0},
    "compression": {},
    "pareto": [],
    "lineage": {},
}


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def release_in_new_run(client: MlflowClient, folder: Path, key: str | None) -> Release:
    experiment = client.get_experiment_by_name("tiny")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("tiny", artifact_location=(folder / "art").as_uri())
    )
    run_id = client.create_run(experiment_id, tags={tag.RUN_KEY: key} if key else {}).info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = tiny_model(folder / "fp32.onnx", scale=1.0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Release(
        model_name="tiny",
        run_id=run_id,
        variants=[VariantRecord("fp32", path, digest, path.stat().st_size, 1.0, 0.1, 0.2)],
        chosen="fp32",
        example_input=np.ones((1, FEATURES), dtype=np.float32),
        tags={"edgeloop.source": "trained"},
        gates=[ReleaseGateResult("test_accuracy", True, 1.0, 0.9)],
        card=dict(CARD),
    )


def test_run_key_is_stable_and_changes_with_each_input() -> None:
    key = run_key("d1", "p1", "c1")
    assert key == run_key("d1", "p1", "c1") and len(key) == 32
    assert (
        len({key, run_key("d2", "p1", "c1"), run_key("d1", "p2", "c1"), run_key("d1", "p1", "c2")})
        == 4
    )


def test_a_second_registration_with_the_same_key_returns_the_first_version(
    client: MlflowClient, tmp_path: Path
) -> None:
    dirs = {"keys_dir": tmp_path / "keys", "cards_dir": tmp_path / "cards"}
    first = publish(client, release_in_new_run(client, tmp_path / "a", "k1"), **dirs)
    second = publish(client, release_in_new_run(client, tmp_path / "b", "k1"), **dirs)
    assert (first.version, second.version) == ("1", "1")
    assert second.aliases == ["candidate"] and second.card_markdown == first.card_markdown
    assert second.signatures == first.signatures
    versions = client.search_model_versions("name = 'tiny'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags[tag.RUN_KEY] == "k1"
    assert str(existing_version(client, "tiny", "k1").version) == "1"  # type: ignore[union-attr]


def test_another_key_or_no_key_registers_a_new_version(
    client: MlflowClient, tmp_path: Path
) -> None:
    dirs = {"keys_dir": tmp_path / "keys", "cards_dir": tmp_path / "cards"}
    assert publish(client, release_in_new_run(client, tmp_path / "a", "k1"), **dirs).version == "1"
    assert publish(client, release_in_new_run(client, tmp_path / "b", "k2"), **dirs).version == "2"
    assert publish(client, release_in_new_run(client, tmp_path / "c", None), **dirs).version == "3"
    assert existing_version(client, "tiny", "k3") is None
    assert existing_version(client, "no-such-model", "k1") is None


def test_a_jobs_key_follows_data_and_training_params_but_not_placement(tmp_path: Path) -> None:
    from edgeloop.core.params import Params
    from edgeloop.core.placement_params import PlacementConstraints, PlacementParams
    from edgeloop.core.settings import Settings
    from flows.placement_flow import job_run_key

    settings = Settings(data_dir=tmp_path / "data")
    params = Params()
    key = job_run_key(settings, params)
    moved = params.model_copy(
        update={"placement": PlacementParams(constraints=PlacementConstraints(deadline_s=5))}
    )
    assert job_run_key(settings, moved) == key
    more_epochs = params.model_copy(
        update={"training": params.training.model_copy(update={"epochs": 31})}
    )
    assert job_run_key(settings, more_epochs) != key
    (tmp_path / "data" / "splits").mkdir(parents=True)
    (tmp_path / "data" / "splits" / "train.csv").write_text("a,b\n1,2\n")
    assert job_run_key(settings, params) != key


def test_a_concurrent_attempt_that_registered_first_wins(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import registry.publish

    dirs = {"keys_dir": tmp_path / "keys", "cards_dir": tmp_path / "cards"}
    assert publish(client, release_in_new_run(client, tmp_path / "a", "k1"), **dirs).version == "1"
    calls = []

    def racing(*args: object) -> object:
        calls.append(args)  # the first look misses v1, as if it were registered a moment later
        return None if len(calls) == 1 else existing_version(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.publish, "existing_version", racing)
    late = publish(client, release_in_new_run(client, tmp_path / "b", "k1"), **dirs)
    assert late.version == "1" and len(calls) == 2
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny'")] == ["1"]
