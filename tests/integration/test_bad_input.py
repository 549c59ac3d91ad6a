"""Bad input through the real CLI: one line naming the problem, a non-zero exit, nothing registered."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def classifier(path: Path, n_features: int = 64, n_classes: int = 10) -> Path:
    weights = helper.make_tensor(
        "W", TensorProto.FLOAT, [n_features, n_classes], [0.01] * (n_features * n_classes)
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_broken_params_yaml(project: Project) -> None:
    (project.root / "params.yaml").write_text("training:\n  epochs: [3\n")
    assert_one_line_failure(project.edgeloop("run"), "params.yaml is not valid YAML", "line")
    assert project.version_count() == 0


def test_misspelled_param(project: Project) -> None:
    project.set_params(training={"epocs": 3})
    assert_one_line_failure(project.edgeloop("run"), "training.epocs", "Extra inputs")


def test_unknown_dataset_name(project: Project) -> None:
    project.set_params(data={"loader": "mnist-fashion"})
    assert_one_line_failure(
        project.edgeloop("run"), "unknown dataset loader 'mnist-fashion'", "sklearn-digits"
    )
    assert project.version_count() == 0


def test_unknown_model_name(project: Project) -> None:
    project.set_params(training={"builder": "resnet9000"})
    assert_one_line_failure(project.edgeloop("run"), "unknown model builder 'resnet9000'", "mlp")


def test_register_a_file_that_is_not_onnx(project: Project) -> None:
    bogus = project.root / "model.onnx"
    bogus.write_text("this is not a model\n" * 10)
    line = assert_one_line_failure(
        project.edgeloop("register", str(bogus), "--name", "x", "--dataset", "sklearn-digits"),
        "is not an ONNX model",
    )
    assert "model.onnx" in line
    assert project.version_count() == 0


def test_register_a_corrupt_onnx(project: Project) -> None:
    good = classifier(project.root / "good.onnx")
    corrupt = project.root / "corrupt.onnx"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_failure(
        project.edgeloop("register", str(corrupt), "--name", "x", "--dataset", "sklearn-digits"),
        "corrupt.onnx",
    )
    assert project.version_count() == 0


def test_register_an_onnx_whose_input_does_not_match_the_dataset(project: Project) -> None:
    wrong = classifier(project.root / "wrong.onnx", n_features=32)
    assert_one_line_failure(
        project.edgeloop("register", str(wrong), "--name", "x", "--dataset", "sklearn-digits"),
        "[N, 32]",
        "64 features",
    )
    assert project.version_count() == 0


def test_register_a_missing_file(project: Project) -> None:
    assert_one_line_failure(
        project.edgeloop("register", "nowhere.onnx", "--name", "x", "--dataset", "sklearn-digits"),
        "does not exist",
    )


def test_mlflow_unreachable(project: Project) -> None:
    result = project.edgeloop("run", MLFLOW_TRACKING_URI="http://127.0.0.1:9", timeout=60)
    assert_one_line_failure(result, "http://127.0.0.1:9 is unreachable", "MLFLOW_TRACKING_URI")


def test_failed_data_checks_register_nothing_and_mark_the_run(project: Project) -> None:
    (project.root / "noisy_digits.py").write_text(
        "from dataclasses import replace\n"
        "from flows.datasets import sklearn_digits\n"
        "def load():\n"
        "    ds = sklearn_digits()\n"
        "    x = ds.features.copy()\n"
        "    x[:40, 5] = 99.0\n"
        "    return replace(ds, features=x)\n"
    )
    project.set_params(data={"loader": "noisy_digits:load"})
    line = assert_one_line_failure(
        project.edgeloop("run"), "data checks failed", "expect_column_values_to_be_between"
    )
    assert "data report" in line
    report = (project.home / "work" / "data-report.json").read_text()
    assert '"feature": "px_5"' in report and '"value": 99.0' in report
    assert project.version_count() == 0
    runs = project.client().search_runs(project.client().search_experiments()[0].experiment_id)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["edgeloop.data_check"] == "failed"


RAGGED_LOADER = """
import numpy as np
from flows.datasets import Dataset, sklearn_digits


def ragged():
    digits = sklearn_digits()
    rows = np.empty(len(digits.features), dtype=object)
    rows[:] = [row[: 64 - i % 2] for i, row in enumerate(digits.features)]
    return Dataset(digits.schema, rows, digits.labels)
"""


def test_a_loader_returning_ragged_rows(project: Project) -> None:
    (project.root / "my_loaders.py").write_text(RAGGED_LOADER)
    project.set_params(data={"loader": "my_loaders:ragged"})
    assert_one_line_failure(project.edgeloop("run"), "dataset loader 'my_loaders:ragged'", "ragged")
    assert project.version_count() == 0


def test_register_with_a_contract_that_contradicts_the_graph(project: Project) -> None:
    model = classifier(project.root / "model.onnx")
    contract = project.root / "contract.yaml"
    contract.write_text("inputs:\n  pixels: {layout: NCHW}\n")
    args = ["register", str(model), "--name", "x", "--dataset", "sklearn-digits"]
    assert_one_line_failure(
        project.edgeloop(*args, "--contract", str(contract)),
        "the contract names 'pixels', which is not an input or output of the graph",
        "inputs features; outputs probabilities",
    )
    contract.write_text("inputs:\n  features: {layout: NHWC, value_range: [0, 16]}\n")
    assert_one_line_failure(
        project.edgeloop(*args, "--contract", str(contract)),
        "input 'features': layout NHWC needs a [C, H, W]-like shape",
    )
    assert project.version_count() == 0


def test_register_with_class_names_beside_the_model_that_do_not_fit(project: Project) -> None:
    model = classifier(project.root / "model.onnx")
    (project.root / "model.yaml").write_text("class_names: [cat, dog]\n")
    assert_one_line_failure(
        project.edgeloop("register", str(model), "--name", "x", "--dataset", "sklearn-digits"),
        "2 class names but output 'probabilities' has 10 values per sample",
    )
    assert project.version_count() == 0


NAN_TARGETS = """
import numpy as np
from flows.datasets import Dataset, sklearn_diabetes


def nan_targets():
    data = sklearn_diabetes()
    labels = data.labels.copy()
    labels[::40] = np.nan
    return Dataset(data.schema, data.features, labels)
"""


def test_a_regression_target_with_nan_is_refused_naming_the_rows(project: Project) -> None:
    (project.root / "my_loaders.py").write_text(NAN_TARGETS)
    project.set_params(data={"loader": "my_loaders:nan_targets"}, gates={"max_test_mae": 60})
    assert_one_line_failure(
        project.edgeloop("run"),
        "dataset loader 'my_loaders:nan_targets'",
        "12 target(s) are NaN or infinite (rows 0, 40, 80, 120, 160, ...)",
    )
    assert project.version_count() == 0
