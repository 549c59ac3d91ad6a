"""Field samples on the controller (tmp SQLite): devices store labelled inputs on their own path only,
the store stays bounded per device, the admin pages by id; each bad input gets a clear 4xx."""

from __future__ import annotations

from typing import Any

from test_controller_builders import ADMIN_HEADERS, Fleet

from fleet.controller.storage import field_samples
from fleet.shared.protocol import MAX_FEATURES


def sample(i: int, label: int | None = 1, **extra: Any) -> dict[str, Any]:
    return {"model": "churn", "version": "1", "features": [float(i), 2.0], "predicted": 1,
            "label": label, **extra}  # fmt: skip


def post(fleet: Fleet, device: str, credential: str, samples: list[Any]) -> Any:
    return fleet.client.post(
        f"/v1/devices/{device}/field-samples",
        json={"samples": samples},
        headers={"Authorization": f"Bearer {credential}"},
    )


def test_samples_are_stored_and_paged_by_id(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-a")
    r = post(fleet, "dev-a", credential, [sample(i) for i in range(5)] + [sample(9, None)])
    assert r.status_code == 200 and r.json() == {"stored": 6, "dropped_oldest": 0}
    first = fleet.client.get("/v1/field-samples?limit=3", headers=ADMIN_HEADERS).json()
    assert [s["features"][0] for s in first["samples"]] == [0.0, 1.0, 2.0]
    assert first["samples"][0]["device_id"] == "dev-a"
    rest = fleet.client.get(
        f"/v1/field-samples?since={first['next_since']}", headers=ADMIN_HEADERS
    ).json()
    assert [s["features"][0] for s in rest["samples"]] == [3.0, 4.0]  # unlabelled left out
    every = fleet.client.get("/v1/field-samples?labelled_only=false", headers=ADMIN_HEADERS)
    assert len(every.json()["samples"]) == 6


def test_each_device_keeps_a_bounded_sample(fleet: Fleet, monkeypatch: Any) -> None:
    monkeypatch.setattr(field_samples, "MAX_PER_DEVICE", 4)
    credential = fleet.enrol("dev-a")
    assert post(fleet, "dev-a", credential, [sample(i) for i in range(3)]).json()["stored"] == 3
    r = post(fleet, "dev-a", credential, [sample(i) for i in range(3, 6)])
    assert r.json() == {"stored": 3, "dropped_oldest": 2}
    kept = fleet.client.get("/v1/field-samples", headers=ADMIN_HEADERS).json()["samples"]
    assert [s["features"][0] for s in kept] == [2.0, 3.0, 4.0, 5.0]


def test_a_device_may_not_post_for_another(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-a")
    fleet.enrol("dev-b")
    assert post(fleet, "dev-b", credential, [sample(1)]).status_code == 403
    assert post(fleet, "dev-a", "not-a-credential", [sample(1)]).status_code == 401


def test_non_finite_features_are_refused(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-a")
    r = fleet.client.post(
        "/v1/devices/dev-a/field-samples",
        content='{"samples": [{"model": "churn", "version": "1", "features": [NaN, 1.0]}]}',
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "finite number" in r.text


def test_empty_and_oversized_batches_are_refused(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-a")
    assert post(fleet, "dev-a", credential, []).status_code == 422
    assert post(fleet, "dev-a", credential, [sample(1)] * 1001).status_code == 422
    too_wide = sample(1, features=[1.0] * (MAX_FEATURES + 1))
    assert post(fleet, "dev-a", credential, [too_wide]).status_code == 422
    wide = sample(1, features=[1.0] * MAX_FEATURES)  # one fits; 17 exceed a batch's values
    assert post(fleet, "dev-a", credential, [wide]).status_code == 200
    too_much = post(fleet, "dev-a", credential, [wide] * 17)
    assert too_much.status_code == 422 and "send fewer samples per batch" in too_much.text


def test_listing_needs_the_admin_token_and_a_sane_page(fleet: Fleet) -> None:
    assert fleet.client.get("/v1/field-samples").status_code == 401
    r = fleet.client.get("/v1/field-samples?limit=100000", headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "limit" in r.text
    assert fleet.client.get("/v1/field-samples?since=-1", headers=ADMIN_HEADERS).status_code == 422


def test_a_cursor_no_database_column_holds_is_422_and_403_is_documented(fleet: Fleet) -> None:
    """``since`` above 2^63-1 was a 500 (OverflowError on SQLite, an out-of-range bigint on
    PostgreSQL); a device posting for another gets the 403 the document lists."""
    from test_controller_api import assert_as_documented

    r = fleet.client.get(f"/v1/field-samples?since={2**63}", headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "since" in r.text
    since = 2**63 - 1
    r = fleet.client.get(f"/v1/field-samples?since={since}", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json() == {"samples": [], "next_since": since}
    doc = fleet.client.get("/openapi.json").json()
    credential = fleet.enrol("dev-a")
    fleet.enrol("dev-b")
    r = post(fleet, "dev-b", credential, [sample(1)])
    assert r.status_code == 403
    assert_as_documented(doc, "/v1/devices/{device_id}/field-samples", "post", r)
