"""Deliberately worse variants of a model, for demos and tests of the rollout gates.

``make_regressed_variant`` rewrites an ONNX graph around its first output, keeping the input and
output names, types and shapes, so the result installs and passes an agent's smoke test exactly like
the original: only the field data shows the difference.

- ``accuracy``: for a deterministic ``share`` of the inputs (chosen by a hash of the input row, so
  the same row always gets the same answer) the output classes are rotated by one, so those rows are
  predicted wrongly whenever the original was right.
- ``latency``: a chain of ``layers`` dense ``width`` x ``width`` MatMuls with Tanh (bounded, so never
  NaN) is computed from the input and added to the output times zero: the answer is unchanged, the
  cost per row grows by about ``2 * layers * width**2`` flops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_GOLDEN = 0.6180339887


def _dim(value_info: onnx.ValueInfoProto, index: int) -> int | None:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) <= index or not dims[index].HasField("dim_value"):
        return None
    return int(dims[index].dim_value)


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]


def make_regressed_variant(
    src_onnx: Path,
    dst_onnx: Path,
    kind: Literal["accuracy", "latency"] = "accuracy",
    *,
    share: float = 0.5,
    layers: int = 8,
    width: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a worse copy of ``src_onnx`` to ``dst_onnx``; see the module docstring."""
    if kind not in ("accuracy", "latency"):
        raise ValueError(f"kind must be 'accuracy' or 'latency', got {kind!r}")
    model = onnx.load(str(src_onnx))
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    x_info = next(i for i in graph.input if i.name not in initialisers)
    y_info = graph.output[0]
    y = y_info.name
    if y_info.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"the first output {y!r} must be float scores, one column per class")
    features = _dim(x_info, 1)
    classes = _dim(y_info, 1)
    if features is None or classes is None:
        raise ValueError("the input and the first output need a fixed second dimension")
    inner = f"{y}__original"
    _rename_output(graph, y, inner)
    x = x_info.name
    x_float = x
    nodes: list[onnx.NodeProto] = []
    if x_info.type.tensor_type.elem_type != TensorProto.FLOAT:
        x_float = "regress__x"
        nodes.append(helper.make_node("Cast", [x], [x_float], to=TensorProto.FLOAT))
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    if kind == "accuracy":
        perm = np.roll(np.arange(classes, dtype=np.int64), -1)
        inits += [
            numpy_helper.from_array(np.ones((features, 1), np.float32), "regress__ones"),
            numpy_helper.from_array(np.array(_GOLDEN, np.float32), "regress__golden"),
            numpy_helper.from_array(np.array(1.0, np.float32), "regress__one"),
            numpy_helper.from_array(np.array(share, np.float32), "regress__share"),
            numpy_helper.from_array(perm, "regress__perm"),
        ]
        nodes += [
            helper.make_node("MatMul", [x_float, "regress__ones"], ["regress__sum"]),
            helper.make_node("Mul", ["regress__sum", "regress__golden"], ["regress__scaled"]),
            helper.make_node("Abs", ["regress__scaled"], ["regress__abs"]),
            helper.make_node("Mod", ["regress__abs", "regress__one"], ["regress__frac"], fmod=1),
            helper.make_node("Less", ["regress__frac", "regress__share"], ["regress__hit"]),
            helper.make_node("Gather", [inner, "regress__perm"], ["regress__rotated"], axis=1),
            helper.make_node("Where", ["regress__hit", "regress__rotated", inner], [y]),
        ]
    else:
        scale = 1.0 / np.sqrt(width)
        inits.append(
            numpy_helper.from_array(
                rng.normal(0, 1 / np.sqrt(features), (features, width)).astype(np.float32),
                "regress__w0",
            )
        )
        nodes.append(helper.make_node("MatMul", [x_float, "regress__w0"], ["regress__h0"]))
        nodes.append(helper.make_node("Tanh", ["regress__h0"], ["regress__t0"]))
        for i in range(1, layers + 1):
            w = rng.normal(0, scale, (width, width)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"regress__w{i}"))
            nodes.append(
                helper.make_node(
                    "MatMul", [f"regress__t{i - 1}", f"regress__w{i}"], [f"regress__h{i}"]
                )
            )
            nodes.append(helper.make_node("Tanh", [f"regress__h{i}"], [f"regress__t{i}"]))
        inits += [
            numpy_helper.from_array(np.zeros((width, 1), np.float32), "regress__zero"),
        ]
        nodes += [
            helper.make_node("MatMul", [f"regress__t{layers}", "regress__zero"], ["regress__nil"]),
            helper.make_node("Add", [inner, "regress__nil"], [y]),
        ]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    dst_onnx = Path(dst_onnx)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst_onnx))
    return dst_onnx
