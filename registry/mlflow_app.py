"""``mlflow server --app-name edgeloop-auth``: MLflow's basic-auth app plus the promotion authority.

MLflow's basic-auth app (``--app-name basic-auth``) gives every request a user and checks MLflow's
own permissions. On top of it this app lets only the promoters of
:class:`registry.promotion_authority.PromotionAuthority` set or delete ``production`` or set the force
tag (403 for anyone else, admins included), records who did on the version, and refuses any
client's write of those records. The hook runs after basic-auth's own (registration order), so
``request.authorization`` is the authenticated user; it writes the record before MLflow's handler
moves the alias, so the webhook that handler fires finds it. Registered as an ``mlflow.app`` entry
point in pyproject.toml.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from registry import tags as tag
from registry.promotion_authority import PromotionAuthority, record
from registry.publish import PRODUCTION

log = logging.getLogger("edgeloop.promotion")
_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
_ALIAS = "registered-models/alias"
_SET_TAG = "model-versions/set-tag"
_DELETE_TAG = "model-versions/delete-tag"
_RECORDS = {tag.PROMOTED_BY, tag.FORCED_BY}


def create_app() -> Any:
    """The MLflow server app: basic-auth, then :func:`promotion_hook`."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth

    served = basic_auth(flask_app)
    flask_app.before_request(promotion_hook)
    return served


def _call(path: str) -> str | None:
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


def _params() -> dict[str, Any]:
    from flask import request

    body = request.get_json(silent=True) if request.is_json else None
    return {**request.args.to_dict(), **(body if isinstance(body, dict) else {})}


def _refuse(message: str) -> Any:
    from flask import jsonify

    response = jsonify({"error_code": "PERMISSION_DENIED", "message": message})
    response.status_code = 403
    return response


def _roles(username: str) -> list[str]:
    from mlflow.server.auth import store

    user = store.get_user(username)
    return [role.name for role in store.list_user_roles(user.id)]


def _write(name: str, version: str, key: str, value: str) -> None:
    """Record on the version; a version that does not exist is left to MLflow's handler to refuse."""
    from mlflow.entities.model_registry import ModelVersionTag
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_model_registry_store

    try:
        _get_model_registry_store().set_model_version_tag(
            name, version, ModelVersionTag(key, value)
        )
    except MlflowException:
        log.info("no record on %s v%s: MLflow's handler answers the call", name, version)


def promotion_hook() -> Any:
    """None lets the request through; a response refuses it."""
    from flask import request

    call = _call(request.path)
    if call not in {_ALIAS, _SET_TAG, _DELETE_TAG}:
        return None
    params = _params()
    key = str(params.get("key", ""))
    if call != _ALIAS and key in _RECORDS:
        return _refuse(f"the tag {key} is written by the MLflow server alone")
    moves_production = call == _ALIAS and params.get("alias") == PRODUCTION
    forces = call == _SET_TAG and key == tag.PROMOTE_FORCE
    claims = call == _SET_TAG and key == tag.PROMOTE_ROLLOUT  # it silences the listener
    if not (moves_production or forces or claims):
        return None
    authority = PromotionAuthority()
    if not authority.configured:
        return None
    user = request.authorization.username if request.authorization else ""
    if not user or not authority.allows(user, _roles(user)):
        log.warning("refused %s by %r on %s", call, user, params.get("name"))
        what = (
            "move production" if moves_production else "force a promotion" if forces
            else "claim a rollout"
        )  # fmt: skip
        return _refuse(
            f"{user or 'an anonymous user'} may not {what}: promoters are "
            f"{authority.named()} (EDGELOOP_PROMOTION_USERS / _ROLES of the MLflow server)"
        )
    name, version = str(params.get("name", "")), str(params.get("version", ""))
    if moves_production and request.method == "POST" and name and version:
        _write(name, version, tag.PROMOTED_BY, record(user, time.time()))
    if forces and name and version:
        _write(name, version, tag.FORCED_BY, record(user, time.time()))
    return None
