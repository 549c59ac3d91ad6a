"""Settings of the fleet controller process, read from ``EDGELOOP_FLEET_*`` environment variables.

One object carries every knob the app factory needs, so tests build the app from an explicit
:class:`FleetSettings` instead of patching the environment, and a production deployment changes the
embedded default (SQLite under ``.edgeloop/``) with one variable (``EDGELOOP_FLEET_DB_URL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    """What the controller needs to run; every field has an ``EDGELOOP_FLEET_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_FLEET_", extra="ignore")

    db_url: str = Field(
        "sqlite:///.edgeloop/fleet.db",
        description="SQLAlchemy URL; postgresql:// is served through psycopg 3",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite only: FULL makes every acknowledged report survive a power loss; "
        "NORMAL is faster and survives a controller crash but not a power loss",
    )
    admin_token: str = Field("", description="bearer token of the admin endpoints; empty: refused")
    metrics_token: str = Field(
        "",
        description="bearer token that may read /metrics and nothing else (a Prometheus scraper's "
        "credentials_file); the admin token may read it too",
    )
    public_key_path: Path = Field(
        Path(".edgeloop/keys/signing-ed25519.pub.pem"),
        description="the registry's ed25519 public key, handed to devices at enrolment",
    )
    reconcile_s: float = Field(1.0, gt=0, description="period of the background reconcile pass")
    reconcile_enabled: bool = Field(True, description="run the reconcile pass in the background")
    long_poll_recheck_s: float = Field(
        1.0, gt=0, description="long-polls re-read the database this often (other replicas)"
    )
    default_p95_budget_ms: dict[str, float] = Field(
        default_factory=lambda: {"host-cpu": 50.0, "edge-small": 200.0},
        description="p95 budgets per class for rollouts created without a policy, where "
        "profiles_dir has no profile with a p95 budget for the class",
    )
    fallback_p95_budget_ms: float = Field(100.0, gt=0)
    profiles_dir: Path | None = Field(
        None,
        description="hardware profiles (<class>.yaml); a profile's budgets.p95_latency_ms is the "
        "class's budget for rollouts created without a policy",
    )
    migrate_on_start: bool = Field(True, description="run `alembic upgrade head` at app start")
    host: str = Field("127.0.0.1", description="address `fleet.controller.api.serve` binds")
    port: int = Field(8700, ge=0, le=65535, description="port `fleet.controller.api.serve` binds")
    tls_certfile: Path | None = Field(
        None, description="PEM certificate chain; with the key: HTTPS"
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile")
    allow_plain_http: bool = Field(
        False, description="serve plain HTTP on a host that is not loopback (behind a TLS proxy)"
    )

    def p95_budget_ms(self, hardware_class: str) -> float:
        """The budget of a class without a policy: its profile's, else the configured default."""
        if (
            self.profiles_dir is not None
            and (self.profiles_dir / f"{hardware_class}.yaml").is_file()
        ):
            from fleet.shared.profile import load_profile

            budget = load_profile(hardware_class, self.profiles_dir).budgets.p95_latency_ms
            if budget is not None:
                return budget
        return self.default_p95_budget_ms.get(hardware_class, self.fallback_p95_budget_ms)

    def public_key_pem(self) -> str:
        """The PEM text, or an empty string when the registry has not made a key yet."""
        path = self.public_key_path
        return path.read_text() if path.is_file() else ""
