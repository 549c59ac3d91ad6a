"""The model contract on the build side: derived from an ONNX graph, completed by what the user
states, checked by running the model, and written into every variant's file.

The graph says the inputs (names, dtypes, shapes) and outputs; whether a float output holds
probabilities or logits is read from the node that produces it (a Softmax, or a name that says
``prob``); the task and the class names come from the dataset. What none of these can say (an input's
layout, its value range, an output's meaning) a small YAML beside the model states
(:class:`ContractOverrides`, ``edgeloop register --contract``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgeloop.core.errors import ModelFileError
from fleet.shared.modelspec import (
    METADATA_KEY,
    ORT_DTYPES,
    Dtype,
    InputSpec,
    ModelSpec,
    ModelSpecError,
    OutputKind,
    OutputSpec,
    Task,
)
from flows.datasets import DatasetSchema

_ONNX_DTYPES: dict[int, Dtype] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}
assert set(_ONNX_DTYPES.values()) == set(ORT_DTYPES.values())


class InputOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["NCHW", "NHWC"] | None = None
    value_range: tuple[float, float] | None = None


class ContractOverrides(BaseModel):
    """What the graph cannot say, by input and output name (a YAML file of this shape)::

    class_names: [zero, one, ...]
    inputs: {input: {layout: NCHW, value_range: [0, 255]}}
    outputs: {logits: logits}
    preprocessing: uint8 / 255 inside the graph
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task | None = None
    class_names: tuple[str, ...] | None = None
    inputs: dict[str, InputOverride] = {}
    outputs: dict[str, OutputKind] = {}
    preprocessing: str = ""

    @classmethod
    def load(cls, path: Path) -> ContractOverrides:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            first = str(exc).strip().splitlines()
            raise ModelFileError(
                f"model contract {path} is not valid: {' '.join(first[:3])}",
                hint="see `edgeloop register --help` for the keys a contract file takes",
            ) from exc


