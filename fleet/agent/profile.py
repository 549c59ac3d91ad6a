"""Hardware profiles: a target class of device and the budgets a variant must meet on it.

Profiles are YAML files in ``hardware-tests/profiles/``; unknown keys are an error, so a typo in a budget
never silently disables it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Budgets(BaseModel):
    """Limits a variant must meet on the profile; ``None`` means the budget is not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p95_latency_ms: float | None = Field(None, gt=0)
    peak_memory_mb: float | None = Field(None, gt=0)
    model_size_mb: float | None = Field(None, gt=0)
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_disagreement: float | None = Field(None, ge=0, le=1)


class HardwareProfile(BaseModel):
    """A target class: how to run the model on it and what it must achieve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    arch: str = "x86_64"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = Field(1, ge=1)
    cpu_affinity: tuple[int, ...] | None = None
    memory_cap_mb: int | None = Field(None, gt=0)
    variant: str = Field(
        "chosen", description="'chosen' runs the version's chosen variant; or pin one by name"
    )
    warmup_runs: int = Field(50, ge=0)
    timed_runs: int = Field(1000, ge=10)
    budgets: Budgets = Field(default_factory=Budgets)


class ProfileError(ValueError):
    """Raised when a profile file is missing or invalid; the message names the file and the key."""


def load_profile(name_or_path: str, profiles_dir: Path) -> HardwareProfile:
    path = Path(name_or_path)
    if not path.suffix:
        path = profiles_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ProfileError(f"hardware profile {name_or_path!r} not found (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return HardwareProfile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ProfileError(f"hardware profile {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ProfileError(f"hardware profile {path} is invalid: {problems}") from exc
