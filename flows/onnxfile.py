"""Checks on a model file trained elsewhere, before it enters the loop through `edgeloop register`.

Each failure names the file and what is wrong with it in one line: not ONNX at all, structurally
invalid, not loadable by onnxruntime, or an input or output that does not fit the dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgeloop.core.errors import ModelFileError
from flows.datasets import DatasetSchema


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_model_file(path: Path, schema: DatasetSchema) -> None:
    hint = (
        "export a float32 classifier with input [batch, n_features] and output [batch, n_classes]"
    )
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist", hint="check the path")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path} is not an ONNX model ({type(exc).__name__})", hint=hint
        ) from exc
    if not model.graph.node and not model.graph.input:
        raise ModelFileError(f"{path} is not an ONNX model (empty graph)", hint=hint)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(
            f"{path} is a corrupt or invalid ONNX model: {first}", hint=hint
        ) from exc
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelFileError(
            f"{path} has {len(inputs)} inputs; edgeloop needs exactly one", hint=hint
        )
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelFileError(f"{path}: input {inputs[0].name!r} is not float32", hint=hint)
    if len(dims) != 2 or dims[1] != schema.n_features:
        raise ModelFileError(
            f"{path}: input {inputs[0].name!r} has shape [{', '.join(map(str, dims))}] but dataset {schema.name!r} "
            f"has {schema.n_features} features per row",
            hint=hint,
        )
    if isinstance(dims[0], int) and dims[0] != 0:
        raise ModelFileError(
            f"{path}: input {inputs[0].name!r} has a fixed batch size {dims[0]}",
            hint="export with a dynamic batch dimension",
        )
    from fleet.shared.runtime import open_session, predict

    try:
        out = predict(open_session(str(path)), np.zeros((2, schema.n_features), dtype=np.float32))
    except Exception as exc:
        raise ModelFileError(
            f"onnxruntime cannot run {path}: {str(exc).splitlines()[0]}", hint=hint
        ) from exc
    if out.shape != (2, len(schema.classes)):
        raise ModelFileError(
            f"{path}: output has shape {list(out.shape)[1:]} per row but dataset {schema.name!r} "
            f"has {len(schema.classes)} classes",
            hint=hint,
        )
