"""The ``placement:`` section of params.yaml: training work pools and the job's constraints.

Each pool is a Prefect work pool on one provider's machines (a process, Docker or Kubernetes pool);
the placement policy (:mod:`flows.placement`) picks the cheapest live pool that meets the constraints.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeloop.core.flow_source import FlowSource

POOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingPool(_Strict):
    name: str = Field(pattern=POOL_NAME, description="the Prefect work pool")
    provider: str = Field(min_length=1)
    region: str = Field(min_length=1)
    cost_per_hour: float = Field(ge=0)
    data_residency: str = Field(min_length=1, description='where data may live, e.g. "eu"')
    accelerator: str = Field("none", min_length=1, description='"none", "t4", "a100", ...')


class PlacementConstraints(_Strict):
    residency: str | None = Field(None, description="required data residency; none: any")
    accelerator: str | None = Field(None, description="required accelerator; none: any")
    max_cost_per_hour: float | None = Field(None, ge=0)
    deadline_s: float = Field(3600, gt=0, description="one attempt may run this long")


class PlacementParams(_Strict):
    pools: list[TrainingPool] = Field(
        default_factory=lambda: [
            TrainingPool(
                name="train-aws-eu",
                provider="aws",
                region="eu-west-1",
                cost_per_hour=0.40,
                data_residency="eu",
            ),
            TrainingPool(
                name="train-gcp-eu",
                provider="gcp",
                region="europe-west4",
                cost_per_hour=0.45,
                data_residency="eu",
            ),
        ]
    )
    constraints: PlacementConstraints = Field(default_factory=PlacementConstraints)
    poll_s: float = Field(2.0, gt=0, description="how often a placed run and its pool are checked")
    source: FlowSource = None

    @model_validator(mode="after")
    def _unique_names(self) -> PlacementParams:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"placement.pools names must be unique; repeated: {duplicates}")
        return self
