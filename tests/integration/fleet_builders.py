"""Builders for fleet tests against a real controller: tiny ONNX models, signed registration of a
variant, and pointing devices at a version the way a first deployment does."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import ADMIN_HEADERS

from fleet.agent.signature import file_sha256, signed_message
from fleet.controller import db, store

FEATURES, CLASSES = 64, 10


def write_model(path: Path, weights: np.ndarray) -> Path:
    """A one-MatMul ONNX model (``features`` [N, 64] → ``logits`` [N, 10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


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
