"""How large a request body each of the controller's routes takes: a larger one is a 413, unread.

Every route, the dashboard's included, takes ``settings.max_body_bytes`` (1 MiB) unless it is listed
here with a limit of its own, sized from the protocol's bounds in ``fleet.controller.settings``: a
device's telemetry batch and its batch of field samples. The limits are enforced by
:class:`fleet.shared.body_limit.LimitBodySize` around the whole app, before any route, dependency or
credential check reads the body (the dashboard's sign-in form is bounded tighter by its route).
"""

from __future__ import annotations

from fleet.controller.settings import FleetSettings
from fleet.shared.body_limit import BodyLimit
from fleet.shared.protocol import field_samples_path, telemetry_path

ARTIFACT_UPLOAD_PATHS: tuple[str, ...] = ("/v1/artifacts",)  # POST: the upload (routes_artifacts)
"""Path templates of the routes that take an artifact's bytes (``/v1/...``, ``{name}`` for a path
parameter): each takes ``settings.artifact_upload_max_body_bytes`` (2 GiB) instead of the default.
The upload route adds its template here."""


def controller_limits(settings: FleetSettings) -> list[BodyLimit]:
    """The default and each route's own limit, from ``settings``."""
    return [
        BodyLimit(
            settings.max_body_bytes,
            hint="send a smaller body, or raise EDGELOOP_FLEET_MAX_BODY_BYTES on the controller",
        ),
        BodyLimit(
            settings.telemetry_max_body_bytes,
            telemetry_path("{device_id}"),
            hint="send fewer reports per batch (the agent's EDGELOOP_AGENT_TELEMETRY_BATCH), or "
            "raise EDGELOOP_FLEET_TELEMETRY_MAX_BODY_BYTES on the controller",
        ),
        BodyLimit(
            settings.field_samples_max_body_bytes,
            field_samples_path("{device_id}"),
            hint="send fewer samples per batch (the protocol's MAX_FIELD_BATCH_VALUES values at "
            "most, as the agent does)",
        ),
        *(
            BodyLimit(
                settings.artifact_upload_max_body_bytes,
                path,
                hint="an artifact this large cannot be an ONNX file; keep its weights outside it, "
                "or raise EDGELOOP_FLEET_ARTIFACT_UPLOAD_MAX_BODY_BYTES",
            )
            for path in ARTIFACT_UPLOAD_PATHS
        ),
    ]
