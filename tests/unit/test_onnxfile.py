"""flows.onnxfile.check_model_file: what `edgeloop register` accepts as a model file, and the
contract (fleet.shared.modelspec) it derives from the graph."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import image_classifier, onnx_model, two_inputs, weights_tensor
from onnx import TensorProto, helper

from edgeloop.core.errors import ModelFileError
from fleet.shared.modelspec import OutputKind, read_spec
from fleet.shared.runtime import open_session, predict
from flows.datasets import DatasetSchema, sklearn_digits
from flows.model_contract import ContractOverrides, InputOverride
from flows.onnxfile import check_model_file


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return sklearn_digits().schema


def classifier(
    n_in: int = 64,
    n_out: int = 10,
    batch: str | int = "N",
    elem: int = TensorProto.FLOAT,
    softmax: bool = True,
    name: str = "features",
) -> onnx.ModelProto:
    """``name`` [batch, n_in] -> MatMul -> (Softmax ->) probabilities or logits [batch, n_out]."""
    nodes = []
    source = name
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [name], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    out = "probabilities" if softmax else "logits"
    nodes.append(helper.make_node("MatMul", [source, "W"], ["scores" if softmax else out]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], [out], axis=-1))
    return onnx_model(
        [helper.make_tensor_value_info(name, elem, [batch, n_in])],
        nodes,
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, n_out])],
        [weights_tensor(n_in, n_out)],
    )


def label_then_probabilities(zipmap: bool) -> onnx.ModelProto:
    """As skl2onnx converts a classifier: an int64 ``label`` first, then the probabilities, as a
    tensor or (``zipmap``) as a sequence of maps."""
    nodes = [
        helper.make_node("MatMul", ["float_input", "W"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probability_tensor"], axis=-1),
        helper.make_node("ArgMax", ["probability_tensor"], ["label"], axis=1, keepdims=0),
    ]
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap",
                ["probability_tensor"],
                ["output_probability"],
                domain="ai.onnx.ml",
                classlabels_int64s=list(range(10)),
            )
        )
        map_type = helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
        probabilities = helper.make_value_info(
            "output_probability", helper.make_sequence_type_proto(map_type)
        )
    else:
        probabilities = helper.make_tensor_value_info(
            "probability_tensor", TensorProto.FLOAT, ["N", 10]
        )
    return onnx_model(
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, ["N", 64])],
        nodes,
        [label, probabilities],
        [weights_tensor(64, 10)],
    )


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def check_fails(path: Path, schema: DatasetSchema, **kwargs: object) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        check_model_file(path, schema, **kwargs)  # type: ignore[arg-type]
    assert str(path) in info.value.message
    assert "\n" not in info.value.message and info.value.hint
    return info.value


def error_message(path: Path, schema: DatasetSchema, **kwargs: object) -> str:
    return check_fails(path, schema, **kwargs).message


def test_good_model_passes_with_its_contract(tmp_path: Path, schema: DatasetSchema) -> None:
    spec = check_model_file(save(classifier(), tmp_path / "good.onnx"), schema)
    assert [(i.name, i.dtype, i.shape) for i in spec.inputs] == [("features", "float32", (64,))]
    assert spec.scored.kind is OutputKind.PROBABILITIES and spec.scored.width == 10
    assert spec.class_names == tuple(str(c) for c in range(10))
    assert spec.inputs[0].value_range == (0.0, 16.0)


def test_missing_file(tmp_path: Path, schema: DatasetSchema) -> None:
    error = check_fails(tmp_path / "nope.onnx", schema)
    assert error.message == f"model file {tmp_path / 'nope.onnx'} does not exist"


def test_text_file_is_not_onnx(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("hello, I am a README and not a model\n")
    assert "is not an ONNX model" in error_message(path, schema)


def test_empty_file_is_not_onnx(tmp_path: Path, schema: DatasetSchema) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert error_message(path, schema) == f"{path} is not an ONNX model (empty graph)"


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_truncatedonnx_model(tmp_path: Path, schema: DatasetSchema, keep: float) -> None:
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


def test_wrong_feature_count(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(n_in=32), tmp_path / "in32.onnx")
    assert error_message(path, schema) == (
        f"{path}: its inputs take 32 values per sample (features float32[N, 32]) but dataset "
        "'sklearn-digits' has 64 features per row"
    )


def test_wrong_class_count(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(n_out=5), tmp_path / "out5.onnx")
    assert error_message(path, schema) == (
        f"{path}: the model's contract does not hold: 10 class names but output "
        "'probabilities' has 5 values per sample"
    )


def test_a_fixed_batch_of_one_is_made_dynamic(tmp_path: Path, schema: DatasetSchema) -> None:
    dest = tmp_path / "taken.onnx"
    check_model_file(save(classifier(batch=1), tmp_path / "fixed.onnx"), schema, dest=dest)
    session = open_session(str(dest))
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic now
    assert predict(session, np.zeros((5, 64))).shape == (5, 10)


def test_a_fixed_batch_the_graph_depends_on_says_how_to_export(
    tmp_path: Path, schema: DatasetSchema
) -> None:
    path = save(image_classifier(batch=1, fixed_reshape=True), tmp_path / "fixed.onnx")
    error = check_fails(path, schema)
    assert error.message.startswith(f"{path}: exported with a fixed batch of 1 (input, logits)")
    assert "dynamic_axes" in error.hint


def test_an_image_input_with_logits_out(tmp_path: Path, schema: DatasetSchema) -> None:
    dest = tmp_path / "taken.onnx"
    spec = check_model_file(save(image_classifier(), tmp_path / "cnn.onnx"), schema, dest=dest)
    (image,) = spec.inputs
    assert (image.name, image.shape, image.layout) == ("input", (1, 8, 8), "NCHW")
    assert (spec.scored.name, spec.scored.kind) == ("logits", OutputKind.LOGITS)
    session = open_session(str(dest))
    assert read_spec(session) == spec  # stored in the file
    rows = sklearn_digits().features[:3]
    probabilities = predict(session, rows)
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_two_inputs_take_one_row_in_order(tmp_path: Path, schema: DatasetSchema) -> None:
    dest = tmp_path / "taken.onnx"
    spec = check_model_file(save(two_inputs(), tmp_path / "two.onnx"), schema, dest=dest)
    assert [(i.name, i.shape) for i in spec.inputs] == [("a", (4,)), ("b", (60,))]
    rows = sklearn_digits().features[:2]
    feed = spec.feed(rows)
    assert np.array_equal(feed["a"], rows[:, :4]) and np.array_equal(feed["b"], rows[:, 4:])
    assert predict(open_session(str(dest)), rows).shape == (2, 10)


def test_two_inputs_that_do_not_add_up(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(two_inputs(4, 70), tmp_path / "two.onnx")
    assert "its inputs take 74 values per sample (a float32[N, 4], b float32[N, 70])" in (
        error_message(path, schema)
    )


def test_a_uint8_input_is_fed_rounded(tmp_path: Path, schema: DatasetSchema) -> None:
    spec = check_model_file(save(classifier(elem=TensorProto.UINT8), tmp_path / "u8.onnx"), schema)
    assert spec.inputs[0].dtype == "uint8" and spec.inputs[0].value_range == (0.0, 255.0)
    assert spec.feed(np.array([[1.6] * 64]))["features"].tolist() == [[2] * 64]


def test_an_unsupported_element_type(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(classifier(elem=TensorProto.BOOL), tmp_path / "bool.onnx")
    assert error_message(path, schema) == f"{path}: input 'features' has element type BOOL"


def test_skl2onnx_label_and_probability_tensor(tmp_path: Path, schema: DatasetSchema) -> None:
    spec = check_model_file(save(label_then_probabilities(False), tmp_path / "sk.onnx"), schema)
    assert [o.kind for o in spec.outputs] == [OutputKind.LABEL, OutputKind.PROBABILITIES]
    assert spec.scored.name == "probability_tensor"


def test_skl2onnx_zipmap_says_how_to_convert(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(label_then_probabilities(True), tmp_path / "zipmap.onnx")
    error = check_fails(path, schema)
    assert "output 'output_probability' is a sequence (skl2onnx's ZipMap)" in error.message
    assert "'zipmap': False" in error.hint


def test_the_contract_file_states_what_the_graph_cannot(
    tmp_path: Path, schema: DatasetSchema
) -> None:
    overrides = ContractOverrides(
        class_names=tuple(f"digit-{i}" for i in range(10)),
        inputs={"input": InputOverride(value_range=(0.0, 1.0))},
    )
    spec = check_model_file(save(image_classifier(), tmp_path / "cnn.onnx"), schema, overrides)
    assert spec.class_names is not None and spec.class_names[3] == "digit-3"
    assert spec.inputs[0].value_range == (0.0, 1.0)


def test_a_contract_that_names_what_the_graph_lacks(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(image_classifier(), tmp_path / "cnn.onnx")
    overrides = ContractOverrides(inputs={"features": InputOverride(layout="NCHW")})
    error = check_fails(path, schema, overrides=overrides)
    assert "the contract names 'features', which is not an input or output" in error.message
    assert "inputs input; outputs logits" in error.hint


def test_class_names_that_do_not_match_the_output(tmp_path: Path, schema: DatasetSchema) -> None:
    path = save(image_classifier(), tmp_path / "cnn.onnx")
    error = check_fails(path, schema, overrides=ContractOverrides(class_names=("a", "b", "c")))
    assert error.message.endswith("3 class names but output 'logits' has 10 values per sample")


def test_probabilities_that_are_not(tmp_path: Path, schema: DatasetSchema) -> None:
    """A contract that calls logits probabilities is caught by running the model."""
    path = save(classifier(softmax=False), tmp_path / "raw.onnx")
    overrides = ContractOverrides(outputs={"logits": OutputKind.PROBABILITIES})
    message = error_message(path, schema, overrides=overrides)
    assert "output 'logits' holds values outside [0, 1]: not probabilities" in message


def test_schema_decides_what_fits(tmp_path: Path) -> None:
    small = DatasetSchema("toy", tuple(f"f{i}" for i in range(32)), (0.0, 1.0), (0, 1, 2, 3, 4))
    spec = check_model_file(save(classifier(n_in=32, n_out=5), tmp_path / "toy.onnx"), small)
    assert spec.row_size == 32 and spec.scored.width == 5


def test_opset_imports_are_one_per_domain_with_the_default_declared(
    tmp_path: Path, schema: DatasetSchema
) -> None:
    """As skl2onnx can write them: the default domain twice (or not at all, for a graph of
    ai.onnx.ml operators only); onnxruntime's quantiser refuses both."""
    model = classifier()
    model.opset_import.add(domain="", version=17)
    model.opset_import.add(domain="ai.onnx.ml", version=3)
    dest = tmp_path / "taken.onnx"
    check_model_file(save(model, tmp_path / "twice.onnx"), schema, dest=dest)
    opsets = sorted((o.domain, o.version) for o in onnx.load(str(dest)).opset_import)
    assert opsets == [("", 17), ("ai.onnx.ml", 3)]
