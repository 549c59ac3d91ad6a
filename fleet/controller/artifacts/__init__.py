"""Where the controller keeps artifact bytes: one interface, two stores, chosen by the settings.

Why a package of its own: the bytes of a release are content, not a place. They reach the controller
as an upload (or from a source URL it fetches itself), are hashed while they arrive, and become
visible under their sha256 only once the API has checked that digest and the release signature, so
a refused artifact leaves nothing behind. Devices read them back by sha256, whole or from an offset
(a resumed download). The local folder is the embedded default; S3-compatible object storage is for
a controller that runs on more than one host or should not hold the files itself. Nothing here runs
SQL: the rows that name an artifact stay in ``fleet.controller.storage``.
"""

from __future__ import annotations

from fleet.controller.artifacts.interface import (
    ArtifactMissing,
    ArtifactStore,
    ArtifactStoreUnavailable,
    Pending,
)
from fleet.controller.artifacts.local import LocalArtifactStore
from fleet.controller.settings import FleetSettings


def open_store(settings: FleetSettings) -> ArtifactStore:
    """The store ``settings`` name: ``artifact_store`` ``local`` (default) or ``s3``."""
    if settings.artifact_store == "s3":
        from fleet.controller.artifacts.s3 import S3ArtifactStore  # boto3 only where configured

        return S3ArtifactStore(
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            redirect_s=settings.artifact_redirect_s,
        )
    return LocalArtifactStore(settings.artifact_dir)


__all__ = [
    "ArtifactMissing",
    "ArtifactStore",
    "ArtifactStoreUnavailable",
    "LocalArtifactStore",
    "Pending",
    "open_store",
]
