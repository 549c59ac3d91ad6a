"""The schema of params.yaml, shared by the Prefect flow and the DVC stages.

One validated object means a typo in params.yaml fails before any work starts, with the key named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeloop.core.errors import ConfigError
from edgeloop.core.flow_source import FlowSource
from edgeloop.core.placement_params import PlacementParams
from edgeloop.core.schedule_params import ScheduleParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    loader: str = "sklearn-digits"
    loader_args: dict[str, Any] = Field(default_factory=dict)
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.6, "val": 0.15, "test": 0.15, "field": 0.10}
    )
    min_class_share: float = Field(0.5, gt=0, le=1, description="of a uniform share")
    max_class_share: float = Field(2.0, ge=1, description="of a uniform share")
    include_field: bool = Field(
        False, description="ingest adds the labelled field samples pulled into field_dir to train"
    )
    field_dir: str = Field("data/field", description="where `fleet pull-field-data` writes")

    @model_validator(mode="after")
    def _check_splits(self) -> DataParams:
        required = {"train", "val", "test", "field"}
        if set(self.splits) != required:
            raise ValueError(f"data.splits must name exactly {sorted(required)}")
        if any(v <= 0 for v in self.splits.values()):
            raise ValueError("data.splits fractions must be positive")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise ValueError("data.splits fractions must sum to 1")
        return self


class TrainingParams(_Strict):
    builder: str = "mlp"
    builder_args: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)


class CompressParams(_Strict):
    opset: int = Field(18, ge=13)
    calibration_samples: int = Field(256, ge=8)
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    max_mae_increase: float = Field(
        0.02, ge=0, description="a regressor's variant may have at most this relative MAE increase"
    )
    prune_keep: float = Field(
        0.5, gt=0, lt=1, description="share of hidden units the pruned variant keeps"
    )
    prune_finetune_epochs: int = Field(15, ge=0)
    warmup_runs: int = Field(50, ge=0)
    latency_runs: int = Field(500, ge=10)


class GateParams(_Strict):
    min_test_accuracy: float = Field(0.9, ge=0, le=1)
    max_test_mae: float | None = Field(
        None, gt=0, description="a regressor's test MAE must not exceed this (required for one)"
    )
    profiles: list[str] = Field(default_factory=lambda: ["host-cpu", "edge-small"], min_length=1)
    runner_deadline_s: float = Field(
        600, gt=0, description="how long a pool profile may stay silent"
    )
    runner_source: FlowSource = None  # where the workers of the pools hw-<profile> find the flow


class CardParams(_Strict):
    intended_use: str = (
        "Classify 8x8 grey-level images of single handwritten digits on edge devices. "
        "A demonstration model: not for decisions about people."
    )
    limitations: list[str] = Field(
        default_factory=lambda: [
            "Trained on 8x8 images of one writer population; other resolutions or styles need retraining.",
            "Accuracy is measured on held-out splits of the same collection, not on field data.",
        ]
    )


class RolloutParams(_Strict):
    """How a promoted version reaches the fleet. Stages and gates are a ``fleet.controller.rollout.policy``;
    cohorts are filled in from the hardware profiles in ``gates.profiles`` (their p95 budgets).

    The defaults fit fleets with or without labels and cohorts of any size (the controller's default
    policy): canary devices compare with the stable model in shadow, and a stage needs p95 latency,
    error rate and agreement; accuracy rolls back what it catches where labels arrive. Four stages of
    10-minute bakes: at least 40 minutes."""

    controller_url: str = "http://127.0.0.1:8787"
    stages: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"fraction": f, "bake_s": 600, "deadline_s": 3600, "min_inferences": 200}
            for f in (0.05, 0.25, 0.5, 1.0)
        ]
    )
    gates: dict[str, Any] = Field(
        default_factory=lambda: {
            "max_error_rate": 0.01,
            "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 200},
            "agreement": {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 200},
        }
    )
    shadow: dict[str, Any] | None = Field(
        default_factory=lambda: {"rate": 0.1, "cpu_budget": 0.25},
        description="shadow comparisons on canary devices (rate, cpu_budget, tolerance); "
        "null turns them off",
    )
    required_gates: list[str] | None = Field(
        default_factory=lambda: ["p95_latency", "error_rate", "agreement"],
        description="gates every cohort must pass; a fleet with labels may require accuracy too",
    )
    on_inconclusive: str = "fail"
    poll_s: float = Field(1.0, gt=0)
    deadline_s: float = Field(
        4 * 3600, gt=0, description="the flow aborts a rollout older than this"
    )


class Params(_Strict):
    model_name: str = Field("digits-classifier", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 42
    data: DataParams = Field(default_factory=DataParams)
    training: TrainingParams = Field(default_factory=TrainingParams)
    compress: CompressParams = Field(default_factory=CompressParams)
    gates: GateParams = Field(default_factory=GateParams)
    card: CardParams = Field(default_factory=CardParams)
    rollout: RolloutParams = Field(default_factory=RolloutParams)
    placement: PlacementParams = Field(default_factory=PlacementParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)

    def digest(self) -> str:
        """A stable hash of every parameter, recorded as lineage."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def load_params(path: Path) -> Params:
    """Read and validate params.yaml, turning every failure into one ConfigError line."""
    if not path.is_file():
        raise ConfigError(
            f"params file {path} not found",
            hint="run from the repository root or set EDGELOOP_PARAMS_FILE",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            hint="fix the syntax and run again",
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping of settings", hint="see the README's params.yaml"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"{path} is invalid: {problems}", hint="fix these keys and run again"
        ) from exc
