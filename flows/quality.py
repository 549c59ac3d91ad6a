"""How a version's quality is measured, by task: test accuracy for a classifier, mean absolute error
for a regressor. The evaluation, the gates, the variant choice, the Pareto front, the tables and the
model card all read the metric from here, so a task is added in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class QualityMetric:
    key: str
    """The key of a variant's record and of the run summary that holds it."""
    label: str
    higher_is_better: bool

    def of(self, scores: np.ndarray, targets: np.ndarray) -> float:
        """The metric of model ``scores`` (``ModelSpec.scores``) against ``targets``."""
        if self.key == "accuracy":
            return float((scores.argmax(axis=1) == targets).mean())
        predicted = scores.reshape(len(scores), -1)[:, 0]
        return float(np.abs(predicted - targets).mean())

    def loss(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline``: accuracy points lost, or the relative
        increase of the MAE (0.02 = 2% worse)."""
        if self.higher_is_better:
            return baseline - value
        return (value - baseline) / baseline if baseline > 0 else value - baseline

    def at_least_as_good(self, a: float, b: float) -> bool:
        return a >= b if self.higher_is_better else a <= b


ACCURACY = QualityMetric("accuracy", "accuracy", higher_is_better=True)
MAE = QualityMetric("mae", "MAE", higher_is_better=False)


def metric_for(task: str) -> QualityMetric:
    return MAE if task == "regression" else ACCURACY


def metric_of(evaluation: dict[str, Any]) -> QualityMetric:
    """The metric an evaluation was made with (one written before regression: accuracy)."""
    return MAE if evaluation.get("metric") == "mae" else ACCURACY
