"""Artifacts in and out: the admin's registration (bytes uploaded or fetched into the artifact
store, checked against the signed release claim) and the devices' resumable download.

Why by content: an artifact used to be a path on the controller's host, which only works where the
caller shares that disk, and lets anyone who can write there change what devices download. Now the
bytes come with the request (or from a source URL the operator allowed), are streamed into the store
while hashed (never whole in memory), and are published under their sha256 only after that digest
and the release signature are checked: a refused artifact leaves nothing in the store and no row.

Downloads read the store by sha256 with the same answers as before for a device: ``ETag`` (the
quoted sha256), ``Range`` (206) to resume, ``If-None-Match`` (304). An S3 store configured with
``artifact_redirect_s`` answers 307 to a presigned URL instead, which honours ``Range`` too; the
agent follows that one redirect without its credential (``fleet.agent.download``).

The routes hang off the device router (``routes_devices``), so the app factory needs no change.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fleet.controller.api.auth import Admin, CurrentDevice
from fleet.controller.api.ranges import Unsatisfiable, requested_range
from fleet.controller.api.responses import errors
from fleet.controller.artifacts import (
    ArtifactMissing,
    ArtifactStore,
    ArtifactStoreUnavailable,
    Pending,
    open_store,
)
from fleet.controller.artifacts.interface import CHUNK
from fleet.controller.artifacts.source import SourceRefused, fetch_into
from fleet.controller.storage import store
from fleet.shared.admin_protocol import ArtifactRegistration
from fleet.shared.protocol import Artifact
from fleet.shared.signature import ReleaseClaim, verify_claim

router = APIRouter()

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "the variant's bytes (omit with `source`)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def artifact_store(request: Request) -> ArtifactStore:
    """The app's artifact store, opened from its settings on first use (or set by a test)."""
    state = request.app.state
    found: ArtifactStore | None = getattr(state, "artifact_store", None)
    if found is None:
        found = state.artifact_store = open_store(state.settings)
    return found


def _unavailable(exc: ArtifactStoreUnavailable) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=exc.message)


@router.get(
    "/artifacts/{model}/{version}/{variant}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"content": {"application/octet-stream": {}}},
        304: {},
        307: {"description": "an S3 store's presigned URL (Location); it honours Range"},
        416: {"description": "Range starts at or past the end (Content-Range: bytes */size)"},
        **errors(404, 503),
    },
)
def artifact(
    model: str,
    version: str,
    variant: str,
    request: Request,
    device: CurrentDevice,
) -> Response:
    """The variant's bytes, for devices of its hardware class: ``ETag`` is the quoted sha256,
    ``Range`` resumes a download (206), ``If-None-Match`` answers 304. The database session closes
    before the bytes are sent: a slow download must not hold one of the pool's connections (50
    devices fetching a new version at once exhausted the pool and timed out every other request)."""
    with request.app.state.sessions() as session:
        row = store.artifact_row(session, model, version, variant, device.hardware_class)
        if row is not None:
            session.expunge(row)
    if row is None or not row.signature:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such artifact")
    etag = f'"{row.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0"}
    candidates = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
    if etag in candidates or "*" in candidates:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    artifacts = artifact_store(request)
    try:
        url = artifacts.download_url(row.sha256)
        if url is not None:
            return RedirectResponse(url, status.HTTP_307_TEMPORARY_REDIRECT, headers=headers)
        size = row.size_bytes
        if_range = request.headers.get("if-range")
        wanted = None if if_range and if_range != etag else request.headers.get("range")
        try:
            part = requested_range(wanted, size)
        except Unsatisfiable:
            return Response(
                status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
                headers={**headers, "Content-Range": f"bytes */{size}"},
            )
        start, stop = (0, size) if part is None else (part.start, part.stop)
        chunks = artifacts.read(row.sha256, start, stop)
    except ArtifactMissing as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such artifact") from exc
    except ArtifactStoreUnavailable as exc:
        with request.app.state.sessions() as session:
            store.record_download_error(
                session,
                device.device_id,
                f"{version}/{variant}: {exc.message}",
                request.app.state.clock(),
            )
            session.commit()
        raise _unavailable(exc) from exc
    headers["Content-Length"] = str(stop - start)
    if part is None:
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
    headers["Content-Range"] = part.content_range()
    return StreamingResponse(
        chunks,
        status_code=status.HTTP_206_PARTIAL_CONTENT,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.post(
    "/artifacts",
    response_model=Artifact | None,
    dependencies=[Admin],
    responses=errors(409, 422, 503),
    openapi_extra=UPLOAD_BODY,
)
async def register_artifact(
    claim: Annotated[ArtifactRegistration, Query()], request: Request
) -> Artifact | None:
    """Store the variant's bytes (the request body, or fetched from ``source``) and register them
    for a hardware class. 422, with nothing stored, when the bytes do not hash to ``sha256`` or the
    signature does not verify for the claim; 409 for a signed claim when the controller has no
    registry public key to check it with."""
    public_key_pem: str = request.app.state.settings.public_key_pem()
    if claim.signature is not None and not public_key_pem:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="the controller has no registry public key to check signatures with: "
            "set EDGELOOP_FLEET_PUBLIC_KEY_PATH (the registry's signing-ed25519.pub.pem)",
        )
    if claim.source is not None and _has_body(request):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="send the artifact's bytes or a source URL, not both",
        )
    try:
        pending = await run_in_threadpool(_begin, request, claim.sha256)
        try:
            if claim.source is None:
                await _receive(request, pending)
            else:
                settings = request.app.state.settings
                await run_in_threadpool(
                    partial(
                        fetch_into, pending, claim.source, settings.artifact_source_origins,
                        max_bytes=settings.artifact_upload_max_body_bytes,
                    )
                )  # fmt: skip
            _check(claim, pending, public_key_pem)
            await run_in_threadpool(pending.commit)
        finally:
            await run_in_threadpool(pending.discard)
    except SourceRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.message) from exc
    except ArtifactStoreUnavailable as exc:
        raise _unavailable(exc) from exc
    return await run_in_threadpool(_record, request, claim, pending.size)


