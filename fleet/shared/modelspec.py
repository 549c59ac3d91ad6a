"""The model contract: what a model takes, what each of its outputs means, and for which task.

A :class:`ModelSpec` travels inside the model file, as the ONNX metadata entry :data:`METADATA_KEY`
(JSON), so every variant carries its own contract and the sha256 and signature that protect the
file protect the contract too. The build side derives it from the graph (``flows.modelspec``) and
writes it into every variant; everything that runs a model (the evaluation, the hardware suite, the
agent, the simulator) reads it back through :func:`read_spec` instead of assuming a name, a shape or
a task.

Data travels as flat rows: one sample is the concatenation of its inputs' values, flattened in
input order and C order (a ``[1, 8, 8]`` image is 64 values, two inputs ``[4]`` and ``[60]`` are the
first 4 and the next 60 values). :meth:`ModelSpec.feed` turns rows into the named tensors of the
graph, so a dataset, a golden set, a field sample and a drift summary keep one shape for every model.

A model file without the entry (one registered before the contract existed) reads as it always
did: its first input takes the rows as they are and its first output holds class probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

METADATA_KEY = "edgeloop.model_spec"

Dtype = Literal["float32", "float16", "float64", "uint8", "int8", "int32", "int64"]

ORT_DTYPES: dict[str, Dtype] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}
"""onnxruntime's type strings for the tensor types a contract can name."""

MAX_SAMPLE_VALUES = 1 << 22
"""At most this many values per sample (16 MB of float32): a bound on what a device is asked to hold."""

PROBABILITY_TOLERANCE = 1e-3
"""How far a probability may stray from [0, 1], and a row's sum from 1 (an int8 softmax rounds)."""


class Task(StrEnum):
    CLASSIFICATION = "classification"
    """Single-label: one class per sample, scored by its class probabilities."""
    REGRESSION = "regression"
    """One or more continuous values per sample."""


class OutputKind(StrEnum):
    """What the values of one output mean."""

    PROBABILITIES = "probabilities"
    """One row of class probabilities per sample (each row sums to 1)."""
    LOGITS = "logits"
    """One row of unnormalised class scores per sample; softmax gives the probabilities."""
    LABEL = "label"
    """The predicted class index per sample (skl2onnx's first output)."""
    REGRESSION = "regression"
    """One or more predicted values per sample."""


SCORED_KINDS = {
    Task.CLASSIFICATION: (OutputKind.PROBABILITIES, OutputKind.LOGITS),
    Task.REGRESSION: (OutputKind.REGRESSION,),
}


