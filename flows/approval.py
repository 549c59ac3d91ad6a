"""A person's word before a retrained candidate becomes production (``schedule.approval: true``).

The scheduled or fleet-triggered retrain pauses its own flow run (Prefect's ``pause_flow_run``,
waiting for an :class:`Approval`) after it has shown what it knows (a Prefect markdown artifact:
the candidate, production, the comparison). The version records which run waits
(:data:`registry.tags.PROMOTE_WAITING`), so a person answers from the Prefect UI (the paused run's
"Resume" form) or with ``edgeloop approve MODEL VERSION [--reject] [--note ...]``
(:func:`answer`). No answer within ``schedule.approval_timeout_s``: nothing is promoted, and the
run says so.

Who may answer is whoever may resume runs on the Prefect API; the promotion itself is then made by
the retrain's worker, under the promotion authority of the MLflow server when one is configured.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.input import RunInput

from edgeloop.core.errors import EdgeloopError
from registry import tags as tag

if TYPE_CHECKING:
    from mlflow import MlflowClient


class Approval(RunInput):
    """What a person answers to a paused retrain."""

    approve: bool
    note: str = ""


class ApprovalError(EdgeloopError):
    """No retrain waits for an answer about this version, or Prefect refused the answer."""


def ask(
    client: MlflowClient,
    model: str,
    version: str,
    what: str,
    *,
    timeout_s: int,
    poll_s: int = 5,
) -> Approval | None:
    """Pause this flow run until a person answers about ``version`` (None: no answer in time)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    run = get_run_context().flow_run  # type: ignore[union-attr]
    assert run is not None
    waiting = json.dumps({"flow_run_id": str(run.id), "since": round(time.time(), 3)})
    client.set_model_version_tag(model, version, tag.PROMOTE_WAITING, waiting)
    create_markdown_artifact(
        key=f"approval-{model}-v{version}".lower()[:100],
        markdown=(
            f"# {model} v{version} waits for a person\n\n{what}\n\nResume this run from its page "
            f"(approve: true or false), or run `edgeloop approve {model} {version}` "
            f"(`--reject` to refuse) within {timeout_s} s."
        ),
        description=f"{model} v{version}: approve or reject",
    )
    try:
        return pause_flow_run(wait_for_input=Approval, timeout=timeout_s, poll_interval=poll_s)
    except FlowPauseTimeout:
        return None
    finally:
        client.delete_model_version_tag(model, version, tag.PROMOTE_WAITING)


def answer(client: MlflowClient, model: str, version: str, approve: bool, note: str = "") -> str:
    """Resume the run that waits about ``version``; returns its id."""
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    found = client.get_model_version(model, version).tags.get(tag.PROMOTE_WAITING)
    if not found:
        raise ApprovalError(
            f"no retrain waits for an answer about {model} v{version}",
            hint="a retrain waits only with schedule.approval: true, until it times out",
        )
    run_id = str(json.loads(found)["flow_run_id"])
    try:
        resume_flow_run(UUID(run_id), run_input={"approve": approve, "note": note})
    except (ObjectNotFound, RuntimeError) as exc:
        raise ApprovalError(
            f"Prefect did not resume flow run {run_id} for {model} v{version}: {exc}",
            hint="check PREFECT_API_URL; a run that timed out can no longer be resumed",
        ) from exc
    return run_id
