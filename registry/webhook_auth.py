"""Verifying MLflow webhook deliveries before acting on them.

MLflow signs each delivery the Standard Webhooks way: header ``X-MLflow-Signature`` is
``v1,<base64 HMAC-SHA256>`` over ``<delivery id>.<timestamp>.<payload>`` with the webhook's secret,
where the delivery id and the Unix timestamp travel in ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp``. A delivery is accepted only when the signature matches, the timestamp is
within the tolerance of this clock (either way), and its delivery id was not accepted before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from registry.promotion_store import PromotionStore

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300.0


class WebhookRejected(Exception):
    """A delivery that must not be acted on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def sign(secret: str, delivery_id: str, timestamp: str, payload: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_delivery(
    headers: Mapping[str, str],
    payload: bytes,
    *,
    secret: str,
    store: PromotionStore,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """The delivery id of an authentic, fresh, first-seen delivery; else :class:`WebhookRejected`."""
    values = {h: headers.get(h) for h in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)}
    missing = [h for h, v in values.items() if not v]
    if missing:
        raise WebhookRejected(
            401, f"missing header(s) {', '.join(missing)}: not a signed MLflow webhook delivery"
        )
    delivery_id, timestamp, signature = (str(v) for v in values.values())
    expected = sign(secret, delivery_id, timestamp, payload)
    # as bytes: compare_digest refuses str with non-ASCII characters, which a header may carry
    if not any(
        hmac.compare_digest(expected.encode(), given.encode()) for given in signature.split()
    ):
        raise WebhookRejected(
            401, f"bad {SIGNATURE_HEADER}: the webhook's secret differs from this listener's"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(401, f"{TIMESTAMP_HEADER} {timestamp!r} is not a Unix time") from None
    skew = now - sent_at
    if abs(skew) > tolerance_s:
        when = "old" if skew > 0 else "in the future"
        raise WebhookRejected(
            401,
            f"stale delivery: timestamp is {abs(skew):.0f} s {when} (tolerance {tolerance_s:.0f} s); "
            "check the clocks of the MLflow server and this listener",
        )
    if not store.remember_delivery(delivery_id, now, keep_s=2 * tolerance_s):
        raise WebhookRejected(409, f"replayed delivery {delivery_id}: it was accepted before")
    return delivery_id
