"""Promotion checks and rollout outcomes written back to a real (SQLite) MLflow registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from edgeloop.core.errors import RegistryError
from registry import tags as tag
from registry.modelcard import write_card
from registry.outcomes import promote, record_outcome

MODEL = "digits"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    c.create_registered_model(MODEL)
    passed = {"edgeloop.gates": "passed", "edgeloop.hw.host-cpu.status": "passed"}
    c.create_model_version(MODEL, (tmp_path / "m1").as_uri(), tags=passed)
    c.create_model_version(MODEL, (tmp_path / "m2").as_uri(), tags=passed)
    c.create_model_version(
        MODEL,
        (tmp_path / "m3").as_uri(),
        tags={"edgeloop.gates": "passed", "edgeloop.hw.edge-small.status": "failed"},
    )
    c.create_model_version(MODEL, (tmp_path / "m4").as_uri(), tags={})
    return c


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def card(version: str) -> dict[str, object]:
    return {
        "model": MODEL, "version": version, "created": "2026-01-01", "aliases": ["candidate", "production"],
        "intended_use": "x", "data": {"dataset": "d", "description": "", "hash": "h", "rows": {}},
        "metrics": {}, "variants": [], "chosen_variant": "v", "compression": {}, "hardware": {},
        "gates": [], "limitations": [], "lineage": {},
    }  # fmt: skip


def test_promote_sets_production_when_every_profile_passed(client: MlflowClient) -> None:
    assert "every gate" in promote(client, MODEL, "2")
    assert aliases(client) == {"production": "2"}


def test_promote_refuses_a_failed_profile_and_a_version_without_results(
    client: MlflowClient,
) -> None:
    with pytest.raises(
        RegistryError, match=r"v3 cannot be promoted: hardware profile\(s\) edge-small"
    ):
        promote(client, MODEL, "3")
    with pytest.raises(RegistryError, match="v4 cannot be promoted: it has no hardware results"):
        promote(client, MODEL, "4")
    with pytest.raises(RegistryError, match="v9 is not in the registry"):
        promote(client, MODEL, "9")
    assert aliases(client) == {}


def test_force_tag_promotes_and_says_so(client: MlflowClient) -> None:
    client.set_model_version_tag(MODEL, "4", tag.PROMOTE_FORCE, "true")
    assert tag.PROMOTE_FORCE in promote(client, MODEL, "4")


def test_rollback_moves_production_back_tags_and_appends_the_card(
    client: MlflowClient, tmp_path: Path
) -> None:
    cards = tmp_path / "cards"
    write_card(card("2"), cards)
    promote(client, MODEL, "1")
    promote(client, MODEL, "2")
    causes = [{"gate": "latency_p95", "cohort": "edge-small", "measured": 3.1, "threshold": 2.0}]
    record_outcome(
        client, model=MODEL, version="2", stable_version="1", outcome="rolled_back",
        reason="p95 latency 3.1 ms over budget 2.0 ms on cohort edge-small", causes=causes,
        cards_dir=cards, now=datetime(2026, 11, 27, tzinfo=UTC),
    )  # fmt: skip
    assert aliases(client) == {"production": "1"}
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["edgeloop.rollout.status"] == "rolled_back"
    assert "edge-small" in tags["edgeloop.rollout.reason"]
    data = json.loads((cards / MODEL / "v2.json").read_text())
    assert data["rollouts"][0]["causes"] == causes and "production" not in data["aliases"]
    markdown = (cards / MODEL / "v2.md").read_text()
    assert (
        "## Rollouts" in markdown and "| 2026-11-27T00:00:00+00:00 | rolled_back | 1 |" in markdown
    )


def test_success_keeps_production_and_records_it(client: MlflowClient, tmp_path: Path) -> None:
    promote(client, MODEL, "2")
    record_outcome(
        client, model=MODEL, version="2", stable_version="1", outcome="succeeded",
        reason="all stages passed", causes=[], cards_dir=tmp_path,
    )  # fmt: skip
    assert aliases(client) == {"production": "2"}
    assert client.get_model_version(MODEL, "2").tags["edgeloop.rollout.status"] == "succeeded"


def test_rollback_without_a_stable_version_removes_production(
    client: MlflowClient, tmp_path: Path
) -> None:
    promote(client, MODEL, "2")
    record_outcome(
        client, model=MODEL, version="2", stable_version=None, outcome="aborted",
        reason="operator abort", causes=[], cards_dir=tmp_path,
    )  # fmt: skip
    assert aliases(client) == {}
