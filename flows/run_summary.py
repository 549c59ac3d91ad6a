"""The run summary: what one pass of the loop registered, returned by the retrain and register flows.

The CLI prints its tables from it and writes its JSON to ``.edgeloop/last-run.json`` (adding the stages'
timings); the scheduled and placed retrains read the version and aliases from it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from flows.validation import HardwareSummary
from registry.publish import ReleaseGateResult


class VariantSummary(BaseModel):
    """One built variant as evaluated on the build host, with the signature it was registered with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    size_bytes: int
    accuracy: float | None = None
    mae: float | None = None
    p50_ms: float
    p95_ms: float
    signature: str


class RunSummary(BaseModel):
    """The registered version, its variants, gates, hardware verdicts and model card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: str
    aliases: list[str]
    mlflow_run_id: str
    tracking_uri: str
    chosen_variant: str
    variants: list[VariantSummary]
    metric: str = "accuracy"
    """``accuracy`` (a classifier) or ``mae`` (a regressor): what ``split_metric`` holds."""
    split_metric: dict[str, float]
    gates: list[ReleaseGateResult]
    hardware: dict[str, HardwareSummary]
    model_card: dict[str, str]
    started: str

    def failed_gates(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]
