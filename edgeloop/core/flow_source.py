"""Where the workers of a Prefect work pool find a flow's code: the one setting both kinds of pool use.

``placement.source`` (training pools) and ``gates.runner_source`` (hardware pools ``hw-<profile>``)
are each a :data:`FlowSource`:

- unset or ``package`` (the default): the installed ``edgeloop`` package. The deployment names the
  flow by module path and has no pull step, so a worker imports it from its own environment
  (``pip install 'edgeloop[runner]'`` on a device, the trainer image on a training host).
- a git URL (``https://…``, ``ssh://…``, ``git@host:org/repo.git``, ``file://…``), optionally
  ``#<branch>``: each flow run clones it first, and runs the flow from the clone.
- ``checkout``: this checkout's folder on the deploying host, for a worker on the same host only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

PACKAGE = "package"
CHECKOUT = "checkout"
_GIT_URL = re.compile(r"^(?:(?:https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+)$")


@dataclass(frozen=True)
class FlowCode:
    """A parsed :data:`FlowSource`: its kind, and for ``git`` the URL and the branch (none: the
    repository's default branch)."""

    kind: Literal["package", "git", "checkout"]
    url: str = ""
    branch: str | None = None


def parse_flow_source(value: str | None) -> FlowCode:
    """The flow code ``value`` names; raises ``ValueError`` saying what is accepted."""
    if value is None or value == PACKAGE:
        return FlowCode("package")
    if value == CHECKOUT:
        return FlowCode("checkout")
    url, _, branch = value.partition("#")
    if not _GIT_URL.match(url) or (_ and not branch):
        raise ValueError(
            f"{value!r} is not a flow source: use 'package' (the installed edgeloop, the default), "
            "a git URL (https://, ssh://, git@host:path, file://; '#branch' optional) or 'checkout'"
        )
    return FlowCode("git", url=url, branch=branch or None)


def _checked(value: str | None) -> str | None:
    parse_flow_source(value)
    return value


FlowSource = Annotated[
    str | None,
    AfterValidator(_checked),
    Field(
        description="where the pool's workers find the flow code: 'package' or none (the "
        "installed edgeloop), a git URL ('#branch' optional), or 'checkout' (this folder, a "
        "worker on this host only)"
    ),
]