class InputSpec(BaseModel):
    """One named input; ``shape`` is one sample's, without the batch dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: Dtype = "float32"
    shape: tuple[int, ...] = Field(min_length=1)
    layout: Literal["NCHW", "NHWC"] | None = None
    value_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _sane(self) -> InputSpec:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"input {self.name!r}: every dimension must be at least 1")
        if self.size > MAX_SAMPLE_VALUES:
            raise ValueError(
                f"input {self.name!r}: {self.size} values per sample, more than {MAX_SAMPLE_VALUES}"
            )
        if self.layout is not None and len(self.shape) != 3:
            raise ValueError(
                f"input {self.name!r}: layout {self.layout} needs a [C, H, W]-like shape"
            )
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError(
                f"input {self.name!r}: value_range must be [low, high] with low < high"
            )
        return self

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        return f"{self.name} {self.dtype}[N, {', '.join(map(str, self.shape))}]"


class OutputSpec(BaseModel):
    """One named output; ``width`` is the values per sample (classes, or regression targets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: OutputKind
    width: int = Field(1, ge=1)


class ModelSpec(BaseModel):
    """The contract of one model; see the module docstring for how rows map to inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task
    inputs: tuple[InputSpec, ...] = Field(min_length=1)
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)
    class_names: tuple[str, ...] | None = None
    preprocessing: str = ""
    """What the graph does to raw input before the network (``uint8 / 255 in the graph``)."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [i.name for i in self.inputs] + [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("input and output names must be unique")
        scored = [o for o in self.outputs if o.kind in SCORED_KINDS[self.task]]
        if not scored:
            kinds = " or ".join(SCORED_KINDS[self.task])
            raise ValueError(f"a {self.task} model needs an output of kind {kinds}")
        if self.task is Task.CLASSIFICATION:
            if self.class_names is None:
                raise ValueError("a classification model needs its class names")
            if len(self.class_names) != scored[0].width:
                raise ValueError(
                    f"{len(self.class_names)} class names but output {scored[0].name!r} "
                    f"has {scored[0].width} values per sample"
                )
        elif self.class_names is not None:
            raise ValueError("a regression model has no class names")
        return self

    @property
    def scored(self) -> OutputSpec:
        """The output that is evaluated, gated and checked: the first one that holds scores."""
        return next(o for o in self.outputs if o.kind in SCORED_KINDS[self.task])

    @property
    def row_size(self) -> int:
        """Values in one flat row: every input's, in order."""
        return sum(i.size for i in self.inputs)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    def feed(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's named inputs for a batch of flat ``rows`` (n, :attr:`row_size`)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.row_size:
            raise ValueError(
                f"rows of shape {list(rows.shape)} do not fit this model: it takes "
                f"{self.row_size} values per sample ({', '.join(i.describe() for i in self.inputs)})"
            )
        feed: dict[str, np.ndarray] = {}
        start = 0
        for spec in self.inputs:
            part = rows[:, start : start + spec.size]
            start += spec.size
            dtype = np.dtype(spec.dtype)
            if np.issubdtype(dtype, np.integer) and not np.issubdtype(part.dtype, np.integer):
                info = np.iinfo(dtype)
                part = np.clip(np.rint(part), info.min, info.max)
            feed[spec.name] = np.ascontiguousarray(
                part.reshape(len(rows), *spec.shape), dtype=dtype
            )
        return feed

    def flatten(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The inverse of :meth:`feed`: named tensors (each ``[n, *shape]``) as float32 flat rows.

        Raises ``ValueError`` naming the input whose tensor is missing or has the wrong shape."""
        extra = sorted(set(tensors) - {i.name for i in self.inputs})
        if extra:
            raise ValueError(
                f"unknown input {extra[0]!r}: this model takes "
                + ", ".join(i.describe() for i in self.inputs)
            )
        parts = []
        n: int | None = None
        for spec in self.inputs:
            if spec.name not in tensors:
                raise ValueError(f"input {spec.name!r} is missing: expected {spec.describe()}")
            value = np.asarray(tensors[spec.name])
            if value.ndim != len(spec.shape) + 1 or tuple(value.shape[1:]) != spec.shape:
                raise ValueError(
                    f"input {spec.name!r}: expected shape [N, {', '.join(map(str, spec.shape))}], "
                    f"received {list(value.shape)}"
                )
            if n is not None and len(value) != n:
                raise ValueError(
                    f"input {spec.name!r} has {len(value)} samples, the other inputs {n}"
                )
            n = len(value)
            parts.append(value.reshape(n, -1).astype(np.float32))
        return np.concatenate(parts, axis=1)

    def scores(self, outputs: dict[str, Any]) -> np.ndarray:
        """What is evaluated from the graph's ``outputs`` (by name): class probabilities (softmax of
        logits) for classification, the predicted values for regression, as (n, width) float32."""
        raw = np.asarray(outputs[self.scored.name], dtype=np.float64)
        raw = raw.reshape(len(raw), -1)
        if self.scored.kind is OutputKind.LOGITS:
            exp = np.exp(raw - raw.max(axis=1, keepdims=True))
            raw = exp / exp.sum(axis=1, keepdims=True)
        return raw.astype(np.float32)

    def output_problem(self, values: np.ndarray, rows: int) -> str:
        """Why the scored output's raw ``values`` for ``rows`` samples are not a usable answer
        ('' when they are): wrong shape, not finite, or probabilities that are not probabilities."""
        out = self.scored
        expected = (rows, out.width)
        values = np.asarray(values)
        if values.ndim == 1 and out.width == 1:
            values = values.reshape(-1, 1)
        if values.shape != expected:
            return f"output {out.name!r} has shape {values.shape}, expected {expected}"
        if not np.issubdtype(values.dtype, np.floating):
            return f"output {out.name!r} has dtype {values.dtype}, not floating point"
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            return f"{bad} value(s) of output {out.name!r} are NaN or Inf"
        if out.kind is OutputKind.PROBABILITIES:
            if (values < -PROBABILITY_TOLERANCE).any() or (
                values > 1 + PROBABILITY_TOLERANCE
            ).any():
                return f"output {out.name!r} holds values outside [0, 1]: not probabilities"
            worst = float(np.abs(values.sum(axis=1) - 1).max())
            if worst > PROBABILITY_TOLERANCE:
                return f"rows of output {out.name!r} sum to values up to {worst:.4g} away from 1"
        return ""

    def summary(self) -> str:
        """One line: ``classification: input uint8[N, 1, 8, 8] → logits[10]``."""
        ins = ", ".join(i.describe() for i in self.inputs)
        return f"{self.task}: {ins} → {self.scored.name} ({self.scored.kind}, {self.scored.width})"


class _Port(Protocol):
    name: str
    type: str
    shape: list[Any]


class _Session(Protocol):
    def get_inputs(self) -> Sequence[Any]: ...
    def get_outputs(self) -> Sequence[Any]: ...
    def get_modelmeta(self) -> Any: ...


class ModelSpecError(ValueError):
    """The model file's contract is missing a part, unreadable, or contradicts its graph."""


def read_spec(session: _Session, *, classes: int | None = None) -> ModelSpec:
    """The contract stored in the model behind ``session``, checked against its graph; a file
    without one reads as a flat probabilities classifier (its first input and first output).

    ``classes`` gives the class count of such a legacy model when its output width is symbolic.
    Raises :class:`ModelSpecError` naming what does not fit."""
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if meta:
        try:
            spec = ModelSpec.model_validate_json(meta)
        except ValueError as exc:
            raise ModelSpecError(f"the model's stored contract is invalid: {exc}") from exc
        problem = graph_mismatch(spec, session.get_inputs(), session.get_outputs())
        if problem:
            raise ModelSpecError(f"the model's stored contract does not match its graph: {problem}")
        return spec
    return _legacy(session, classes)


def _legacy(session: _Session, classes: int | None) -> ModelSpec:
    first_in, first_out = session.get_inputs()[0], session.get_outputs()[0]
    width = first_in.shape[-1] if len(first_in.shape) == 2 else None
    if not isinstance(width, int) or width < 1:
        raise ModelSpecError(
            f"the model has no contract and its input {first_in.name!r} of shape {first_in.shape} "
            "is not [batch, n_features]"
        )
    out_width = first_out.shape[-1] if len(first_out.shape) == 2 else None
    n = out_width if isinstance(out_width, int) and out_width > 0 else classes
    if n is None:
        raise ModelSpecError(
            f"the model has no contract and its output {first_out.name!r} has no fixed width"
        )
    return ModelSpec(
        task=Task.CLASSIFICATION,
        inputs=(
            InputSpec(
                name=first_in.name, dtype=ORT_DTYPES.get(first_in.type, "float32"), shape=(width,)
            ),
        ),
        outputs=(OutputSpec(name=first_out.name, kind=OutputKind.PROBABILITIES, width=n),),
        class_names=tuple(str(i) for i in range(n)),
    )


def graph_mismatch(spec: ModelSpec, inputs: Sequence[_Port], outputs: Sequence[_Port]) -> str:
    """Where ``spec`` contradicts the graph's ports (onnxruntime's NodeArg: name, type, shape);
    '' when it does not. A symbolic dimension matches any size; the batch must be symbolic."""
    graph_inputs = {p.name: p for p in inputs}
    declared = {i.name for i in spec.inputs}
    unfed = sorted(set(graph_inputs) - declared)
    if unfed:
        return f"graph input {unfed[0]!r} is not in the contract"
    for want in spec.inputs:
        port = graph_inputs.get(want.name)
        if port is None:
            return f"input {want.name!r} is not in the graph (it has {sorted(graph_inputs)})"
        dtype = ORT_DTYPES.get(port.type)
        if dtype != want.dtype:
            return f"input {want.name!r} is {port.type} in the graph, {want.dtype} in the contract"
        if len(port.shape) != len(want.shape) + 1:
            return (
                f"input {want.name!r} has rank {len(port.shape)} in the graph, "
                f"{len(want.shape) + 1} in the contract (batch included)"
            )
        for got, expected in zip(port.shape[1:], want.shape, strict=True):
            if isinstance(got, int) and got != expected:
                return (
                    f"input {want.name!r} has shape {port.shape} in the graph, "
                    f"[N, {', '.join(map(str, want.shape))}] in the contract"
                )
    graph_outputs = {p.name: p for p in outputs}
    for out in spec.outputs:
        if out.name not in graph_outputs:
            return f"output {out.name!r} is not in the graph (it has {sorted(graph_outputs)})"
    scored = graph_outputs[spec.scored.name]
    if not scored.type.startswith("tensor("):
        return f"output {scored.name!r} is {scored.type}, not a tensor"
    return ""
