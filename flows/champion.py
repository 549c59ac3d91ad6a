"""Champion and challenger: does a new candidate beat production? (``schedule.auto_promote: if_better``)

Two comparisons, and the candidate must be better on both (a tie is not better):

- the held-out test split: the fp32 metric each version's run logged (``test_accuracy``, or
  ``test_mae`` for a regressor, where lower is better); the test split never takes field rows, so
  the two numbers are measured on the same rows;
- the field data that triggered the retrain (the rows this run pulled, when it pulled any): each
  version's chosen variant, as the fleet runs it, scored with onnxruntime on those rows.

The result is the gate ``better_than_production`` (:data:`GATE`): its verdict and numbers go on the
candidate's tags and into its model card.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.quality import ACCURACY, MAE, QualityMetric
from registry import tags as tag
from registry.modelcard import update_card

if TYPE_CHECKING:
    from mlflow import MlflowClient

GATE = "better_than_production"


@dataclass(frozen=True)
class Comparison:
    """The candidate against production: passed only when it is better on every measure taken."""

    candidate: str
    production: str
    metric: str
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per measure (``test``, ``field``): ``{"candidate": x, "production": y}``."""

    @property
    def passed(self) -> bool:
        better = (lambda c, p: c > p) if self.metric == ACCURACY.key else (lambda c, p: c < p)
        return bool(self.measured) and all(
            better(m["candidate"], m["production"]) for m in self.measured.values()
        )

    def reason(self) -> str:
        said = "; ".join(
            f"{name} {self.metric} {m['candidate']:.4f} against {m['production']:.4f}"
            for name, m in self.measured.items()
        )
        verdict = "better than" if self.passed else "not better than"
        return f"v{self.candidate} is {verdict} production v{self.production}: {said or 'nothing measured'}"


def _metric(client: MlflowClient, run_id: str | None) -> tuple[QualityMetric, float] | None:
    if run_id is None:
        return None
    logged = client.get_run(run_id).data.metrics
    for metric in (ACCURACY, MAE):
        if f"test_{metric.key}" in logged:
            return metric, float(logged[f"test_{metric.key}"])
    return None


def score_on_rows(
    client: MlflowClient, model: str, version: str, metric: QualityMetric, rows: Any
) -> float:
    """The version's chosen variant, as the fleet runs it, scored on the field rows."""
    import mlflow

    from fleet.shared.runtime import open_session, predict

    found = client.get_model_version(model, version)
    variant = found.tags[tag.VARIANT]
    with tempfile.TemporaryDirectory(prefix="edgeloop-champion-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path=f"variants/{variant}.onnx", dst_path=tmp,
            tracking_uri=client.tracking_uri,
        )  # fmt: skip
        scores = predict(open_session(path), rows[0])
    return metric.of(scores, rows[1])


def compare(
    client: MlflowClient,
    model: str,
    candidate: str,
    production: str,
    field_rows: tuple[np.ndarray, np.ndarray] | None,
) -> Comparison:
    """Measure the candidate against production (``field_rows``: features and labels, or None)."""
    ours = _metric(client, client.get_model_version(model, candidate).run_id)
    theirs = _metric(client, client.get_model_version(model, production).run_id)
    measured: dict[str, dict[str, float]] = {}
    metric = ours[0] if ours else ACCURACY
    if ours and theirs and ours[0] == theirs[0]:
        measured["test"] = {"candidate": ours[1], "production": theirs[1]}
    if field_rows is not None and len(field_rows[1]):
        measured["field"] = {
            "candidate": score_on_rows(client, model, candidate, metric, field_rows),
            "production": score_on_rows(client, model, production, metric, field_rows),
        }
    return Comparison(candidate, production, metric.key, measured)


def record(client: MlflowClient, model: str, comparison: Comparison, cards_dir: Path) -> None:
    """The gate's verdict and numbers on the candidate's tags and in its model card."""
    version = comparison.candidate
    client.set_model_version_tag(
        model, version, tag.gate(GATE), "passed" if comparison.passed else "failed"
    )
    numbers = json.dumps(
        {"production": comparison.production, "metric": comparison.metric, **comparison.measured},
        sort_keys=True,
    )
    client.set_model_version_tag(model, version, tag.CHAMPION, numbers)
    update_card(
        cards_dir, model, version, "comparison",
        {"gate": GATE, "passed": comparison.passed, "reason": comparison.reason(),
         "production": comparison.production, "metric": comparison.metric,
         "measured": comparison.measured},
    )  # fmt: skip
