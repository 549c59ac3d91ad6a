"""Checks on a model file trained elsewhere, before it enters the loop through `edgeloop register`.

Each failure names the file and what is wrong with it in one line: not ONNX at all, structurally
invalid, not loadable by onnxruntime, or an input or output that does not fit the dataset or the
model contract (``flows.model_contract``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgeloop.core.errors import ModelFileError
from fleet.shared.modelspec import ModelSpec
from flows.datasets import DatasetSchema
from flows.model_contract import (
    ContractOverrides,
    check_runs,
    derive_spec,
    make_batch_dynamic,
    write_spec,
)

DEFAULT_OPSET = 17


def _one_opset_per_domain(model: onnx.ModelProto) -> None:
    """One opset import per domain, the default one declared: skl2onnx can write the default
    domain twice, or leave it out of a graph of ai.onnx.ml operators, and onnxruntime's quantiser
    then refuses the model ("Failed to find proper ai.onnx domain")."""
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        versions[domain] = max(versions.get(domain, 0), opset.version)
    versions.setdefault("", DEFAULT_OPSET)
    del model.opset_import[:]
    for domain, version in versions.items():
        model.opset_import.add(domain=domain, version=version)


def check_model_file(
    path: Path,
    schema: DatasetSchema,
    overrides: ContractOverrides | None = None,
    dest: Path | None = None,
) -> ModelSpec:
    """Check ``path`` as a model of ``schema``'s data and derive its contract; with ``dest``, write
    the model there as the loop takes it (batch made dynamic where it was a fixed 1, contract stored).

    Raises :class:`ModelFileError` with one line naming the file and the input or output at fault.
    """
    hint = "export an ONNX model whose inputs take one dataset row per sample (see the README)"
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
    _one_opset_per_domain(model)
    made_dynamic = make_batch_dynamic(model)
    try:
        spec = derive_spec(model, schema, overrides)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc.message}", hint=exc.hint) from exc
    if spec.row_size != schema.n_features:
        raise ModelFileError(
            f"{path}: its inputs take {spec.row_size} values per sample "
            f"({', '.join(i.describe() for i in spec.inputs)}) but dataset {schema.name!r} has "
            f"{schema.n_features} features per row",
            hint="export inputs whose sizes add up to one dataset row",
        )
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        onnx.save(model, str(staged))
        write_spec(staged, spec)
        problem = check_runs(staged, spec)
        if problem:
            if made_dynamic:
                raise ModelFileError(
                    f"{path}: exported with a fixed batch of 1 ({', '.join(made_dynamic)}) and it "
                    f"does not run on a batch of 2 once made dynamic: {problem}",
                    hint="export with a dynamic batch (torch.onnx.export(..., dynamic_axes="
                    "{name: {0: 'batch'}}) or dynamic_shapes)",
                )
            raise ModelFileError(f"{path}: {problem}", hint=hint)
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged, dest)
    return spec
