"""flows.onnxfile.check_model_file: what `edgeloop register` accepts as a model file."""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.core.errors import ModelFileError
from flows.datasets import DatasetSchema, sklearn_digits
from flows.onnxfile import check_model_file


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return sklearn_digits().schema


def classifier(
    n_in: int = 64,
    n_out: int = 10,
    batch: str | int = "N",
    elem: int = TensorProto.FLOAT,
    extra_input: bool = False,
) -> onnx.ModelProto:
    """features [batch, n_in] -> MatMul -> Softmax -> probabilities [batch, n_out]."""
    weights = np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("features", elem, [batch, n_in])]
    nodes = []
    source = "features"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["features"], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes += [
        helper.make_node("MatMul", [source, "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, n_out]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        inputs,
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, n_out])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def check_fails(path: Path, schema: DatasetSchema) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        check_model_file(path, schema)
    assert str(path) in info.value.message
    return info.value


def test_good_model_passes(tmp_path: Path, schema: DatasetSchema) -> None:
    assert check_model_file(save(classifier(), tmp_path / "good.onnx"), schema) is None


def test_missing_file(tmp_path: Path, schema: DatasetSchema) -> None:
    error = check_fails(tmp_path / "nope.onnx", schema)
    assert error.message == f"model file {tmp_path / 'nope.onnx'} does not exist"


def test_text_file_is_not_onnx(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("hello, I am a README and not a model\n")
    error = check_fails(path, schema)
    assert "is not an ONNX model" in error.message
    assert "[batch, n_features]" in error.hint


def test_empty_file_is_not_onnx(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert error_message(path, schema) == f"{path} is not an ONNX model (empty graph)"


def error_message(path: Path, schema: DatasetSchema) -> str:
    return check_fails(path, schema).message


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_truncated_model(tmp_path: Path, schema: DatasetSchema, keep: float) -> None:
    blob = save(classifier(), tmp_path / "good.onnx").read_bytes()
    cut = len(blob) - 1 if keep == -1 else int(len(blob) * keep)
    path = tmp_path / "truncated.onnx"
    path.write_bytes(blob[:cut])
    message = error_message(path, schema)
    assert "is not an ONNX model" in message or "corrupt or invalid" in message


def test_invalid_graph_is_corrupt(tmp_path: Path, schema: DatasetSchema) -> None:
    model = classifier()
    model.graph.node[0].input[1] = "no_such_tensor"
    message = error_message(save(model, tmp_path / "bad.onnx"), schema)
    assert "is a corrupt or invalid ONNX model:" in message
    assert "\n" not in message


def test_wrong_feature_count(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(n_in=32), tmp_path / "in32.onnx")
    message = error_message(path, schema)
    assert message.startswith(f"{path}: input 'features' has shape ")
    # The symbolic batch dimension may be quoted or not; the feature count must be there.
    assert re.search(r"has shape \['?N'?, 32\]", message), message
    assert message.endswith("but dataset 'sklearn-digits' has 64 features per row")


def test_wrong_class_count(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(n_out=5), tmp_path / "out5.onnx")
    assert error_message(path, schema) == (
        f"{path}: output has shape [5] per row but dataset 'sklearn-digits' has 10 classes"
    )


def test_fixed_batch_size(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(batch=1), tmp_path / "fixed.onnx")
    error = check_fails(path, schema)
    assert error.message == f"{path}: input 'features' has a fixed batch size 1"
    assert error.hint == "export with a dynamic batch dimension"


def test_two_inputs(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(extra_input=True), tmp_path / "two.onnx")
    assert error_message(path, schema) == f"{path} has 2 inputs; edgeloop needs exactly one"


def test_non_float_input(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(elem=TensorProto.DOUBLE), tmp_path / "double.onnx")
    assert error_message(path, schema) == f"{path}: input 'features' is not float32"


def test_schema_decides_what_fits(tmp_path: Path) -> None:
    small = DatasetSchema("toy", tuple(f"f{i}" for i in range(32)), (0.0, 1.0), (0, 1, 2, 3, 4))
    assert (
        check_model_file(save(classifier(n_in=32, n_out=5), tmp_path / "toy.onnx"), small) is None
    )