def _begin(request: Request, sha256: str) -> Pending:
    """Off the event loop: opening the store (a boto3 client) and a temporary file block."""
    return artifact_store(request).begin(sha256)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    return chunked or (length is not None and length.strip() != "0")


async def _receive(request: Request, pending: Pending) -> None:
    """Stream the request body into ``pending`` a chunk at a time (writes off the event loop)."""
    buffer = bytearray()
    async for data in request.stream():
        buffer += data
        if len(buffer) >= CHUNK:
            await run_in_threadpool(pending.write, bytes(buffer))
            buffer.clear()
    if buffer:
        await run_in_threadpool(pending.write, bytes(buffer))


def _check(claim: ArtifactRegistration, pending: Pending, public_key_pem: str) -> None:
    """Refuse (422, nothing stored) bytes that are not the claim's, and a claim the fleet key did
    not sign: the controller checks what it is handed, so devices are never offered anything else."""
    if pending.sha256 != claim.sha256:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"the {pending.size} bytes received have sha256 {pending.sha256}, the claim for "
            f"{claim.model} version {claim.version} variant {claim.variant} says {claim.sha256}: "
            "the bytes changed on the way or are another file; nothing was stored",
        )
    if claim.signature is None:
        return
    release = ReleaseClaim(
        model=claim.model,
        version=claim.version,
        variant=claim.variant,
        sha256=claim.sha256,
        release=claim.release,
    )
    try:
        valid = verify_claim(public_key_pem.encode(), release, claim.signature)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"registry public key: {exc}") from exc
    if not valid:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"the signature does not verify for {release.describe()} with sha256 "
            f"{release.sha256}: the file, its names or its release are not what the registry "
            "signed; nothing was stored",
        )


def _record(request: Request, claim: ArtifactRegistration, size_bytes: int) -> Artifact | None:
    with request.app.state.sessions() as session:
        return store.register_artifact(
            session,
            model=claim.model,
            version=claim.version,
            variant=claim.variant,
            hardware_class=claim.hardware_class,
            sha256=claim.sha256,
            size_bytes=size_bytes,
            signature=claim.signature,
            release=claim.release,
            now=request.app.state.clock(),
        )
