"""Where the fleet controller listens and where its admin token lives: one answer for every command.

``edgeloop fleet demo`` and ``edgeloop serve`` write both to ``<home>/fleet.json`` when they start a
controller; every command that talks to it (``rollout status|pause|resume|abort``, ``promote``,
``fleet token create``, ``fleet pull-field-data``) reads them back:

* the address: ``--url``, else ``fleet.json``, else params.yaml's ``rollout.controller_url``;
* the admin token: ``EDGELOOP_FLEET_ADMIN_TOKEN``, else the file ``fleet.json`` names.

Every error says which address was tried and where it came from, and where the token is looked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edgeloop.core.errors import ConfigError
from edgeloop.core.settings import Settings

ADMIN_TOKEN_ENV = "EDGELOOP_FLEET_ADMIN_TOKEN"
FILE_NAME = "fleet.json"


class FleetAddress(BaseModel):
    """The controller a command talks to, and where that answer came from."""

    url: str
    source: str
    token_file: Path | None = None


def address_file(settings: Settings) -> Path:
    return settings.home / FILE_NAME


def record(settings: Settings, url: str, token_file: Path, written_by: str) -> Path:
    """Say where the controller ``written_by`` started listens and where its token is (0600)."""
    path = address_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"url": url, "token_file": str(token_file.resolve()), "written_by": written_by}
    path.write_text(json.dumps(body, indent=2) + "\n")
    path.chmod(0o600)
    return path


def forget(settings: Settings, written_by: str) -> None:
    """Remove the record when ``written_by`` wrote it (its controller stopped)."""
    path = address_file(settings)
    try:
        if json.loads(path.read_text()).get("written_by") == written_by:
            path.unlink()
    except (OSError, ValueError):
        return


def resolve(settings: Settings, url: str | None = None) -> FleetAddress:
    """The controller's address for a command (see the module docstring)."""
    path = address_file(settings)
    recorded: dict[str, str] = {}
    if path.is_file():
        try:
            recorded = dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path} is not readable JSON: {exc}",
                hint=f"delete {path}; `edgeloop fleet demo` or `edgeloop serve` writes it again",
            ) from exc
    token_file = Path(recorded["token_file"]) if recorded.get("token_file") else None
    if url:
        return FleetAddress(url=url, source="--url", token_file=token_file)
    if recorded.get("url"):
        by = recorded.get("written_by", "a controller")
        return FleetAddress(url=recorded["url"], source=f"{path} ({by})", token_file=token_file)
    from edgeloop.core.params import load_params

    try:
        configured = load_params(settings.params_file).rollout.controller_url
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"no controller address: {exc}", hint="pass --url or fix params.yaml"
        ) from exc
    return FleetAddress(url=configured, source=f"{settings.params_file} rollout.controller_url")


def admin_token(settings: Settings, address: FleetAddress | None = None) -> str:
    """The admin token: ``EDGELOOP_FLEET_ADMIN_TOKEN``, else the file ``fleet.json`` names."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    address = address or resolve(settings)
    if address.token_file is not None and address.token_file.is_file():
        token = address.token_file.read_text().strip()
        if token:
            return token
    where = f" or the file {address.token_file}" if address.token_file else ""
    raise ConfigError(
        f"no admin token for the fleet controller at {address.url} ({address.source})",
        hint=f"set {ADMIN_TOKEN_ENV}{where}; `edgeloop fleet demo` and `edgeloop serve` write "
        f"theirs and record it in {address_file(settings)}",
    )


def unreachable_hint(address: FleetAddress) -> str:
    """What to say when the controller at ``address`` does not answer."""
    return (
        f"tried {address.url} (from {address.source}); start a controller (`make demo`, "
        "`edgeloop serve` or `edgeloop fleet serve`) or pass --url"
    )
