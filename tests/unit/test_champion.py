"""flows.champion: a retrained candidate against production (``auto_promote: if_better``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop.core.schedule_params import ScheduleParams
from flows.champion import GATE, Comparison, record
from registry.modelcard import render_markdown, update_card


def test_better_means_better_on_every_measure_and_a_tie_is_not() -> None:
    both = {
        "test": {"candidate": 0.95, "production": 0.94},
        "field": {"candidate": 0.9, "production": 0.7},
    }
    assert Comparison("2", "1", "accuracy", both).passed
    worse_in_the_field = {**both, "field": {"candidate": 0.6, "production": 0.7}}
    assert not Comparison("2", "1", "accuracy", worse_in_the_field).passed
    tie = {"test": {"candidate": 0.9, "production": 0.9}}
    assert not Comparison("2", "1", "accuracy", tie).passed
    assert not Comparison("2", "1", "accuracy", {}).passed  # nothing measured proves nothing
    lower_error = {"test": {"candidate": 1.5, "production": 2.0}}
    assert Comparison("2", "1", "mae", lower_error).passed
    said = Comparison("2", "1", "accuracy", worse_in_the_field).reason()
    assert said.startswith("v2 is not better than production v1: test accuracy 0.9500 against")


class Tags:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_model_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        self.tags[key] = value


def test_the_verdict_goes_on_the_tags_and_into_the_card(tmp_path: Path) -> None:
    card = {
        "model": "m", "version": "2", "created": "now", "aliases": [], "intended_use": "x",
        "data": {"dataset": "d", "description": "", "hash": "h", "rows": {}},
        "metrics": {"test": 0.9}, "variants": [], "chosen_variant": "fp32", "compression": {},
        "hardware": {}, "gates": [], "limitations": [], "lineage": {},
    }  # fmt: skip
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "v2.json").write_text(json.dumps(card))
    client = Tags()
    measured = {"test": {"candidate": 0.95, "production": 0.94}}
    record(client, "m", Comparison("2", "1", "accuracy", measured), tmp_path)  # type: ignore[arg-type]
    assert client.tags[f"edgeloop.gate.{GATE}"] == "passed"
    assert json.loads(client.tags["edgeloop.champion"])["test"] == measured["test"]
    markdown = (tmp_path / "m" / "v2.md").read_text()
    assert "## Against production v1" in markdown and f"Gate `{GATE}` passed" in markdown
    assert markdown == render_markdown(json.loads((tmp_path / "m" / "v2.json").read_text()))
    assert not update_card(tmp_path, "m", "9", "comparison", {})  # a card written elsewhere


@pytest.mark.parametrize(
    ("written", "read"),
    [(True, "always"), (False, "never"), ("if_better", "if_better"), ("never", "never")],
)
def test_auto_promote_reads_the_three_policies_and_the_older_booleans(
    written: object, read: str
) -> None:
    assert ScheduleParams.model_validate({"auto_promote": written}).auto_promote == read


def test_an_unknown_policy_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"never.*if_better.*always"):
        ScheduleParams.model_validate({"auto_promote": "sometimes"})
