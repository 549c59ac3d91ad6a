"""Compression: ONNX export, then int8 variants with onnxruntime's quantisation tools.

Variants of one version: ``fp32`` (the export), ``int8-dynamic`` (weights int8, activations quantised at
run time) and ``int8-static`` (QDQ, activations calibrated on training rows). Each is one file; its
sha256 and size are recorded here, its signature by the registry.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fleet.agent.signature import file_sha256
from flows.models import Classifier, Probabilities

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
VARIANTS = ("fp32", "int8-dynamic", "int8-static")


@dataclass(frozen=True)
class Variant:
    """One compressed ONNX file of a version."""

    name: str
    path: Path
    sha256: str
    size_bytes: int


def describe(name: str, path: Path) -> Variant:
    return Variant(name=name, path=path, sha256=file_sha256(path), size_bytes=path.stat().st_size)


def export_onnx(model: Classifier, n_features: int, path: Path, opset: int) -> Path:
    """Export raw features → class probabilities, with a dynamic batch dimension, as one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Probabilities(model).eval()
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports its progress with print() and INFO logs; keep the CLI's display clean.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    program = torch.onnx.export(
        wrapper,
        (torch.zeros(2, n_features),),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)
    return path


class _Calibration(CalibrationDataReader):
    def __init__(self, rows: np.ndarray) -> None:
        self._rows = iter(rows.astype(np.float32))

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {INPUT_NAME: row[None, :]}


def quantise(fp32: Path, out_dir: Path, calibration: np.ndarray) -> dict[str, Path]:
    """Write the int8 variants next to ``fp32``; return every variant's path by name.

    Both quantisers start from the same pre-processed graph (shapes inferred, ops fused), as
    onnxruntime recommends.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dynamic = out_dir / "int8-dynamic.onnx"
    static = out_dir / "int8-static.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(prepared, dynamic, weight_type=QuantType.QInt8)
        quantize_static(
            prepared,
            static,
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    return {"fp32": fp32, "int8-dynamic": dynamic, "int8-static": static}
