"""Fetching an artifact from a URL the registration names, instead of receiving it in the body.

Why it exists: a registry that serves its artifacts over HTTP (``mlflow server --serve-artifacts``,
a presigned object-store URL) can hand the controller a URL instead of relaying the bytes through
the caller. Why it is narrow: a controller that fetches any URL an admin names is a way into every
network it can reach (SSRF), so it fetches only from the origins its operator listed
(``EDGELOOP_FLEET_ARTIFACT_SOURCE_ORIGINS``; none by default), follows no redirect (one could leave
those origins) and sends no credentials. ``s3://`` URIs are not taken: the controller would read them
with its own bucket credentials, for whoever calls it. MLflow's ``models:/`` and ``runs:/`` URIs are
not either: the controller never imports MLflow; the rollout flow resolves them and uploads.

The bytes go through the same :class:`~fleet.controller.artifacts.interface.Pending` as an upload,
so the digest and signature checks are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from fleet.controller.artifacts.interface import CHUNK, Pending
from fleet.controller.errors import ControllerError


class SourceRefused(ControllerError):
    """The source URL is not one the controller may fetch, or fetching it failed (the API: 422)."""


def origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _shown(url: httpx.URL) -> str:
    """The URL without credentials or query (a presigned URL's signature), for error messages."""
    return f"{origin(url)}{url.path}"


def fetch_into(
    pending: Pending,
    url: str,
    origins: Sequence[str],
    *,
    max_bytes: int,
    timeout_s: float = 60.0,
) -> None:
    """Stream ``url`` into ``pending``; :class:`SourceRefused` when its origin is not one of
    ``origins``, it does not answer 200 with the whole body, or the body passes ``max_bytes`` (an
    upload's limit: a source is no way around it)."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise SourceRefused(f"the source is not a URL: {exc}") from exc
    allowed = sorted({origin(httpx.URL(o)) for o in origins})
    if target.scheme not in ("http", "https") or origin(target) not in allowed:
        where = ", ".join(allowed) or "nowhere (EDGELOOP_FLEET_ARTIFACT_SOURCE_ORIGINS is empty)"
        raise SourceRefused(
            f"the controller does not fetch from {origin(target)}: it fetches artifacts only "
            f"from {where}",
            hint="send the artifact's bytes as the request body instead",
        )
    try:
        with httpx.stream("GET", target, follow_redirects=False, timeout=timeout_s) as answer:
            if answer.status_code != 200:
                raise SourceRefused(f"GET {_shown(target)} answered {answer.status_code}")
            for chunk in answer.iter_bytes(CHUNK):
                if pending.size + len(chunk) > max_bytes:
                    raise SourceRefused(
                        f"GET {_shown(target)} sent more than {max_bytes} bytes, the upload limit"
                    )
                pending.write(chunk)
    except httpx.HTTPError as exc:
        raise SourceRefused(f"GET {_shown(target)} failed: {type(exc).__name__}: {exc}") from exc
