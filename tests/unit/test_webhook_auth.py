"""registry.webhook_auth: MLflow's signature scheme, stale timestamps and replayed deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from registry.promotion_store import PromotionStore
from registry.webhook_auth import WebhookRejected, verify_delivery

SECRET = "s3cret"
NOW = 1_800_000_000
BODY = b'{"entity": "model_version_alias", "action": "created", "data": {}}'


def headers(delivery_id: str = "d-1", timestamp: int = NOW, secret: str = SECRET) -> dict[str, str]:
    """Signed exactly as MLflow's own delivery code signs them."""
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": _generate_hmac_signature(
            secret, delivery_id, str(timestamp), BODY.decode()
        ),
    }


@pytest.fixture
def store(tmp_path: Path) -> PromotionStore:
    return PromotionStore(tmp_path / "promotions.db")


def verify(
    store: PromotionStore, hdrs: dict[str, str], now: float = NOW, body: bytes = BODY
) -> str:
    return verify_delivery(hdrs, body, secret=SECRET, store=store, now=now, tolerance_s=300)


def test_a_delivery_signed_by_mlflow_is_accepted(store: PromotionStore) -> None:
    assert verify(store, headers()) == "d-1"


def test_a_wrong_secret_is_refused(store: PromotionStore) -> None:
    with pytest.raises(WebhookRejected, match="bad X-MLflow-Signature") as exc:
        verify(store, headers(secret="other"))
    assert exc.value.status == 401


def test_a_tampered_payload_is_refused(store: PromotionStore) -> None:
    with pytest.raises(WebhookRejected, match="bad X-MLflow-Signature"):
        verify(store, headers(), body=BODY.replace(b"created", b"deleted"))


def test_a_missing_signature_is_refused(store: PromotionStore) -> None:
    hdrs = headers()
    del hdrs["X-MLflow-Signature"]
    with pytest.raises(WebhookRejected, match=r"missing header.*X-MLflow-Signature") as exc:
        verify(store, hdrs)
    assert exc.value.status == 401


def test_a_stale_timestamp_is_refused(store: PromotionStore) -> None:
    with pytest.raises(WebhookRejected, match="stale delivery: timestamp is 301 s old") as exc:
        verify(store, headers(timestamp=NOW - 301))
    assert exc.value.status == 401
    assert verify(store, headers(delivery_id="d-2", timestamp=NOW - 299)) == "d-2"


def test_a_future_timestamp_is_refused(store: PromotionStore) -> None:
    with pytest.raises(WebhookRejected, match="stale delivery: timestamp is 600 s in the future"):
        verify(store, headers(timestamp=NOW + 600))


def test_a_replayed_delivery_is_refused(store: PromotionStore) -> None:
    verify(store, headers())
    with pytest.raises(WebhookRejected, match="replayed delivery d-1") as exc:
        verify(store, headers(), now=NOW + 5)
    assert exc.value.status == 409


def test_replay_memory_survives_a_restart(tmp_path: Path) -> None:
    verify(PromotionStore(tmp_path / "promotions.db"), headers())
    restarted = PromotionStore(tmp_path / "promotions.db")
    with pytest.raises(WebhookRejected, match="replayed"):
        verify(restarted, headers(), now=NOW + 5)


def test_replay_memory_stays_bounded(store: PromotionStore) -> None:
    verify(store, headers(delivery_id="old"))
    verify(store, headers(delivery_id="new", timestamp=NOW + 1000), now=NOW + 1000)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT delivery_id FROM deliveries")]
    assert ids == ["new"]  # "old" could only come back stale, so it is no longer kept
