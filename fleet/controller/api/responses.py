"""The controller's error answers as its OpenAPI document lists them, so the document is a contract a
client can code against (tests/integration/test_api_fuzz.py holds a running controller to it).

An error has one of two bodies. A request that does not parse (a field, a parameter, the JSON) is
FastAPI's validation error, ``{"detail": [{"loc", "msg", "type"}, ...]}`` (:class:`InvalidRequest`);
a refusal of the controller is ``{"detail": "..."}``, from an ``HTTPException`` or, with ``reason``
and ``hint``, from a store error in ``app`` (:class:`ErrorDetail`). A route lists the refusals its
handler makes with ``responses=errors(404, 409, ...)``; a 422 it can answer either way is
``errors(422)``. The answers that follow from how a route is built are added to every route by
:func:`add_implied_errors`: a JSON body that is not UTF-8 is a 400 (FastAPI's "There was an error
parsing the body"), a body over the route's size limit a 413 (``body_limits``, before it is read),
and a route behind the bearer scheme (the admin token or a device credential) answers 401.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    """A refusal: what is wrong, and for a store error why and what to do about it."""

    model_config = ConfigDict(extra="forbid")

    detail: str
    reason: str | None = None
    hint: str | None = None
    command: str | None = None
    phase: str | None = None


class InvalidField(BaseModel):
    """One problem of a request that does not parse (FastAPI's ``ValidationError``)."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class InvalidRequest(BaseModel):
    """FastAPI's answer to a request that does not parse (its ``HTTPValidationError``)."""

    detail: list[InvalidField]


_WHY = {
    400: "The body is not UTF-8 text, so not JSON",
    401: "No credential, or one the controller does not know (a retired device's included)",
    403: "A device credential on another device's path",
    404: "Nothing by that name",
    409: "Refused in the current state (see detail and reason)",
    413: "The body is over this route's size limit (the detail names it): refused before it "
    "was read, nothing stored",
    422: "The request does not parse, or the controller refuses its values (see detail)",
    503: "The artifact store did not answer or refused the controller; nothing was stored",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that answers ``codes``; a 422 may carry either body."""
    return {
        code: {
            "model": InvalidRequest | ErrorDetail if code == 422 else ErrorDetail,
            "description": _WHY[code],
        }
        for code in codes
    }


_REF = "#/components/schemas/ErrorDetail"
_BODY_METHODS = ("post", "put", "patch")


def add_implied_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add to each operation of the ``openapi`` document the errors that follow from its shape (400
    with a request body, 401 behind a security scheme, 413 with a body or a method that sends one:
    a route that reads its body itself declares none) where the route does not list them itself."""
    implied = False
    for path_item in openapi.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            sends_body = "requestBody" in operation or method in _BODY_METHODS
            for code, applies in (
                (400, "requestBody" in operation),
                (401, "security" in operation),
                (413, sends_body),
            ):
                if applies and str(code) not in operation["responses"]:
                    implied = True
                    operation["responses"][str(code)] = {
                        "description": _WHY[code],
                        "content": {"application/json": {"schema": {"$ref": _REF}}},
                    }
    if implied:
        schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorDetail", ErrorDetail.model_json_schema(mode="serialization"))
    return openapi
