"""Builders shared by unit and integration tests: tiny ONNX models and ed25519 signatures of variants.

The tests folder is on pytest's ``pythonpath`` (pyproject), so any test imports ``builders``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import ModelProto, TensorProto, helper, numpy_helper

from fleet.shared.signature import signed_message

FEATURES, CLASSES = 64, 10


def tiny_model(weights: np.ndarray, *, softmax: bool = True) -> ModelProto:
    """``features`` [N, 64] → MatMul → (Softmax →) [N, outputs] (``probabilities`` or ``logits``)."""
    outputs = int(weights.shape[1])
    nodes = [helper.make_node("MatMul", ["features", "W"], ["logits"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info(
                "probabilities" if softmax else "logits", TensorProto.FLOAT, ["N", outputs]
            )
        ],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def model_bytes(seed: int) -> bytes:
    """A softmax model with random weights from ``seed``, serialised."""
    weights = np.random.default_rng(seed).standard_normal((FEATURES, CLASSES))
    return bytes(tiny_model(weights).SerializeToString())


def write_model(path: Path, weights: np.ndarray, *, softmax: bool = False) -> Path:
    """Save a tiny model with these weights (logits by default) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_model(weights, softmax=softmax).SerializeToString())
    return path


def sign(key: Ed25519PrivateKey, variant: str, data: bytes) -> str:
    """The base64 ed25519 signature of a variant's bytes, as the registry makes it."""
    message = signed_message(variant, hashlib.sha256(data).hexdigest())
    return base64.b64encode(key.sign(message)).decode()


def make_serving_model_raise(slots: Any, monkeypatch: Any) -> None:
    """The serving onnxruntime session of ``slots`` (a ``SlotManager``) raises on every call, as a
    model that fails at run time does; requests that do not fit its contract are refused before."""

    def fail(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated onnxruntime failure")

    monkeypatch.setattr(slots._active.session, "run", fail)
