"""The edge agent's settings, read from ``EDGELOOP_AGENT_*`` environment variables.

Why a module of its own: a device is configured by its image or its service unit, not by a file in
a source tree, and the agent installs without the platform's settings machinery. Every setting has
one environment variable (``EDGELOOP_AGENT_<FIELD>``), read by pydantic-settings and checked here
once, so the agent loop and the client receive values that are already known to make sense. A bad
value is a :class:`AgentConfigError` naming the variable, at start-up, instead of a confusing failure an
hour later.

The enrolment token is a secret that is needed once: after enrolment the device keeps its own
credential (mode 0600) in ``state_dir`` and never needs the token again.

Outside loopback development a device pins what it trusts at provisioning: the registry's public key
(``public_key_file``), and for an ``https`` controller the controller's CA (``ca_file``), which the
client then trusts alone. Without them the device would trust whatever key the controller hands it,
and any certificate the system's trust store accepts for the controller's name; it refuses to start
instead. Plain ``http`` off loopback is refused by the client unless ``allow_insecure`` is set.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fleet.agent.errors import AgentConfigError
from fleet.shared.net import is_loopback
from fleet.shared.protocol import (
    LONG_POLL_MAX_S,
    MAX_REPORTS_PER_BATCH,
    NAME,
    LabelKey,
    LabelValue,
)

ENV_PREFIX = "EDGELOOP_AGENT_"


def _default_device_id() -> str:
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    return (host.lstrip("_.-") or "device")[:128]


class AgentConfig(BaseSettings):
    """Everything one agent process needs; build it with :meth:`from_env` on a device.

    Fields not given as arguments come from ``EDGELOOP_AGENT_<FIELD>`` (any case), then defaults.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    controller_url: str = Field("http://127.0.0.1:8700", description="the controller's base URL")
    state_dir: Path = Field(Path(".edgeloop/agent"), description="credential, models, outbox")
    device_id: str = Field(
        default_factory=_default_device_id,
        pattern=NAME,
        description="this device's id in the fleet",
    )
    hardware_class: str = Field(
        "host-cpu", pattern=NAME, description="its hardware profile's name: the cohort it joins"
    )
    labels: Annotated[dict[LabelKey, LabelValue], NoDecode] = Field(
        default_factory=dict, max_length=16, description='a JSON object, e.g. {"site": "berlin"}'
    )
    profile: str | None = Field(None, description="hardware profile name or YAML path")
    profiles_dir: Path = Field(
        Path("hardware-tests/profiles"), description="where PROFILE names are looked up"
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the controller's cert must chain to, trusted alone (not the "
        "system's store); required for an https controller unless it is on loopback (development)",
    )
    allow_insecure: bool = Field(False, description="plain HTTP to a host that is not loopback")
    enrolment_token: SecretStr | None = Field(
        None, description="one-time token (`edgeloop fleet token create`), used at the first start"
    )
    public_key_file: Path | None = Field(
        None,
        description="the registry's ed25519 public key, pinned at provisioning; required unless "
        "the controller is on loopback (development), where the one given at enrolment is used",
    )
    golden_inputs: Path | None = Field(None, description=".npy rows for the smoke test")
    expected_outputs: int = Field(10, ge=1, description="classes a model must score (smoke test)")
    long_poll_s: float = Field(
        LONG_POLL_MAX_S,
        gt=0,
        le=LONG_POLL_MAX_S,
        description="longest wait for a change of the desired state",
    )
    report_interval_s: float = Field(
        10.0,
        gt=0,
        le=LONG_POLL_MAX_S,
        description="telemetry goes out at least this often (a long-poll never waits longer)",
    )
    request_timeout_s: float = Field(10.0, gt=0, description="timeout of one controller call")
    telemetry_batch: int = Field(
        100, ge=1, le=MAX_REPORTS_PER_BATCH, description="reports sent per call"
    )
    buffer_max_reports: int = Field(
        10_000, ge=1, description="reports kept on disk while offline (oldest dropped, counted)"
    )
    buffer_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="bytes those reports may take on disk"
    )
    field_samples_max: int = Field(
        5000, ge=1, description="labelled field samples kept on disk while offline"
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="first wait after a failed call")
    backoff_max_s: float = Field(60.0, gt=0, description="longest wait between failed calls")
    backoff_jitter: float = Field(
        0.2, ge=0, le=1, description="fraction of a back-off drawn at random"
    )
    download_retries: int = Field(
        4, ge=0, le=20, description="resumed attempts of one download before giving up"
    )
    reject_retry_s: float = Field(
        300.0, ge=0, description="how long a rejected artifact is not fetched again"
    )
    predict_host: str = Field("127.0.0.1", description="address of the local /predict server")
    predict_port: int | None = Field(8701, ge=0, le=65535, description="None: no local server")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_json(cls, value: Any) -> Any:
        """``EDGELOOP_AGENT_LABELS`` holds a JSON object."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"must be a JSON object: {exc}") from exc

    @field_validator("predict_port", mode="before")
    @classmethod
    def _predict_port_off(cls, value: Any) -> Any:
        """An empty ``EDGELOOP_AGENT_PREDICT_PORT``, ``off`` or ``none``: no local server."""
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

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
    def from_env(cls, **overrides: Any) -> AgentConfig:
        """Settings from ``EDGELOOP_AGENT_*`` variables with ``overrides`` on top (``labels`` as a
        JSON object; an empty ``PREDICT_PORT`` or ``off`` turns the local server off).

        Raises :class:`AgentConfigError` naming the variable of the first bad value (all of them in the
        message), never pydantic's ``ValidationError``.
        """
        try:
            config = cls(**overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            setting = str(first["loc"][0]) if first["loc"] else "?"
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            raise AgentConfigError(f"invalid agent settings: {problems}", setting=setting) from exc
        host = urlsplit(config.controller_url).hostname or ""
        if config.public_key_file is None and not is_loopback(host):
            raise AgentConfigError(
                f"{ENV_PREFIX}PUBLIC_KEY_FILE is not set: a device outside loopback development "
                "pins the registry's public key at provisioning (the registry's "
                "signing-ed25519.pub.pem) instead of trusting the one the controller hands it",
                setting="public_key_file",
            )
        scheme = urlsplit(config.controller_url).scheme
        if scheme == "https" and config.ca_file is None and not is_loopback(host):
            raise AgentConfigError(
                f"{ENV_PREFIX}CA_FILE is not set: a device outside loopback development pins the "
                f"controller's CA at provisioning (the CA that issued {host}'s certificate) "
                "instead of trusting any certificate the system's trust store accepts",
                setting="ca_file",
            )
        if config.backoff_max_s < config.backoff_initial_s:
            raise AgentConfigError(
                f"{ENV_PREFIX}BACKOFF_MAX_S ({config.backoff_max_s}) is below "
                f"{ENV_PREFIX}BACKOFF_INITIAL_S ({config.backoff_initial_s})",
                setting="backoff_max_s",
            )
        return config


def settings_help() -> str:
    """Every setting as ``EDGELOOP_AGENT_<NAME>``, its default and what it does (``--help``)."""
    lines = ["settings (environment variables; the flags above override the first four):"]
    for name, field in AgentConfig.model_fields.items():
        default = field.get_default(call_default_factory=False)
        if field.default_factory is not None:
            shown = "the host name" if name == "device_id" else "{}"
        elif default is None:
            shown = "unset"
        else:
            shown = str(default)
        lines.append(f"  {ENV_PREFIX}{name.upper()}  (default: {shown})")
        if field.description:
            lines.append(f"      {field.description}")
    return "\n".join(lines)
