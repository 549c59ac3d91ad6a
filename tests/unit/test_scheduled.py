"""The scheduled retrain's decision: skip only when neither the data nor the training code changed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeloop.core.params import Params
from flows.scheduled import change_reason, latest_version, training_hash


def version(number: str, **tags: str) -> SimpleNamespace:
    return SimpleNamespace(version=number, tags=tags)


class FakeClient:
    def __init__(self, *versions: SimpleNamespace) -> None:
        self.versions = list(versions)
        self.filters: list[str] = []

    def search_model_versions(self, filter_string: str) -> list[SimpleNamespace]:
        self.filters.append(filter_string)
        return self.versions


def test_unchanged_data_and_code_skip() -> None:
    latest = version("4", **{"edgeloop.data.hash": "d1.dir", "edgeloop.training.hash": "c" * 64})
    assert change_reason(latest, "d1.dir", "c" * 64) is None


def test_no_version_yet_trains() -> None:
    assert change_reason(None, "d1.dir", "c" * 64) == "no version registered yet"


def test_changed_data_names_both_hashes() -> None:
    latest = version("4", **{"edgeloop.data.hash": "old.dir", "edgeloop.training.hash": "c" * 64})
    assert change_reason(latest, "new.dir", "c" * 64) == "data hash old.dir -> new.dir"


def test_changed_code_and_missing_code_tag_train() -> None:
    changed = version("4", **{"edgeloop.data.hash": "d.dir", "edgeloop.training.hash": "a" * 64})
    assert change_reason(changed, "d.dir", "b" * 64) == f"training code {'a' * 12} -> {'b' * 12}"
    untagged = version("2", **{"edgeloop.data.hash": "d.dir"})
    assert change_reason(untagged, "d.dir", "b" * 64) == "v2 records no edgeloop.training.hash"


def test_latest_version_is_the_highest_number_not_the_first_listed() -> None:
    client = FakeClient(version("9"), version("10"), version("2"))
    assert latest_version(client, "m").version == "10"
    assert client.filters == ["name = 'm'"]
    assert latest_version(FakeClient(), "m") is None


def test_training_hash_follows_code_and_shaping_params_only(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("EPOCHS = 1\n")
    params = Params()
    base = training_hash(params, tmp_path)
    assert training_hash(params, tmp_path) == base
    unrelated = params.model_copy(
        update={"schedule": params.schedule.model_copy(update={"auto_promote": True})}
    )
    assert training_hash(unrelated, tmp_path) == base
    shaped = params.model_copy(
        update={"training": params.training.model_copy(update={"epochs": 2})}
    )
    assert training_hash(shaped, tmp_path) != base
    (tmp_path / "train.py").write_text("EPOCHS = 2\n")
    assert training_hash(params, tmp_path) != base


def test_code_that_does_not_shape_the_model_retrains_nothing(tmp_path: Path) -> None:
    (tmp_path / "compress.py").write_text("OPSET = 18\n")
    params = Params()
    base = training_hash(params, tmp_path)
    (tmp_path / "rollout.py").write_text("POLL_S = 1\n")  # the rollout flow, edited
    (tmp_path / "hardware.py").write_text("SUITE = 'x'\n")
    assert training_hash(params, tmp_path) == base
    (tmp_path / "compress.py").write_text("OPSET = 17\n")
    assert training_hash(params, tmp_path) != base


def test_every_shaping_module_exists_and_the_orchestration_is_left_out() -> None:
    import flows.scheduled as scheduled

    for name in scheduled.SHAPING_CODE:
        assert (scheduled.CODE_ROOT / f"{name}.py").is_file(), name
    assert not {"rollout", "scheduled", "release", "hardware", "deployments"} & set(
        scheduled.SHAPING_CODE
    )


def test_a_users_own_builder_module_is_part_of_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site"
    package.mkdir()
    (package / "my_nets.py").write_text("def build(**kw):\n    return None\n")
    monkeypatch.syspath_prepend(str(package))
    params = Params.model_validate({"training": {"builder": "my_nets:build"}})
    base = training_hash(params, tmp_path)
    (package / "my_nets.py").write_text("def build(**kw):\n    return 1\n")
    assert training_hash(params, tmp_path) != base
    missing = Params.model_validate({"training": {"builder": "no_such_module_here:build"}})
    assert training_hash(missing, tmp_path)  # training reports it; the hash does without


class PromotingClient:
    """Enough of MlflowClient for registry.outcomes.promote: one passing version, production on v1."""

    def __init__(self) -> None:
        self.aliases = {"production": "1"}
        self.calls: list[tuple[str, str]] = []

    def get_model_version(self, model: str, version: str) -> SimpleNamespace:
        tags = {"edgeloop.hw.host-cpu.status": "passed", "edgeloop.gates": "passed"}
        return SimpleNamespace(version=version, tags=tags)

    def get_registered_model(self, model: str) -> SimpleNamespace:
        return SimpleNamespace(aliases=dict(self.aliases))

    def set_registered_model_alias(self, model: str, alias: str, version: str) -> None:
        self.calls.append(("alias", alias))
        self.aliases[alias] = version

    def set_model_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        self.calls.append(("tag", key))


def test_auto_promote_sets_production_and_starts_the_rollout_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect.deployments

    from flows.scheduled import _promote_and_roll_out

    started: list[tuple[str, dict[str, object]]] = []

    def fake_run(name: str, parameters: dict[str, object], **_: object) -> SimpleNamespace:
        started.append((name, parameters))
        return SimpleNamespace(name="brisk-otter")

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run)
    client = PromotingClient()
    assert _promote_and_roll_out(client, "m", "2") == "brisk-otter"
    assert client.aliases["production"] == "2"
    assert started == [("rollout/promoted", {"model": "m", "version": "2", "stable_version": "1"})]
    # it starts the rollout itself, and says so before the alias moves: the listener and the
    # poller, which see the move, start no second one
    assert client.calls == [("tag", "edgeloop.promote.rollout"), ("alias", "production")]
