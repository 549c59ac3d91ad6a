"""The schedule section of params.yaml: a bad cron expression or time zone fails at load, named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeloop.core.errors import ConfigError
from edgeloop.core.params import load_params
from edgeloop.core.schedule_params import ScheduleParams

REPO = Path(__file__).resolve().parents[2]


def _params_with(tmp_path: Path, **schedule: object) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["schedule"] = {**raw.get("schedule", {}), **schedule}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_have_a_valid_schedule() -> None:
    schedule = load_params(REPO / "params.yaml").schedule
    assert schedule.cron == "0 3 * * *" and schedule.auto_promote == "never"


def test_invalid_cron_expression_names_the_field_and_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(_params_with(tmp_path, cron="61 3 * * *"))
    assert "schedule.cron" in str(err.value) and "'61 3 * * *'" in str(err.value)


def test_cron_with_a_missing_field_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.cron.*'0 3 \* \*'"):
        load_params(_params_with(tmp_path, cron="0 3 * *"))


def test_unknown_time_zone_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.timezone.*'Mars/Olympus'"):
        load_params(_params_with(tmp_path, timezone="Mars/Olympus"))


def test_unknown_key_in_schedule_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.autopromote"):
        load_params(_params_with(tmp_path, autopromote=True))


def test_defaults_are_valid() -> None:
    assert ScheduleParams().timezone == "UTC"
