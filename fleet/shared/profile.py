"""Hardware profiles: a target class of device and the budgets a variant must meet on it.

Profiles are YAML files in ``hardware-tests/profiles/``; unknown keys are an error, so a typo in a budget
never silently disables it. A profile that could never pass (a peak-memory budget above its memory cap,
more threads than pinned cores) is an error too, naming the field, because a run against it would only
report a failure the model is not responsible for.

The verdict of checking a model against a profile is a :class:`HardwareStatus`; the suite writes it and
the build side reads it, so both live here, on the side that installs on a device.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
"""A profile's name, which also names its work pool ``hw-<name>``."""
AUTO = "auto"
"""``variant: auto``: the build picks the smallest variant that meets this profile's budgets."""


class HardwareStatus(StrEnum):
    """The suite's verdict for one model on one profile, worst first."""

    FAILED = "failed"
    """A budget or sanity check failed, or the model could not run within the profile's limits."""
    UNAVAILABLE = "unavailable"
    """This host cannot stand in for the profile (wrong arch, first execution provider missing)."""
    PASSED = "passed"
    """Every check the profile asks for was made and met."""

    def is_pass(self) -> bool:
        """Only ``passed`` is a pass; ``unavailable`` never is."""
        return self is HardwareStatus.PASSED


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

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    arch: str = Field(
        "x86_64", pattern=r"^[a-z0-9_]+$", description="platform.machine() of the target"
    )
    execution_providers: tuple[str, ...] = Field(
        ("CPUExecutionProvider",), min_length=1, description="onnxruntime providers, in order"
    )
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads")
    cpu_affinity: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(
        None, min_length=1, description="cores the suite is pinned to (emulates a smaller CPU)"
    )
    memory_cap_mb: int | None = Field(
        None, gt=0, description="address-space cap of the suite's process (emulates a small device)"
    )
    variant: str = Field(
        AUTO,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="'auto': the smallest variant that meets the budgets; or pin one by name",
    )
    runner: Literal["local", "pool"] = Field(
        "local",
        description="'local': a subprocess on the build host; 'pool': a device on work pool hw-<name>",
    )
    warmup_runs: int = Field(50, ge=0)
    timed_runs: int = Field(1000, ge=10)
    budgets: Budgets = Field(default_factory=Budgets)

    @model_validator(mode="after")
    def _can_be_met(self) -> HardwareProfile:
        """Settings that contradict each other; each message starts with the field to fix."""
        problems = []
        if len(set(self.execution_providers)) != len(self.execution_providers):
            problems.append(
                f"execution_providers: listed twice in {list(self.execution_providers)}"
            )
        if self.cpu_affinity is not None:
            if len(set(self.cpu_affinity)) != len(self.cpu_affinity):
                problems.append(
                    f"cpu_affinity: a core is listed twice in {list(self.cpu_affinity)}"
                )
            if self.threads > len(set(self.cpu_affinity)):
                problems.append(
                    f"threads: {self.threads} threads but cpu_affinity pins only "
                    f"{len(set(self.cpu_affinity))} core(s)"
                )
        peak = self.budgets.peak_memory_mb
        if peak is not None and self.memory_cap_mb is not None and peak > self.memory_cap_mb:
            problems.append(
                f"budgets.peak_memory_mb: {peak:g} MB is above memory_cap_mb "
                f"({self.memory_cap_mb} MB), so it could never be reached"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def pinned_variant(self) -> str | None:
        """The variant this profile pins, or None for ``auto``."""
        return None if self.variant == AUTO else self.variant


class ProfileError(ValueError):
    """Raised when a profile file is missing or invalid; the message names the file and the key."""


def _problem(error: object) -> str:
    """``field: message`` for one pydantic error; cross-field errors already start with the field."""
    assert isinstance(error, dict)
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_profile(name_or_path: str, profiles_dir: Path) -> HardwareProfile:
    """A profile by name (``profiles_dir/<name>.yaml``) or by the path of a YAML file."""
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
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ProfileError(f"hardware profile {path} is invalid: {problems}") from exc
