"""Playbooks' configuration: the schema of ``playbooks.yaml`` (trigger, actions, retries, rate limit)
and its loading, with :class:`~fleet.controller.errors.PolicyError` naming what is wrong.

The rate limit exists because an alert's scope is only as honest as the devices behind it: devices
inventing versions open one alert per invented version, and a playbook acting once per alert would
pause the model's rollouts and open a retraining run for each. So a playbook acts on the fleet for
at most ``max_runs_per_model`` alerts of one model per ``rate_window_s``; the runner records the
runs beyond that as ``limited``, with the reason, instead of performing them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.controller.errors import PolicyError
from fleet.controller.storage.observe_tables import AlertRow

ActionName = Literal[
    "pause_rollout", "rollback_cohort", "quarantine_device", "open_retrain", "notify_webhook"
]
FLEET_ACTIONS: frozenset[str] = frozenset(
    ("pause_rollout", "rollback_cohort", "quarantine_device", "open_retrain")
)
"""The actions that change the fleet or start work on its behalf, held back by a playbook's rate
limit; ``notify_webhook`` only tells a person, and is never limited."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Config):
    kind: str = Field(min_length=1)
    scope: dict[str, str] = Field(default_factory=dict)
    threshold: float | None = None

    def matches(self, alert: AlertRow) -> bool:
        if alert.kind != self.kind:
            return False
        if any(alert.scope.get(k) != v for k, v in self.scope.items()):
            return False
        return self.threshold is None or alert.value >= self.threshold


class PlaybookAction(_Config):
    action: ActionName
    url: str | None = Field(None, description="notify_webhook: where to POST")
    deployment: str = Field(
        "scheduled", description="open_retrain: deployment of flow `scheduled-retrain`"
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="open_retrain")


class Playbook(_Config):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    trigger: Trigger
    actions: list[PlaybookAction] = Field(min_length=1)
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_s: float = Field(5.0, ge=0)
    max_runs_per_model: int = Field(
        3,
        ge=1,
        le=1000,
        description="alerts of one model this playbook's fleet actions act on per rate_window_s; "
        "a run beyond it is recorded as limited, not performed",
    )
    rate_window_s: float = Field(3600.0, gt=0, le=30 * 86_400)


class Playbooks(_Config):
    playbooks: list[Playbook] = Field(default_factory=list)


def load_playbooks(raw: object) -> list[Playbook]:
    """Playbooks from parsed YAML (a mapping with ``playbooks:``); :class:`PolicyError` names what is
    wrong."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise PolicyError(f"playbooks must be a mapping with a `playbooks:` list, not {raw!r}")
    try:
        found = Playbooks.model_validate({"playbooks": raw.get("playbooks", [])}).playbooks
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise PolicyError(
            f"playbooks are invalid: {problems}",
            hint="fix the file; its format is in the README (Observing the fleet)",
        ) from exc
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise PolicyError(f"playbook names must be unique, got {names}")
    return found


def load_playbooks_file(path: Path) -> list[Playbook]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read playbooks file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"playbooks file {path} is not valid YAML: {exc}") from exc
    try:
        return load_playbooks(raw)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc.message}", hint=exc.hint) from exc
