"""``GET /v1/outcomes?after=&limit=``: how rollouts ended, as an ordered, resumable feed (admin).

The registry follower (``edgeloop registry follow``) pages through it with the id of the last
outcome it applied, so a follower that was down for a day, or restarted, resumes where it stopped;
the controller never calls the registry. Ordered by the feed id, which has no gaps
(``storage.outcomes``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet.controller.api.auth import Admin, SessionDep
from fleet.controller.storage import outcomes
from fleet.shared.admin_protocol import OutcomeEntry, OutcomePage
from fleet.shared.protocol import MAX_DB_INT

router = APIRouter(dependencies=[Admin])
MAX_PAGE = 1000
ROLLOUT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@router.get("/outcomes", response_model=OutcomePage)
def list_outcomes(
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    rollout_id: Annotated[str | None, Query(pattern=ROLLOUT_ID, max_length=256)] = None,
) -> OutcomePage:
    """Outcomes after the feed id ``after``, oldest first; with ``rollout_id``, that rollout's
    only (the rollout flow reads the outcome of the rollout it followed)."""
    rows = outcomes.outcomes_after(session, after, limit, rollout_id)
    return OutcomePage(
        outcomes=[OutcomeEntry.model_validate(r, from_attributes=True) for r in rows],
        last=rows[-1].id if rows else after,
        head=outcomes.head(session),
    )
