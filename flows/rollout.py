"""The rollout flow: take ``models:/NAME@production`` to the fleet and follow it to the end.

It publishes the version's signed variant for each hardware class to the fleet controller (the one
each hardware profile chose), creates the rollout with the policy from params.yaml, starts it, follows
it to a terminal phase while publishing progress as Prefect artifacts, and writes the outcome back to
the registry (``registry.outcomes``): a rolled-back version loses ``production`` again. The
registry follower (``registry.follower``) writes the same outcome from the controller's feed, also
when this flow is killed; the flow writes the reason the controller recorded, so the two agree.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.params import Params, load_params
from edgeloop.core.settings import Settings
from fleet.admin import AdminClient, AdminError, admin_token_from_env
from fleet.controller.rollout.decide import RolloutStatus, Transition
from fleet.controller.rollout.policy import RolloutPolicy, load_policy
from fleet.controller.rollout.stats import GateResult
from fleet.shared.admin_protocol import (
    ArtifactRegistration,
    OutcomeEntry,
    RolloutDetail,
    RolloutRequest,
    RolloutSummary,
)
from fleet.shared.profile import load_profile
from fleet.shared.signature import file_sha256
from registry import tags as tag
from registry.outcomes import record_outcome
from registry.tracking import connect

TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}


class RolloutError(EdgeloopError):
    """Raised by the rollout flow when a rollout cannot be created or followed."""


class RolloutOutcome(BaseModel):
    """What the rollout flow returns: how the rollout ended and why (``rollout_id`` is ``baseline``
    for a model's first release, which has no rollout). Its JSON goes into the demo's run summary."""

    model_config = ConfigDict(frozen=True)

    rollout_id: str
    model: str
    version: str
    stable_version: str | None
    outcome: str = Field(description="the terminal phase: succeeded, rolled_back, failed, aborted")
    reason: str
    causes: tuple[GateResult, ...] = Field((), description="the gates that failed")
    history: tuple[Transition, ...] = ()


def publish_variants(
    client: Any, admin: AdminClient, model: str, version: str, classes: list[str]
) -> dict[str, str]:
    """Upload the signed variant each class takes to the controller; ``{class: variant}``.

    Each variant is downloaded from the registry into a temporary folder, checked against the
    sha256 the registry recorded, and streamed to the controller with its signed claim: the
    controller stores it by content and checks the digest and the signature again."""
    import mlflow

    found = client.get_model_version(model, version)
    tags, run_id = found.tags, found.run_id
    chosen: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgeloop-publish-") as tmp:
        for cls in classes:
            variant = tags.get(tag.hw_variant(cls)) or tags.get(tag.VARIANT)
            signature = tags.get(tag.variant_signature(variant)) if variant else None
            if not variant or not signature:
                raise RolloutError(
                    f"{model} v{version} has no signed variant for hardware class {cls!r}",
                    hint="register it through `edgeloop run` / `edgeloop register`, which sign every variant",
                )
            path = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=f"variants/{variant}.onnx", dst_path=tmp
                )
            )
            recorded, actual = tags.get(tag.variant_sha256(variant)), file_sha256(path)
            if actual != recorded:
                raise RolloutError(
                    f"{model} v{version} variant {variant}: the artifact store holds a file with "
                    f"sha256 {actual}, the registry recorded {recorded}; nothing was published",
                    hint="the artifact store was changed after registration: do not deploy it; "
                    "register the model again",
                )
            claim = ArtifactRegistration(
                model=model, version=version, variant=variant, hardware_class=cls,
                sha256=actual, signature=signature, release=int(version),
            )  # fmt: skip
            admin.register_artifact(claim, path)
            chosen[cls] = variant
    return chosen


def policy_for(params: Params, settings: Settings) -> RolloutPolicy:
    """params.yaml's rollout policy with one cohort per required profile, at its p95 budget."""
    cohorts: dict[str, dict[str, object]] = {}
    for name in params.gates.profiles:
        budget = load_profile(name, settings.profiles_dir).budgets.p95_latency_ms
        cohorts[name] = {"p95_latency_ms": budget or 1000.0}
        if params.rollout.required_gates is not None:
            cohorts[name]["required"] = params.rollout.required_gates
    raw = {
        "cohorts": cohorts,
        "stages": params.rollout.stages,
        "gates": params.rollout.gates,
        "shadow": params.rollout.shadow,
        "on_inconclusive": params.rollout.on_inconclusive,
    }
    return load_policy(raw)


def _progress(detail: RolloutDetail) -> str:
    status = RolloutStatus.model_validate(detail.status) if detail.status else None
    lines = [
        f"# Rollout {detail.rollout_id}: {detail.model} v{detail.version}",
        "",
        f"phase **{detail.phase}**, stage {detail.stage}; {detail.reason or ''}",
        "",
        "| cohort | targeted | confirmed | inferences | feedback | gates |",
        "|---|---|---|---|---|---|",
    ]
    check = status.last_check if status is not None else None
    for cohort in check.cohorts if check is not None else ():
        gates = "; ".join(f"{g.gate} {g.verdict} ({g.measured})" for g in cohort.gates)
        lines.append(
            f"| {cohort.hardware_class} | {cohort.targeted} | {cohort.confirmed}"
            f"/{cohort.required_confirmed} | {cohort.inferences} | {cohort.feedback} | {gates} |"
        )
    return "\n".join(lines)


UNREACHABLE_S = 120.0
"""How long :func:`follow` goes on when the controller gives no answer: a replica behind a load
balancer may die mid-request and another take over, and a restarted controller comes back."""


def _transient(exc: AdminError) -> bool:
    """No answer at all, or a proxy's word that no replica answered: worth asking again."""
    return exc.status == 0 or exc.status in (502, 503, 504)


def follow(
    admin: AdminClient,
    rollout_id: str,
    poll_s: float,
    deadline_s: float,
    *,
    unreachable_s: float = UNREACHABLE_S,
    warn: Callable[[str], None] = lambda _message: None,
) -> RolloutDetail:
    """Poll until the rollout is terminal; publish each change as a Prefect artifact.

    A read that gets no answer is tried again each ``poll_s`` (and ``warn``-ed) for up to
    ``unreachable_s`` seconds in a row; then, and on any refusal, the ``AdminError`` is raised. The
    rollout goes on on the controller either way: this only follows it."""
    started = time.monotonic()
    seen: tuple[str, str] | None = None
    aborted = False
    failing_since: float | None = None
    while True:
        try:
            detail = admin.rollout(rollout_id)
        except AdminError as exc:
            now = time.monotonic()
            failing_since = failing_since if failing_since is not None else now
            if not _transient(exc) or now - failing_since > unreachable_s:
                raise
            warn(f"no answer from the controller for {now - failing_since:.0f} s ({exc}); again")
            time.sleep(poll_s)
            continue
        failing_since = None
        key = (detail.phase, detail.stage)
        if key != seen:
            seen = key
            create_markdown_artifact(
                markdown=_progress(detail), key=f"rollout-{rollout_id}"[:100].lower(),
                description=f"{detail.phase} at stage {detail.stage}",
            )  # fmt: skip
        if detail.phase in TERMINAL:
            return detail
        if not aborted and time.monotonic() - started > deadline_s:
            aborted = True  # once: the controller rolls back; this loop follows it to the end
            try:
                admin.command(
                    rollout_id, "abort", f"the rollout flow's deadline of {deadline_s:g} s passed"
                )
            except AdminError as exc:
                if exc.status != 409:  # 409: it is already ending on its own
                    raise
        time.sleep(poll_s)


def _first_release(
    client: Any, admin: AdminClient, settings: Settings, model: str, version: str
) -> RolloutOutcome:
    """No stable version to compare against: the version becomes the fleet's baseline directly."""
    changed = admin.set_baseline(model, version).devices_changed
    reason = (
        f"first release of {model}: the baseline of every device, {changed} enrolled now "
        "(devices that enrol later get it too)"
    )
    record_outcome(
        client, model=model, version=version, stable_version=None, outcome="succeeded",
        reason=reason, causes=[], cards_dir=settings.model_cards_dir,
    )  # fmt: skip
    return RolloutOutcome(
        rollout_id="baseline", model=model, version=version, stable_version=None,
        outcome="succeeded", reason=reason,
    )  # fmt: skip


def same_active_rollout(
    admin: AdminClient, model: str, version: str, stable_version: str
) -> RolloutSummary | None:
    """The controller's active rollout of ``version`` over ``stable_version``, if there is one: a
    second path that was told of the same promotion follows it instead of failing on the refusal
    (the controller keeps one active rollout per model). Another version's rollout is not this."""
    for found in admin.rollouts():
        if (
            found.model == model
            and found.version == version
            and found.stable_version == stable_version
            and found.phase not in TERMINAL
        ):
            return found
    return None


def recorded_outcome(admin: AdminClient, rollout_id: str, attempt: int) -> OutcomeEntry | None:
    """The outcome the controller recorded for ``attempt`` of the rollout (its outcome feed, which
    the registry follower writes to MLflow); None from a controller without the feed."""
    try:
        page = admin.outcomes(rollout_id=rollout_id, limit=1000)
    except AdminError as exc:
        if exc.status == 404:
            return None
        raise
    mine = [o for o in page.outcomes if o.attempt == attempt]
    return mine[-1] if mine else None


@flow(name="rollout", log_prints=False, validate_parameters=False)
def rollout_flow(
    model: str,
    version: str,
    stable_version: str | None = None,
    settings: Settings | None = None,
    rollout_overrides: dict[str, Any] | None = None,
) -> RolloutOutcome:
    """Publish, create, start and follow one rollout; record its outcome in the registry.

    ``rollout_overrides`` replaces fields of params.yaml's ``rollout`` section (the demo's fast stages).
    The admin token comes from ``EDGELOOP_FLEET_ADMIN_TOKEN`` where the flow runs (a deployment's
    worker; an in-process caller sets it with ``fleet.admin.admin_token_in_env``): it is never a
    flow-run parameter, which the Prefect API would store in plain text.
    """
    settings = settings or Settings()
    params = load_params(settings.params_file)
    if rollout_overrides:
        merged = {**params.rollout.model_dump(), **rollout_overrides}
        params = params.model_copy(update={"rollout": type(params.rollout).model_validate(merged)})
    client = connect(settings.tracking_uri)
    admin = AdminClient(
        params.rollout.controller_url,
        admin_token_from_env(
            RolloutError,
            hint="set EDGELOOP_FLEET_ADMIN_TOKEN where the rollout flow runs (the ops pool's worker)",
        ),
    )
    logger = get_run_logger()
    try:
        classes = params.gates.profiles
        variants = publish_variants(client, admin, model, version, classes)
        if not stable_version:
            return _first_release(client, admin, settings, model, version)
        publish_variants(client, admin, model, stable_version, classes)
        request = RolloutRequest(
            model=model, version=version, stable_version=stable_version,
            policy=policy_for(params, settings).model_dump(mode="json"), supersede=False,
        )  # fmt: skip
        try:
            created = admin.create_rollout(request)
        except AdminError as exc:
            joined = same_active_rollout(admin, model, version, stable_version)
            if exc.status != 409 or joined is None:
                raise
            rollout_id = joined.rollout_id  # this very promotion, started by another path
            logger.warning("following rollout %s, which another path created", rollout_id)
        else:
            rollout_id = created.rollout_id
            logger.info("rollout %s of %s v%s created (%s)", rollout_id, model, version, variants)
            try:
                admin.command(rollout_id, "start")
            except AdminError:  # nothing was targeted: leave no pending rollout behind
                admin.command(rollout_id, "abort", "its start was refused")
                raise
        final = follow(
            admin, rollout_id, params.rollout.poll_s, params.rollout.deadline_s,
            warn=logger.warning,
        )  # fmt: skip
        attempt = RolloutStatus.model_validate(final.status).attempt
        recorded = recorded_outcome(admin, rollout_id, attempt)
        if final.phase == "succeeded":
            admin.set_baseline(model, version)  # devices enrolled from now on get it too
    except AdminError as exc:
        raise RolloutError(
            str(exc), hint="check the fleet controller and the version's artifacts"
        ) from exc
    finally:
        admin.close()
    status = RolloutStatus.model_validate(final.status)
    outcome = final.phase
    why = "; ".join(f"{c.gate} gate failed on {c.cohort}: {c.reason}" for c in status.causes)
    reason = why or final.reason or outcome
    if recorded is not None:  # the registry follower writes the same: either may write first
        outcome, reason = recorded.status, recorded.reason
    causes = [c.model_dump(mode="json") for c in status.causes]
    record_outcome(
        client, model=model, version=version, stable_version=status.stable_version or None,
        outcome=outcome, reason=reason, causes=causes, cards_dir=settings.model_cards_dir,
    )  # fmt: skip
    return RolloutOutcome(
        rollout_id=rollout_id, model=model, version=version,
        stable_version=status.stable_version, outcome=outcome, reason=reason,
        causes=status.causes, history=status.history,
    )  # fmt: skip
