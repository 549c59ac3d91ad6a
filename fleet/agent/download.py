"""Resumable download of one artifact to a file: what a device on a flaky link needs.

Why a module of its own: a model is megabytes over links that drop; starting over on every drop may
never finish. This is the one place that knows HTTP ranges. A partial file is continued with
``Range: bytes=<size>-`` and appended to on a ``206`` whose ``Content-Range`` starts where the file
ends; a ``200`` (the server ignored the range) starts the file over; a ``416`` or a range that starts
elsewhere throws the partial file away. A transport error or a short body keeps what arrived, so the
next attempt (in this call, after a back-off, or in a later call after the device came back online)
resumes. The final size must equal the announced size; the content itself is checked later, by
``SlotManager`` (sha256, then the ed25519 signature), before anything serves.

It works on an ``httpx.Client`` the caller owns (``ControllerClient`` passes its own, with its TLS
settings and its transport) and a ``check`` that turns an error status into the caller's typed error.

A controller whose artifacts live in object storage may answer a download with a redirect (307) to a
presigned URL. The client follows redirects nowhere else; here it follows that one hop, once per
attempt, when the caller passes ``redirect`` (which vets the target and says which headers go there:
never the device credential to another origin). The ``Range`` header goes along, and every attempt
asks the controller again, so an expired URL is replaced and a resume works the same either way.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fleet.agent.errors import ControllerCallFailed, ControllerUnreachable, DownloadFailed
from fleet.shared.backoff import backoff_delay

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Retry(Exception):
    """This attempt failed in a way another attempt may fix."""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def range_start(header: str) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/n`` header, or None when it does not parse."""
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(1)) if match else None


def download_resumable(
    http: httpx.Client,
    url: httpx.URL,
    dest: Path,
    expected_size: int,
    *,
    headers: dict[str, str],
    check: Callable[[httpx.Response], None],
    version: str,
    retries: int = 4,
    backoff_s: float = 0.5,
    backoff_max_s: float = 30.0,
    sleep: Callable[[float], object] = time.sleep,
    redirect: Callable[[httpx.URL], dict[str, str]] | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` until it holds ``expected_size`` bytes; returns ``dest``.

    ``check`` raises for an error status (called after the body is read). Transport errors, short
    bodies and what ``check`` raises as :class:`ControllerUnreachable` (5xx) are retried up to
    ``retries`` times with exponential back-off; any other :class:`ControllerCallFailed` from ``check``
    propagates at once. Raises :class:`DownloadFailed` when the retries are spent. With
    ``redirect``, a redirect answer is followed one hop to its ``Location``, with the headers
    ``redirect(target)`` returns (it raises to refuse the target).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_delay(attempt, initial_s=backoff_s, max_s=backoff_max_s))
        try:
            _attempt(http, url, dest, expected_size, headers, check, redirect)
            return dest
        except (_Retry, ControllerUnreachable) as exc:
            last = exc
            log.info("download of %s, attempt %d: %s", version, attempt + 1, exc)
        except httpx.TransportError as exc:
            last = ControllerUnreachable(f"{type(exc).__name__}: {exc}")
            last.__cause__ = exc
            log.info("download of %s, attempt %d: %s", version, attempt + 1, last)
    received = file_size(dest)
    raise DownloadFailed(
        f"could not download {version} whole after {retries + 1} attempt(s) "
        f"({received} of {expected_size} bytes): {last}",
        version=version,
        received=received,
        expected=expected_size,
    ) from last


REDIRECTS = (301, 302, 303, 307, 308)


def _attempt(
    http: httpx.Client,
    url: httpx.URL,
    dest: Path,
    expected: int,
    headers: dict[str, str],
    check: Callable[[httpx.Response], None],
    redirect: Callable[[httpx.URL], dict[str, str]] | None,
) -> None:
    have = file_size(dest)
    if have > expected:  # not a prefix of this artifact: start over
        dest.unlink()
        have = 0
    if have == expected:
        return  # complete from an earlier attempt; the sha256 check decides whether it is right
    wanted = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers={**headers, **wanted}) as response:
        location = response.headers.get("location")
        if redirect is None or response.status_code not in REDIRECTS or not location:
            _save(response, dest, have, expected, check)
        else:
            response.read()
            target = url.join(location)
            with http.stream("GET", target, headers={**redirect(target), **wanted}) as hop:
                _save(hop, dest, have, expected, _object_store_refused)
    got = file_size(dest)
    if got > expected:
        dest.unlink()
        raise _Retry(f"the server sent more than the {expected} bytes announced; starting over")
    if got < expected:
        raise _Retry(f"the body ended at {got} of {expected} bytes")


def _object_store_refused(response: httpx.Response) -> None:
    """A redirect target's error: retried (the next attempt asks the controller for a fresh URL)."""
    raise _Retry(f"{response.url.host} answered {response.status_code} to the redirected download")


def _save(
    response: httpx.Response,
    dest: Path,
    have: int,
    expected: int,
    check: Callable[[httpx.Response], None],
) -> None:
    """Write the body to ``dest``: appended after ``have`` bytes on a 206 that starts there, from
    the first byte on a 200."""
    if response.status_code == 416:  # the partial file does not fit the artifact
        dest.unlink(missing_ok=True)
        raise _Retry("range not satisfiable; starting over")
    if response.status_code >= 300:
        response.read()
        check(response)
        raise ControllerCallFailed(
            f"artifact download answered {response.status_code}",
            status_code=response.status_code,
        )
    if response.status_code == 206:
        start = range_start(response.headers.get("Content-Range", ""))
        if start != have:
            dest.unlink(missing_ok=True)
            raise _Retry(f"asked for bytes from {have}, got a range from {start}; starting over")
        mode = "ab"
    else:
        mode = "wb"  # a 200: the whole artifact, from its first byte
    with dest.open(mode) as fh:
        # iter_bytes() yields what arrived; a chunk size would buffer it and lose it on a drop
        for chunk in response.iter_bytes():
            fh.write(chunk)
            if fh.tell() > expected:
                break
