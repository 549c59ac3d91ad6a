"""Builders shared by unit and integration tests: tiny ONNX models and ed25519 signatures of variants.

The tests folder is on pytest's ``pythonpath`` (pyproject), so any test imports ``builders``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from fleet.shared.modelspec import (
    METADATA_KEY,
    InputSpec,
    ModelSpec,
    OutputKind,
    OutputSpec,
    Task,
)
from fleet.shared.signature import ReleaseClaim

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


REGISTRY_KEY = Ed25519PrivateKey.generate()
"""The registry's signing key of tests that need one without caring which; a controller checks
the artifacts it is given against its public key (:func:`registry_key`)."""


def registry_key(folder: Path) -> Path:
    """:data:`REGISTRY_KEY`'s public key written into ``folder``, for a controller's settings."""
    path = folder / "registry.pub.pem"
    path.write_bytes(
        REGISTRY_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def release_of(version: str) -> int:
    """The release counter tests give ``version``: its digits ("v3" is 3), 1 without any."""
    digits = "".join(c for c in version if c.isdigit())
    return int(digits) if digits else 1


def sign(
    key: Ed25519PrivateKey,
    variant: str,
    data: bytes,
    *,
    model: str,
    version: str,
    release: int | None = None,
) -> str:
    """The base64 ed25519 signature of a variant's bytes as ``model`` ``version`` (release
    :func:`release_of` the version unless given), as the registry makes it."""
    claim = ReleaseClaim(
        model=model,
        version=version,
        variant=variant,
        sha256=hashlib.sha256(data).hexdigest(),
        release=release_of(version) if release is None else release,
    )
    return base64.b64encode(key.sign(claim.message())).decode()


def claim(
    key: Ed25519PrivateKey | None,
    variant: str,
    data: bytes,
    *,
    model: str,
    version: str,
    hardware_class: str,
    release: int | None = None,
) -> dict[str, str | int]:
    """The query of ``POST /v1/artifacts`` that registers ``data`` (sent as the body) as ``variant``
    of ``model`` ``version`` for ``hardware_class``: its sha256 and, unless ``key`` is None, the
    registry's signature (:func:`sign`)."""
    release = release_of(version) if release is None else release
    params: dict[str, str | int] = {
        "model": model,
        "version": version,
        "variant": variant,
        "hardware_class": hardware_class,
        "sha256": hashlib.sha256(data).hexdigest(),
        "release": release,
    }
    if key is not None:
        params["signature"] = sign(
            key, variant, data, model=model, version=version, release=release
        )
    return params


def make_serving_model_raise(slots: Any, monkeypatch: Any) -> None:
    """The serving onnxruntime session of ``slots`` (a ``SlotManager``) raises on every call, as a
    model that fails at run time does; requests that do not fit its contract are refused before."""

    def fail(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated onnxruntime failure")

    monkeypatch.setattr(slots._active.session, "run", fail)


# --- models with a contract (fleet.shared.modelspec) --------------------------------------------


def onnx_model(
    inputs: list[ValueInfoProto],
    nodes: list[NodeProto],
    outputs: list[ValueInfoProto],
    initialisers: list[TensorProto],
) -> ModelProto:
    graph = helper.make_graph(nodes, "model", inputs, outputs, initialisers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    return model


def weights_tensor(n_in: int, n_out: int) -> TensorProto:
    w = np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32) / 8
    return numpy_helper.from_array(w, "W")


def image_classifier(batch: str | int = "N", fixed_reshape: bool = False) -> ModelProto:
    """``input`` [batch, 1, 8, 8] -> Flatten (or a Reshape to [1, 64]) -> MatMul -> ``logits``."""
    if fixed_reshape:
        shape = numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape")
        flatten = helper.make_node("Reshape", ["input", "shape"], ["flat"])
        extra = [shape]
    else:
        flatten = helper.make_node("Flatten", ["input"], ["flat"], axis=1)
        extra = []
    return onnx_model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [flatten, helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [weights_tensor(64, 10), *extra],
    )


def two_inputs(n_a: int = 4, n_b: int = 60) -> ModelProto:
    """``a`` [N, n_a] and ``b`` [N, n_b] -> Concat -> MatMul -> Softmax -> probabilities."""
    return onnx_model(
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", n_a]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", n_b]),
        ],
        [
            helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
            helper.make_node("MatMul", ["ab", "W"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [weights_tensor(n_a + n_b, 10)],
    )


def with_contract(model: ModelProto, spec: ModelSpec) -> ModelProto:
    """``model`` with ``spec`` stored in its metadata, as the build side stores it."""
    model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    return model


def regressor(weights: np.ndarray, bias: float = 0.0) -> ModelProto:
    """``features`` [N, d] -> MatMul -> Add ``bias`` -> ``value`` [N, 1], with its regression
    contract stored (weights of shape [d, 1])."""
    d = weights.shape[0]
    model = onnx_model(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [
            helper.make_node("MatMul", ["features", "W"], ["raw"]),
            helper.make_node("Add", ["raw", "B"], ["value"]),
        ],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(weights.astype(np.float32).reshape(d, 1), "W"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "B"),
        ],
    )
    spec = ModelSpec(
        task=Task.REGRESSION,
        inputs=(InputSpec(name="features", shape=(d,)),),
        outputs=(OutputSpec(name="value", kind=OutputKind.REGRESSION, width=1),),
    )
    return with_contract(model, spec)
