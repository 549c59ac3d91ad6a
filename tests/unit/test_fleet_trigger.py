"""flows.fleet_trigger: the field data's version and the lineage a fleet-triggered version records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from edgeloop.core.params import Params
from fleet.shared.admin_protocol import Alert
from flows.fleet_trigger import PulledFieldData, field_data_version, lineage, with_field_data


def test_the_field_data_version_follows_the_dvc_pointers(tmp_path: Path) -> None:
    assert field_data_version(tmp_path) == ("none", 0)
    (tmp_path / "field-20260101T000000Z-1-4.csv.dvc").write_text("outs:\n- md5: aaa\n")
    (tmp_path / "field-20260101T000000Z-1-4.csv").write_text("not hashed: its pointer is\n")
    first, count = field_data_version(tmp_path)
    assert first.startswith("fd-") and count == 1
    assert field_data_version(tmp_path) == (first, 1)
    (tmp_path / "field-20260102T000000Z-5-9.csv.dvc").write_text("outs:\n- md5: bbb\n")
    second, count = field_data_version(tmp_path)
    assert second != first and count == 2


def test_the_lineage_names_the_alert_and_the_field_data() -> None:
    now = datetime.now(UTC)
    alert = Alert(
        id=7, kind="input_drift", scope={"model": "m", "version": "1"}, value=0.4, threshold=0.25,
        reason="x" * 2000, status="open", occurrences=1, suppressed=0, opened_at=now,
        last_seen_at=now, closed_at=None,
    )  # fmt: skip
    pulled = PulledFieldData(
        new_file="field-a.csv", labelled=40, unlabelled=3, files=2, version="fd-1"
    )
    tags = lineage(alert, pulled)
    said = json.loads(tags["edgeloop.trigger.alert"])
    assert (said["id"], said["kind"], said["scope"]) == (7, "input_drift", alert.scope)
    assert len(said["reason"]) == 500
    assert tags["edgeloop.field_data.version"] == "fd-1"
    assert tags["edgeloop.field_data.pulled"] == (
        "40 new labelled field sample(s) in field-a.csv; 3 without a label, not trained on; "
        "field data fd-1 (2 file(s))"
    )
    assert (
        "no new labelled"
        in PulledFieldData(
            new_file=None, labelled=0, unlabelled=0, files=0, version="none"
        ).describe()
    )


def test_a_fleet_triggered_retrain_trains_on_the_field_data() -> None:
    params = Params()
    assert not params.data.include_field and with_field_data(params).data.include_field
