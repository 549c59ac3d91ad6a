"""Builders for fleet tests against a real controller: signed registration of a variant, and
pointing devices at a version the way a first deployment does (models: ``builders``)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import ADMIN_HEADERS

from fleet.controller.storage import db, store
from fleet.shared.signature import file_sha256, signed_message


def register(
    client: httpx.Client,
    key: Ed25519PrivateKey,
    version: str,
    cls: str,
    path: Path,
    model: str = "digits",
) -> None:
    """Register ``path`` as the signed variant of ``model`` ``version`` for class ``cls``."""
    variant = f"{cls}-fp32"
    signature = base64.b64encode(key.sign(signed_message(variant, file_sha256(path))))
    r = client.post(
        "/v1/artifacts",
        json={
            "model": model,
            "version": version,
            "variant": variant,
            "hardware_class": cls,
            "path": str(path),
            "signature": signature.decode(),
        },
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 200, r.text


def target_all(db_url: str, device_ids: list[str], version: str, model: str = "digits") -> None:
    """What an operator's first deployment does: point every device at ``version`` (no rollout)."""
    engine = db.make_engine(db_url)
    try:
        with db.make_sessionmaker(engine)() as session:
            store.target_devices(
                session, device_ids, model=model, version=version, rollout_id=None,
                now=datetime.now(UTC),
            )  # fmt: skip
            session.commit()
    finally:
        engine.dispose()