def _reason(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _guess_layout(shape: tuple[int, ...]) -> Literal["NCHW", "NHWC"] | None:
    if len(shape) != 3:
        return None
    if shape[0] in (1, 3, 4) and min(shape[1:]) > 4:
        return "NCHW"
    if shape[2] in (1, 3, 4) and min(shape[:2]) > 4:
        return "NHWC"
    return None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (initialisers listed as inputs by old exporters excluded)."""
    initialisers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initialisers]


def _input_spec(
    value: onnx.ValueInfoProto, schema: DatasetSchema, override: InputOverride | None
) -> InputSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelFileError(
            f"input {value.name!r} is a {kind}, not a tensor", hint="export tensor inputs only"
        )
    dtype = _ONNX_DTYPES.get(value.type.tensor_type.elem_type)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        raise ModelFileError(
            f"input {value.name!r} has element type {name}",
            hint=f"export it as one of {', '.join(sorted(set(_ONNX_DTYPES.values())))}",
        )
    dims = _dims(value)
    if len(dims) < 2:
        raise ModelFileError(
            f"input {value.name!r} has shape {dims}: edgeloop needs a batch dimension first",
            hint="export with an input of shape [batch, ...]",
        )
    sample = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise ModelFileError(
            f"input {value.name!r} has shape {dims}: only the batch (first) dimension may be "
            "symbolic",
            hint="export with fixed sizes for every dimension but the batch",
        )
    shape = tuple(int(d) for d in sample)
    override = override or InputOverride()
    value_range = override.value_range
    if value_range is None:
        value_range = (0.0, 255.0) if dtype == "uint8" else schema.value_range
    try:
        return InputSpec(
            name=value.name,
            dtype=dtype,
            shape=shape,
            layout=override.layout or _guess_layout(shape),
            value_range=value_range,
        )
    except ValidationError as exc:
        raise ModelFileError(
            f"input {value.name!r}: {_reason(exc)}", hint="fix the model or its contract"
        ) from exc


def _output_kind(
    value: onnx.ValueInfoProto, producer: str, task: Task, stated: OutputKind | None
) -> OutputKind:
    if stated is not None:
        return stated
    dtype = _ONNX_DTYPES.get(value.type.tensor_type.elem_type)
    if dtype is not None and dtype.startswith("int"):
        return OutputKind.LABEL
    if task is Task.REGRESSION:
        return OutputKind.REGRESSION
    if producer == "Softmax" or "prob" in value.name.lower():
        return OutputKind.PROBABILITIES
    return OutputKind.LOGITS


def _output_spec(
    value: onnx.ValueInfoProto,
    producer: str,
    task: Task,
    stated: OutputKind | None,
    width_hint: int | None,
) -> OutputSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        zipmap = producer == "ZipMap" or kind in ("sequence_type", "map_type")
        raise ModelFileError(
            f"output {value.name!r} is a {kind.replace('_type', '') if kind else 'non-tensor'}"
            + (" (skl2onnx's ZipMap)" if zipmap else "")
            + ", not a tensor",
            hint="convert with skl2onnx's options={id(model): {'zipmap': False}} so the "
            "probabilities are a tensor"
            if zipmap
            else "export tensor outputs only",
        )
    out_kind = _output_kind(value, producer, task, stated)
    dims = _dims(value)[1:]
    width: int | None = (
        math.prod(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
    )
    if out_kind is OutputKind.LABEL:
        width = 1
    if width is None:
        width = width_hint
    if width is None or width < 1:
        raise ModelFileError(
            f"output {value.name!r} has shape {_dims(value)} with no fixed width per sample",
            hint="export with a fixed number of output values",
        )
    return OutputSpec(name=value.name, kind=out_kind, width=width)


def derive_spec(
    model: onnx.ModelProto, schema: DatasetSchema, overrides: ContractOverrides | None = None
) -> ModelSpec:
    """The contract of ``model`` as trained on ``schema``'s data, with ``overrides`` applied.

    Raises :class:`ModelFileError` naming the input or output that does not fit."""
    overrides = overrides or ContractOverrides()
    task = overrides.task or Task(schema.task)
    inputs = graph_inputs(model)
    unknown = sorted(
        (set(overrides.inputs) - {i.name for i in inputs})
        | (set(overrides.outputs) - {o.name for o in model.graph.output})
    )
    if unknown:
        raise ModelFileError(
            f"the contract names {unknown[0]!r}, which is not an input or output of the graph",
            hint="use the graph's names: inputs "
            + ", ".join(i.name for i in inputs)
            + "; outputs "
            + ", ".join(o.name for o in model.graph.output),
        )
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    classes = len(overrides.class_names or schema.classes) if task is Task.CLASSIFICATION else None
    in_specs = tuple(_input_spec(i, schema, overrides.inputs.get(i.name)) for i in inputs)
    out_specs = tuple(
        _output_spec(o, producers.get(o.name, ""), task, overrides.outputs.get(o.name), classes)
        for o in model.graph.output
    )
    class_names = overrides.class_names
    if task is Task.CLASSIFICATION and class_names is None:
        class_names = tuple(str(c) for c in schema.classes)
    try:
        return ModelSpec(
            task=task,
            inputs=in_specs,
            outputs=out_specs,
            class_names=class_names if task is Task.CLASSIFICATION else None,
            preprocessing=overrides.preprocessing,
        )
    except ValidationError as exc:
        raise ModelFileError(
            f"the model's contract does not hold: {_reason(exc)}",
            hint="state the output's kind and the class names in a contract file "
            "(`edgeloop register --contract`)",
        ) from exc


def make_batch_dynamic(model: onnx.ModelProto) -> list[str]:
    """Give every input and output with a fixed batch of 1 a symbolic batch instead; returns the
    names changed (the caller runs the model with a batch of 2 to see whether that holds)."""
    changed = []
    for value in [*graph_inputs(model), *model.graph.output]:
        if value.type.WhichOneof("value") != "tensor_type":
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
            changed.append(value.name)
    return changed


def write_spec(path: Path, spec: ModelSpec) -> None:
    """Store ``spec`` in the model file's metadata (replacing any earlier one), in place."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    onnx.save(model, str(path))


def read_file_spec(path: Path) -> ModelSpec:
    """The contract stored in the model at ``path``, checked against its graph."""
    from fleet.shared.modelspec import read_spec
    from fleet.shared.runtime import open_session

    try:
        return read_spec(open_session(str(path)))
    except ModelSpecError as exc:
        raise ModelFileError(f"{path}: {exc}", hint="register the model again") from exc


def check_runs(path: Path, spec: ModelSpec, rows: int = 2) -> str:
    """Why the model at ``path`` does not answer ``rows`` samples as its contract says ('' when it
    does), running it on inputs drawn inside each input's value range."""
    from fleet.shared.runtime import open_session, scored_output

    rng = np.random.default_rng(0)
    parts = []
    for spec_in in spec.inputs:
        low, high = spec_in.value_range or (0.0, 1.0)
        parts.append(rng.uniform(low, high, size=(rows, spec_in.size)))
    sample = np.concatenate(parts, axis=1)
    try:
        raw = scored_output(open_session(str(path)), sample, spec)
    except Exception as exc:
        return f"onnxruntime cannot run it on a batch of {rows}: {str(exc).splitlines()[0]}"
    return spec.output_problem(raw, rows)
