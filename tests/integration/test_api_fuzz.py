"""API fuzzing of a real controller process from its own OpenAPI document (Schemathesis), on SQLite
and on PostgreSQL.

Schemathesis reads ``/openapi.json`` from the controller under uvicorn and sends every operation
requests generated from the document: valid ones (positive) and ones that break it (negative). Admin
operations carry the admin token; a device's operations carry the credential of a device enrolled
for that operation, with ``device_id`` in the path set to that device, so the requests get past
authentication and exercise the parameters and bodies. Every answer must

- not be a server error (5xx): a request the controller cannot handle is its bug, whatever it sent;
- have a status code the document lists for the operation, with a body (and content type and
  headers) that conform to what the document says for that status.

The run is reproducible (Hypothesis derandomized: the same requests every run) and small (a few
examples per operation and mode), so it stays a test of the suite rather than a fuzzing campaign.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
from servers import ADMIN_HEADERS

pytestmark = pytest.mark.integration

EXAMPLES = 20
"""Generated requests per operation and mode (positive, negative)."""


@pytest.fixture
def hypothesis_as_it_was(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Schemathesis patches Hypothesis for the whole process the first time it builds a strategy
    (a no-op pretty printer, a larger buffer): put it back afterwards, so the property tests that
    run after this one in the same worker print their failing examples and draw as before."""
    from hypothesis import core
    from hypothesis.internal import entropy
    from hypothesis.internal.conjecture import engine
    from hypothesis.strategies._internal import collections
    from hypothesis.strategies._internal import core as strategies_core

    for module, name in (
        (core, "RepresentationPrinter"),
        (core, "BUFFER_SIZE"),
        (engine, "BUFFER_SIZE"),
        (collections, "BUFFER_SIZE"),
        (strategies_core, "is_first_param_referenced_in_function"),
        (entropy, "register_random"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))
    from schemathesis.generation.hypothesis import setup

    monkeypatch.setattr(setup, "_is_patched", False, raising=False)
    yield


def enrolled_device(base: str, device_id: str) -> dict[str, str]:
    token = httpx.post(f"{base}/v1/enrolment-tokens", json={"uses": 1}, headers=ADMIN_HEADERS)
    assert token.status_code == 200, token.text
    body = {"token": token.json()["token"], "device_id": device_id, "hardware_class": "host-cpu"}
    answer = httpx.post(f"{base}/v1/enrol", json=body)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['credential']}"}


def is_device_operation(path: str, method: str) -> bool:
    """A device's own paths and the artifact download take a device credential; the rest of the
    secured operations take the admin token."""
    return "{device_id}" in path or (method == "GET" and path.startswith("/v1/artifacts/"))


def fuzz(
    operation: Any,
    mode: Any,
    base: str,
    http: Any,
    headers: dict[str, str],
    path_parameters: dict[str, str] | None,
    findings: dict[tuple[str, str, int], str],
    statuses: set[int],
) -> None:
    """Send ``EXAMPLES`` requests of ``mode`` to ``operation``; add each distinct failure (operation,
    check, status) to ``findings`` and each status seen to ``statuses``. Failures are collected,
    not raised, so one run lists them all (and Hypothesis spends no time shrinking)."""
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    strategy = operation.as_strategy(
        generation_mode=mode, headers=headers, path_parameters=path_parameters
    )

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=strategy)
    def send(case: Any) -> None:
        response = case.call(base_url=base, session=http, timeout=30)
        statuses.add(response.status_code)
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (operation.label, failure.title, response.status_code)
                if key in findings:
                    continue
                curl = case.as_curl_command(headers=dict(response.request.headers))
                findings[key] = (
                    f"{mode.value}: {failure.title} ({failure.code}) {failure.message}\n"
                    f"  {curl}\n  -> {response.status_code} {response.text[:300]}"
                )

    try:
        send()
    except Unsatisfiable:
        # The tool has no invalid request to make: with the credential and device_id fixed, what
        # is left of the operation (nothing, or free-form path strings) admits any value. Not a
        # finding about the controller.
        assert mode.is_negative, operation.label


def test_no_server_error_and_every_answer_as_documented(
    controller_on_each_db: str, hypothesis_as_it_was: None
) -> None:
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    base = controller_on_each_db
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=schemathesis.Config())
    operations = [result.ok() for result in schema.get_all_operations()]
    findings: dict[tuple[str, str, int], str] = {}
    statuses: dict[str, set[int]] = {}
    started = time.monotonic()
    with requests.Session() as http:
        for n, operation in enumerate(operations):
            headers: dict[str, str] = {}
            path_parameters = None
            if is_device_operation(operation.path, operation.method.upper()):
                device_id = f"fuzz-{n}"  # a device per operation: retiring devices is fuzzed too
                headers = enrolled_device(base, device_id)
                if "{device_id}" in operation.path:
                    path_parameters = {"device_id": device_id}
            elif operation.definition.raw.get("security"):
                headers = dict(ADMIN_HEADERS)
            seen = statuses.setdefault(operation.label, set())
            for mode in GenerationMode:
                fuzz(operation, mode, base, http, headers, path_parameters, findings, seen)
    elapsed = time.monotonic() - started

    assert not findings, f"{len(findings)} finding(s) in {elapsed:.0f} s:\n\n" + "\n\n".join(
        f"{label} -> {status}: {text}" for (label, _, status), text in sorted(findings.items())
    )
    # The run means something only if the requests got past authentication (a 401 from enrol is
    # its answer to a made-up enrolment token).
    refused = {
        label: sorted(seen & {401, 403})
        for label, seen in statuses.items()
        if seen & {401, 403} and label != "POST /v1/enrol"
    }
    assert not refused, refused
