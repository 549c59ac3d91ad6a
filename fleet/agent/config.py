"""The edge agent's settings, read from ``EDGELOOP_AGENT_*`` environment variables.

Why a module of its own: a device is configured by its image or its service unit, not by a file in
a source tree, and the agent installs without the platform's settings machinery. Every setting has
one environment variable (``EDGELOOP_AGENT_<FIELD>``, upper case), parsed and checked here once, so
the agent loop and the client receive values that are already known to make sense. A bad value is a
:class:`ConfigError` naming the variable, at start-up, instead of a confusing failure an hour later.

The enrolment token is a secret that is needed once: after enrolment the device keeps its own
credential (mode 0600) in ``state_dir`` and never needs the token again.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from fleet.agent.errors import ConfigError
from fleet.shared.protocol import LONG_POLL_MAX_S, MAX_REPORTS_PER_BATCH, NAME

ENV_PREFIX = "EDGELOOP_AGENT_"


def _default_device_id() -> str:
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    return (host.lstrip("_.-") or "device")[:128]


class AgentConfig(BaseModel):
    """Everything one agent process needs; build it with :meth:`from_env` on a device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller_url: str = Field("http://127.0.0.1:8700", description="the controller's base URL")
    state_dir: Path = Field(Path(".edgeloop/agent"), description="credential, models, outbox")
    device_id: str = Field(default_factory=_default_device_id, pattern=NAME)
    hardware_class: str = Field("host-cpu", pattern=NAME)
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)
    profile: str | None = Field(None, description="hardware profile name or YAML path")
    profiles_dir: Path = Path("hardware-tests/profiles")
    ca_file: Path | None = Field(
        None, description="PEM CA bundle the controller's cert must chain to"
    )
    allow_insecure: bool = Field(False, description="plain HTTP to a host that is not loopback")
    enrolment_token: SecretStr | None = None
    public_key_file: Path | None = Field(
        None, description="the fleet's ed25519 key, pinned; else the one given at enrolment"
    )
    golden_inputs: Path | None = Field(None, description=".npy rows for the smoke test")
    expected_outputs: int = Field(10, ge=1)
    long_poll_s: float = Field(LONG_POLL_MAX_S, gt=0, le=LONG_POLL_MAX_S)
    request_timeout_s: float = Field(10.0, gt=0)
    telemetry_batch: int = Field(100, ge=1, le=MAX_REPORTS_PER_BATCH)
    buffer_max_reports: int = Field(10_000, ge=1)
    buffer_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    field_samples_max: int = Field(
        5000, ge=1, description="labelled field samples kept on disk while offline"
    )
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    backoff_jitter: float = Field(
        0.2, ge=0, le=1, description="fraction of a back-off drawn at random"
    )
    download_retries: int = Field(4, ge=0, le=20)
    reject_retry_s: float = Field(
        300.0, ge=0, description="how long a rejected artifact is not fetched again"
    )
    predict_host: str = "127.0.0.1"
    predict_port: int | None = Field(8701, ge=0, le=65535, description="None: no local server")

    @property
    def credential_path(self) -> Path:
        return self.state_dir / "credential.json"

    @property
    def downloads_dir(self) -> Path:
        return self.state_dir / "downloads"

    @property
    def buffer_path(self) -> Path:
        return self.state_dir / "telemetry.db"

    @property
    def field_buffer_path(self) -> Path:
        return self.state_dir / "field-samples.db"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AgentConfig:
        """Settings from ``EDGELOOP_AGENT_*`` variables (``labels`` as a JSON object; an empty
        ``PREDICT_PORT`` or ``off`` turns the local server off), then ``overrides`` on top."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for field in cls.model_fields:
            value = env.get(ENV_PREFIX + field.upper())
            if value is None:
                continue
            if field == "labels":
                try:
                    raw[field] = json.loads(value)
                except ValueError as exc:
                    raise ConfigError(
                        f"{ENV_PREFIX}LABELS must be a JSON object: {exc}", setting="labels"
                    ) from exc
            elif field == "predict_port" and value.strip().lower() in ("", "off", "none"):
                raw[field] = None
            else:
                raw[field] = value
        raw.update(overrides)
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            setting = str(first["loc"][0]) if first["loc"] else "?"
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"invalid agent settings: {problems}", setting=setting) from exc
        if config.backoff_max_s < config.backoff_initial_s:
            raise ConfigError(
                f"{ENV_PREFIX}BACKOFF_MAX_S ({config.backoff_max_s}) is below "
                f"{ENV_PREFIX}BACKOFF_INITIAL_S ({config.backoff_initial_s})",
                setting="backoff_max_s",
            )
        return config
