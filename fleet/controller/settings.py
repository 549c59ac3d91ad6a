"""Settings of the fleet controller process, read from ``EDGELOOP_FLEET_*`` environment variables.

One object carries every knob the app factory needs, so tests build the app from an explicit
:class:`FleetSettings` instead of patching the environment, and a production deployment changes each
embedded default with one variable: the database (SQLite under ``.edgeloop/``) with
``EDGELOOP_FLEET_DB_URL``, the artifact store (a folder under ``.edgeloop/``) with
``EDGELOOP_FLEET_ARTIFACT_STORE=s3`` and its bucket. S3 credentials are never settings: boto3 reads
them from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ...), its config files or the instance
role, so they appear on no command line and in no settings dump.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.shared.body_limit import MiB
from fleet.shared.protocol import (
    MAX_FIELD_BATCH_VALUES,
    MAX_FIELD_SAMPLES_PER_BATCH,
    MAX_REPORTS_PER_BATCH,
)

# Request body limits (fleet.controller.api.body_limits): each route's from the protocol's bounds.
REPORT_WIRE_BYTES = 192 * 1024
"""What one telemetry report may take on the wire: the largest an agent builds (1000 feedback pairs,
the statistics of 256 features, a shadow report of 1000 classes a side, 64 events, 16 refusals) is
about 172 KiB of JSON (tests/unit/test_body_limits.py builds it)."""
TELEMETRY_MAX_BODY_BYTES = MAX_REPORTS_PER_BATCH * REPORT_WIRE_BYTES
"""A full telemetry batch of such reports: 93.75 MiB."""
FLOAT_WIRE_BYTES = 25
"""The longest JSON number a float is, with its comma: ``-2.2250738585072014e-308,``."""
SAMPLE_WIRE_BYTES = 512
"""A field sample without its features: model and version of 128 characters, labels, the keys."""
FIELD_SAMPLES_MAX_BODY_BYTES = (
    MAX_FIELD_BATCH_VALUES * FLOAT_WIRE_BYTES + MAX_FIELD_SAMPLES_PER_BATCH * SAMPLE_WIRE_BYTES
)
"""A full batch of field samples (1,048,576 values in 1000 samples): about 25.5 MiB."""
ARTIFACT_UPLOAD_MAX_BODY_BYTES = 2048 * MiB
"""An ONNX file is a protobuf, which stops at 2 GiB (a larger model keeps its weights outside)."""


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
        1.0,
        gt=0,
        description="long-polls re-read the database this often: the fallback when a change by "
        "another replica was not heard (PostgreSQL's NOTIFY wakes them at once)",
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
    max_body_bytes: int = Field(
        1 * MiB,
        ge=1024,
        description="request bodies of a route without a limit of its own; a larger one is a "
        "413, refused before it is read (fleet.controller.api.body_limits)",
    )
    telemetry_max_body_bytes: int = Field(
        TELEMETRY_MAX_BODY_BYTES,
        ge=1024,
        description="a device's telemetry batch (MAX_REPORTS_PER_BATCH reports of an agent)",
    )
    field_samples_max_body_bytes: int = Field(
        FIELD_SAMPLES_MAX_BODY_BYTES,
        ge=1024,
        description="a device's batch of field samples (MAX_FIELD_BATCH_VALUES values)",
    )
    artifact_upload_max_body_bytes: int = Field(
        ARTIFACT_UPLOAD_MAX_BODY_BYTES,
        ge=1024,
        description="an uploaded model artifact (the routes of ARTIFACT_UPLOAD_PATHS)",
    )
    artifact_store: Literal["local", "s3"] = Field(
        "local",
        description="where uploaded artifacts live: a local folder (artifact_dir) or an "
        "S3-compatible bucket (s3_bucket, s3_prefix, s3_endpoint_url)",
    )
    artifact_dir: Path = Field(
        Path(".edgeloop/artifact-store"),
        description="the local store's folder: files named by their sha256",
    )
    s3_bucket: str = Field("", description="the S3 store's bucket (it must exist)")
    s3_prefix: str = Field(
        "edgeloop/artifacts/", description="key prefix of the S3 store's objects"
    )
    s3_endpoint_url: str | None = Field(
        None, description="an S3-compatible server (MinIO, Ceph, ...); None: AWS itself"
    )
    s3_region: str | None = Field(None, description="the bucket's region; None: boto3's default")
    artifact_redirect_s: int = Field(
        0,
        ge=0,
        le=7 * 86_400,
        description="S3 only: answer a device's download with a redirect to a presigned URL valid "
        "this many seconds (the bytes then bypass the controller); 0: the controller streams them",
    )
    artifact_source_origins: list[str] = Field(
        default_factory=list,
        description="origins (scheme://host[:port]) the controller may fetch an artifact from when "
        "a registration names a source URL instead of sending the bytes; empty: uploads only",
    )

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> FleetSettings:
        if self.artifact_store == "s3" and not self.s3_bucket:
            raise ValueError("artifact_store s3 needs s3_bucket (EDGELOOP_FLEET_S3_BUCKET)")
        return self

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
