"""Compression: ONNX export, then int8 variants with onnxruntime's quantisation tools.

Variants of one version: ``fp32`` (the export), ``int8-dynamic`` (weights int8, activations quantised at
run time), ``int8-static`` (QDQ, activations calibrated on training rows) and ``pruned-int8`` (hidden
units pruned and fine-tuned, then int8 static; only for models trained here). Each is one file; its
sha256 and size are recorded here, its signature by the registry.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fleet.shared.modelspec import ModelSpec, Task
from fleet.shared.signature import file_sha256
from flows.datasets import DatasetSchema
from flows.model_contract import ContractOverrides, derive_spec, write_spec
from flows.models import Classifier, Probabilities, Values

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "pruned-int8")


@dataclass(frozen=True)
class Variant:
    """One compressed ONNX file of a version."""

    name: str
    path: Path
    sha256: str
    size_bytes: int


def describe(name: str, path: Path) -> Variant:
    return Variant(name=name, path=path, sha256=file_sha256(path), size_bytes=path.stat().st_size)


def export_onnx(model: Classifier, schema: DatasetSchema, path: Path, opset: int) -> ModelSpec:
    """Export raw input → class probabilities (a regressor: predicted values in the target's
    units), with a dynamic batch dimension, as one file with its contract stored in it; returns
    the contract."""
    path.parent.mkdir(parents=True, exist_ok=True)
    regression = schema.task == "regression"
    wrapper = (Values(model) if regression else Probabilities(model)).eval()
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports its progress with print() and INFO logs; keep the CLI's display clean.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    dtype = torch.uint8 if schema.input_dtype == "uint8" else torch.float32
    program = torch.onnx.export(
        wrapper,
        (torch.zeros(2, *schema.sample_shape, dtype=dtype),),
        input_names=["image" if schema.input_shape else INPUT_NAME],
        output_names=["prediction" if regression else OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)
    low, high = schema.value_range
    overrides = ContractOverrides(
        task=Task.REGRESSION if regression else Task.CLASSIFICATION,
        preprocessing=f"{schema.input_dtype} input, scaled from [{low:g}, {high:g}] to [0, 1] "
        "inside the graph",
    )
    spec = derive_spec(onnx.load(str(path)), schema, overrides)
    write_spec(path, spec)
    return spec


class _Calibration(CalibrationDataReader):
    """Calibration samples one at a time, every input fed by name as the contract says."""

    def __init__(self, rows: np.ndarray, spec: ModelSpec) -> None:
        self._rows = iter(rows)
        self._spec = spec

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else self._spec.feed(row[None, :])


def _prepared(src: Path, tmp: Path) -> Path:
    """Shapes inferred and ops fused, as onnxruntime recommends before quantising."""
    prepared = tmp / f"{src.stem}.prepared.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    return prepared


def quantise_static(src: Path, dst: Path, calibration: np.ndarray, spec: ModelSpec) -> Path:
    """QDQ int8: weights int8 per tensor, activations uint8 calibrated on ``calibration`` rows.

    Softmax stays in float: quantising its output to uint8 makes the probabilities of a row sum to 1
    only within about 1e-2, which the hardware suite's sanity check rightly rejects.
    """
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(src, Path(tmp))
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            prepared,
            dst,
            _Calibration(calibration, spec),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            nodes_to_exclude=softmax,
        )
    write_spec(dst, spec)
    return dst


def quantise(
    fp32: Path, out_dir: Path, calibration: np.ndarray, spec: ModelSpec
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write the int8 variants of ``fp32`` into ``out_dir``, each with ``spec`` stored in it.

    Returns every built variant's path by name, and why a variant was not built: onnxruntime's
    quantiser refuses some graphs a user brings (operators it cannot handle), and the version is
    still registered with the variants that could be built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {"fp32": fp32}
    skipped: dict[str, str] = {}

    def dynamic(target: Path) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            quantize_dynamic(_prepared(fp32, Path(tmp)), target, weight_type=QuantType.QInt8)
        write_spec(target, spec)
        return target

    steps = {
        "int8-dynamic": dynamic,
        "int8-static": lambda target: quantise_static(fp32, target, calibration, spec),
    }
    for name, build in steps.items():
        target = out_dir / f"{name}.onnx"
        try:
            built[name] = build(target)
        except Exception as exc:  # onnxruntime.quantization raises plain exceptions
            target.unlink(missing_ok=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            skipped[name] = f"onnxruntime's quantiser failed: {first[:300]}"
    return built, skipped
