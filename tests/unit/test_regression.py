"""Regression through the offline loop's pieces: the MAE metric, the variant choice and gates that
read it, the data checks of a continuous target, and training on the standardised target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeloop.core.errors import DataCheckError
from edgeloop.core.params import DataParams, Params, TrainingParams
from flows.datacheck import check_splits
from flows.datasets import LABEL, sklearn_diabetes, split_dataset, xy
from flows.models import Values, build_model
from flows.pareto import pareto_table
from flows.quality import ACCURACY, MAE, metric_of
from flows.release import gates
from flows.stages import choose_variant
from flows.train import train


def rec(name: str, mae: float, size: int, p95: float = 1.0) -> dict:
    return {"name": name, "mae": mae, "size_bytes": size, "p50_ms": p95, "p95_ms": p95}


def test_mae_and_its_relative_loss() -> None:
    scores = np.array([[10.0], [20.0], [35.0]])
    assert MAE.of(scores, np.array([12.0, 20.0, 30.0])) == pytest.approx(7 / 3)
    assert MAE.loss(40.0, 40.8) == pytest.approx(0.02)
    assert MAE.loss(40.0, 39.0) < 0  # better than the baseline
    assert ACCURACY.loss(0.97, 0.95) == pytest.approx(0.02)
    assert metric_of({"metric": "mae"}) is MAE and metric_of({}) is ACCURACY


def test_the_smallest_variant_within_two_percent_mae_is_chosen() -> None:
    records = [
        rec("fp32", 40.0, 1000),
        rec("int8-dynamic", 40.7, 400),  # 1.75% worse: allowed
        rec("int8-static", 41.2, 300),  # 3% worse: not
    ]
    assert choose_variant(records, 0.02, MAE) == "int8-dynamic"


def test_pareto_prefers_the_lower_mae() -> None:
    table = pareto_table([rec("fp32", 40.0, 1000), rec("int8", 45.0, 1000)], MAE)
    assert {r["name"]: r["pareto"] for r in table} == {"fp32": True, "int8": False}


def evaluation(test_mae: float, chosen_mae: float) -> dict:
    return {
        "metric": "mae",
        "split_mae": {"train": 30.0, "val": 35.0, "test": test_mae},
        "variants": [rec("fp32", test_mae, 1000), rec("int8-static", chosen_mae, 300)],
        "chosen": "int8-static",
    }


def test_regression_gates_read_the_test_mae_and_the_variant_increase() -> None:
    params = Params.model_validate({"gates": {"max_test_mae": 50}})
    passed = {g.name: g for g in gates(params, evaluation(45.0, 45.5), {})}
    assert passed["test_mae"].passed and passed["test_mae"].measured == 45.0
    assert passed["variant_mae_increase"].passed
    assert "test_accuracy" not in passed
    failed = {g.name: g for g in gates(params, evaluation(52.0, 55.0), {})}
    assert not failed["test_mae"].passed and not failed["variant_mae_increase"].passed


def test_a_regressor_without_an_mae_limit_fails_its_gate_saying_what_to_set() -> None:
    (gate,) = [g for g in gates(Params(), evaluation(45.0, 45.0), {}) if g.name == "test_mae"]
    assert not gate.passed and gate.threshold == "not set: set gates.max_test_mae"


def test_the_data_checks_of_a_continuous_target() -> None:
    data = sklearn_diabetes()
    splits = split_dataset(data, Params().data.splits, seed=0)
    report = check_splits(data.schema, splits, DataParams())
    assert report["passed"]
    splits["val"].loc[3, LABEL] = 900.0  # outside the target range 0-400
    with pytest.raises(DataCheckError) as failed:
        check_splits(data.schema, splits, DataParams())
    (failure,) = failed.value.report["failures"]
    assert (
        failure["split"] == "val" and failure["expectation"] == "expect_column_values_to_be_between"
    )


def test_training_on_the_standardised_target_beats_the_mean() -> None:
    data = sklearn_diabetes()
    splits = split_dataset(data, Params().data.splits, seed=0)
    (x, y), (xv, yv) = xy(splits["train"]), xy(splits["val"])
    assert y.dtype == np.float32
    torch.manual_seed(0)
    model = build_model("mlp", 10, 1, data.schema.value_range, hidden=(32,), dropout=0.0)
    params = TrainingParams(epochs=60, batch_size=32, learning_rate=0.003)
    history = train(model, (x, y), (xv, yv), params, seed=0, task="regression").history
    baseline = float(np.abs(yv - y.mean()).mean())
    assert history[-1]["val_mae"] < 0.8 * baseline
    assert float(model.target_std) == pytest.approx(float(y.std(ddof=1)), rel=1e-4)
    with torch.no_grad():  # the exported wrapper answers in the target's units
        values = Values(model)(torch.from_numpy(xv))[:, 0].numpy()
    assert float(np.abs(values - yv).mean()) == pytest.approx(history[-1]["val_mae"], rel=1e-4)
