"""Repository functions over the fleet tables: the only code that knows how facts are stored.

Routes and the reconcile pass call these with a ``Session`` and an explicit ``now`` (STYLE rule 6), so a
test can drive enrolment, telemetry and rollouts on any clock. Library-style: these raise the typed
errors of ``fleet.controller.errors``; mapping them to HTTP answers is the API's business.

Secrets (enrolment tokens, device credentials) are random 32-byte tokens; only their sha256 is stored,
so a copy of the database enrols nobody and impersonates no device.
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import TypeAdapter
from sqlalchemy import (
    ColumnElement,
    Executable,
    Row,
    Select,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.exc import StaleDataError

from fleet.controller.errors import (
    ConcurrentUpdate,
    DeviceAlreadyEnrolled,
    EnrolmentRefused,
    RolloutConflict,
    RolloutNotFound,
)
from fleet.controller.longpoll import Targeted
from fleet.controller.rollout.actions import Action, RecordOutcome
from fleet.controller.rollout.decide import RolloutStatus
from fleet.controller.rollout.observations import (
    DeviceObservation,
    Observations,
    Refusal,
    ShadowSums,
    VersionTelemetry,
)
from fleet.controller.rollout.phase import RolloutPhase
from fleet.controller.rollout.policy import ShadowPolicy
from fleet.controller.rollout.stats import ErrorSums
from fleet.controller.storage import events, outcomes, replicas
from fleet.controller.storage.db import (
    ArtifactRow,
    Base,
    BaselineRow,
    DesiredStateRow,
    DeviceRow,
    EnrolmentTokenRow,
    RolloutActionRow,
    RolloutRow,
    TelemetryRow,
)
from fleet.controller.storage.observe_tables import QuarantineRow
from fleet.shared.admin_protocol import RolloutSummary
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram, merge_histograms
from fleet.shared.protocol import (
    API_PREFIX,
    Artifact,
    DesiredState,
    EnrolmentToken,
    EnrolmentTokenInfo,
    EnrolmentTokenRequest,
    EnrolRequest,
    ShadowPlan,
    TelemetryAck,
    TelemetryReport,
)

ACTIONS: TypeAdapter[list[Action]] = TypeAdapter(list[Action])
ACTION: TypeAdapter[Action] = TypeAdapter(Action)
OPEN_PHASES = (
    RolloutPhase.PENDING,
    RolloutPhase.PROGRESSING,
    RolloutPhase.PAUSED,
    RolloutPhase.ROLLING_BACK,
)
"""Phases in which a rollout blocks another one of the same model."""
OPENING_PHASES = ("pending", "progressing", "paused")
"""The phases of the partial unique index ``db.ONE_OPEN_ROLLOUT``: one rollout per model among them."""


def hash_secret(secret: str) -> str:
    """sha256 hex of a token or credential: what the database keeps instead of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


# --- enrolment -------------------------------------------------------------------------------


def create_enrolment_token(
    session: Session, request: EnrolmentTokenRequest, now: datetime
) -> EnrolmentToken:
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=request.ttl_s)
    row = EnrolmentTokenRow(
        token_hash=hash_secret(token),
        uses_left=request.uses,
        expires_at=expires_at,
        hardware_class=request.hardware_class,
        created_at=now,
        device_id=request.device_id,
        device_prefix=request.device_prefix,
    )
    session.add(row)
    session.commit()
    return EnrolmentToken(token=token, expires_at=expires_at, uses=request.uses, token_id=row.id)


def live_enrolment_tokens(session: Session, now: datetime) -> list[EnrolmentTokenInfo]:
    """Tokens that can still enrol a device (uses left, not expired), oldest first."""
    rows = session.scalars(
        select(EnrolmentTokenRow)
        .where(EnrolmentTokenRow.uses_left >= 1, EnrolmentTokenRow.expires_at > now)
        .order_by(EnrolmentTokenRow.id)
    ).all()
    return [
        EnrolmentTokenInfo(
            token_id=r.id, uses_left=r.uses_left, expires_at=r.expires_at,
            created_at=r.created_at, hardware_class=r.hardware_class, device_id=r.device_id,
            device_prefix=r.device_prefix,
        )
        for r in rows
    ]  # fmt: skip


def revoke_enrolment_token(session: Session, token_id: int) -> bool:
    """Spend every use of the token left; False when there is no such token."""
    row = session.get(EnrolmentTokenRow, token_id)
    if row is None:
        return False
    row.uses_left = 0
    session.commit()
    return True


def _spend_token(session: Session, request: EnrolRequest, now: datetime) -> bool:
    """Take one use of the request's token, if it is valid for it, in one conditional UPDATE (the
    database decides, so two concurrent enrolments cannot both take a token's last use, on SQLite
    too, where ``SELECT ... FOR UPDATE`` locks nothing). The first statement of its transaction."""
    spent = session.execute(
        update(EnrolmentTokenRow)
        .where(
            EnrolmentTokenRow.token_hash == hash_secret(request.token),
            EnrolmentTokenRow.uses_left >= 1,
            EnrolmentTokenRow.expires_at > now,
            or_(
                EnrolmentTokenRow.hardware_class.is_(None),
                EnrolmentTokenRow.hardware_class == request.hardware_class,
            ),
            or_(
                EnrolmentTokenRow.device_id.is_(None),
                EnrolmentTokenRow.device_id == request.device_id,
            ),
            or_(  # no LIKE: "_" in an id is a LIKE wildcard
                EnrolmentTokenRow.device_prefix.is_(None),
                func.substr(
                    literal(request.device_id), 1, func.length(EnrolmentTokenRow.device_prefix)
                )
                == EnrolmentTokenRow.device_prefix,
            ),
        )
        .values(uses_left=EnrolmentTokenRow.uses_left - 1)
        .execution_options(synchronize_session=False)
    )
    return getattr(spent, "rowcount", 0) == 1


def enrol(session: Session, request: EnrolRequest, now: datetime) -> str:
    """Spend one use of the token and enrol the device; returns the credential (shown once).

    A refusal for a device id that is taken (409) spends the use too: a token cannot be used to
    probe which device ids exist, or be tried again and again."""
    session.rollback()  # the spend opens the transaction: no older snapshot to upgrade
    if not _spend_token(session, request, now):
        session.rollback()
        raise EnrolmentRefused("the enrolment token is not valid")
    taken = DeviceAlreadyEnrolled(
        f"device {request.device_id} is enrolled already", device_id=request.device_id
    )
    if session.get(DeviceRow, request.device_id) is not None:
        session.commit()
        raise taken
    credential = secrets.token_urlsafe(32)
    session.add(
        DeviceRow(
            device_id=request.device_id,
            hardware_class=request.hardware_class,
            labels=dict(request.labels),
            credential_hash=hash_secret(credential),
            enrolled_at=now,
            last_seen=None,
        )
    )
    # The desired-state row exists from enrolment on, so targeting only ever updates it: two writers
    # targeting the same new device (a command and the reconcile pass) cannot both insert it.
    try:
        session.flush()  # the device row first: the desired state refers to it
        session.add(DesiredStateRow(device_id=request.device_id, revision=0, updated_at=now))
        session.flush()
        baseline_for_new_device(session, request.device_id, now)
        session.commit()
    except IntegrityError as exc:  # enrolled concurrently under the same id: a 409 as above
        session.rollback()
        _spend_token(session, request, now)
        session.commit()
        raise taken from exc
    return credential


def device_by_credential_hash(session: Session, credential_hash: str) -> DeviceRow | None:
    """The device whose credential hashes to ``credential_hash`` (see :func:`hash_secret`)."""
    return session.scalars(
        select(DeviceRow).where(
            DeviceRow.credential_hash == credential_hash, DeviceRow.retired_at.is_(None)
        )
    ).one_or_none()


def record_download_error(session: Session, device_id: str, error: str, now: datetime) -> None:
    """Remember that the controller could not serve ``device_id`` an artifact, and why: a stage
    that ends without a verdict names it (``DeviceObservation.download_error``)."""
    session.execute(
        update(DeviceRow)
        .where(DeviceRow.device_id == device_id)
        .values(download_error=error[:500], download_error_at=now)
    )


def retire_devices(
    session: Session, device_ids: Iterable[str], silent_for_s: float | None, now: datetime
) -> list[str]:
    """Retire the devices named and, with ``silent_for_s``, every device not heard from for that
    long (or never); returns the ids retired now (already retired ones are left as they are)."""
    chosen: ColumnElement[bool] = DeviceRow.device_id.in_(list(device_ids))
    if silent_for_s is not None:
        cutoff = now - timedelta(seconds=silent_for_s)
        chosen = or_(
            chosen,
            DeviceRow.last_seen.is_(None) & (DeviceRow.enrolled_at < cutoff),
            DeviceRow.last_seen < cutoff,
        )
    rows = session.scalars(
        select(DeviceRow)
        .where(chosen, DeviceRow.retired_at.is_(None))
        .order_by(DeviceRow.device_id)
    ).all()
    for row in rows:
        row.retired_at = now
    return [r.device_id for r in rows]


def device(session: Session, device_id: str) -> DeviceRow | None:
    return session.get(DeviceRow, device_id)


def devices_by_id(session: Session, ids: Iterable[str]) -> dict[str, DeviceRow]:
    """The rows of ``ids`` (those enrolled), 500 ids a query."""
    ordered = sorted(set(ids))
    found: dict[str, DeviceRow] = {}
    for i in range(0, len(ordered), 500):
        chunk = ordered[i : i + 500]
        found.update(
            (d.device_id, d)
            for d in session.scalars(select(DeviceRow).where(DeviceRow.device_id.in_(chunk)))
        )
    return found


# --- desired state ---------------------------------------------------------------------------


def desired_state(session: Session, device: DeviceRow) -> DesiredState:
    """The device's desired state; revision 0 and no artifact until something targets it."""
    found = desired_states(session, [device.device_id])
    return found.get(device.device_id) or DesiredState(device_id=device.device_id, revision=0)


@dataclass(frozen=True)
class RolloutContext:
    """What a desired-state answer needs of a rollout besides the device's own row: the few keys
    of its stored status and the release counters of its two versions. Read once per
    :func:`_context_key` (the rollout's ``row_version``, bumped by every save of the row, and the
    fingerprint of its model's artifacts), not once per answer: the status names every targeted
    device, 756 KB of JSON with 10,000 devices, and decoding it was most of an answer's cost."""

    phase: str
    stable: str | None
    canary: str | None
    shadow: ShadowPolicy | None
    releases: Mapping[str, int | None]

    def rollback(self, version: str) -> bool:
        """``is_rollback`` for a device of this rollout pointed at ``version``."""
        if version == self.stable:
            return True
        if version != self.canary or self.stable is None:
            return False
        canary, stable = self.releases.get(version), self.releases.get(self.stable)
        return canary is not None and stable is not None and canary < stable

    def shadow_plan(self, version: str) -> ShadowPlan | None:
        """``_shadow_plan`` for a device of this rollout pointed at ``version``."""
        if self.phase not in SHADOWING_PHASES or self.shadow is None or self.canary != version:
            return None
        assert self.stable is not None
        return ShadowPlan(
            version=self.stable,
            rate=self.shadow.rate,
            cpu_budget=self.shadow.cpu_budget,
            tolerance=self.shadow.tolerance,
        )


class _Contexts:
    """Rollout contexts of this process by key, bounded (the oldest half goes when full). A key
    names one committed state of the rollout row and of its model's artifacts, so an entry is never
    stale: a newer state is a new key. Shared by every database of the process (tests): rollout ids
    carry a random part."""

    def __init__(self, max_entries: int = 256) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], RolloutContext] = {}
        self.max_entries = max_entries
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> RolloutContext | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[Any, ...], context: RolloutContext) -> None:
        with self._lock:
            self.misses += 1
            if len(self._entries) >= self.max_entries:
                for old in list(self._entries)[: self.max_entries // 2]:
                    del self._entries[old]
            self._entries[key] = context

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


rollout_contexts = _Contexts()
"""This process's :class:`RolloutContext` cache (``misses`` counts the status reads, for tests)."""


def _context_key(rollout_id: str, row_version: int, fingerprint: Sequence[Any]) -> tuple[Any, ...]:
    return (rollout_id, row_version, *fingerprint)


def _rollout_context(
    session: Session, rollout_id: str, row_version: int, fingerprint: Sequence[Any]
) -> RolloutContext:
    """The context of ``rollout_id`` as of ``row_version``, read when not cached. A rollout saved
    between the two reads gives its newer context, not cached under this key (each statement reads
    the latest commit, as the row-by-row read before it did)."""
    key = _context_key(rollout_id, row_version, fingerprint)
    found = rollout_contexts.get(key)
    if found is not None:
        return found
    row = session.execute(
        select(RolloutRow.phase, RolloutRow.status, RolloutRow.row_version, RolloutRow.model).where(
            RolloutRow.rollout_id == rollout_id
        )
    ).one_or_none()
    if row is None:  # rollouts are never deleted; as if it had no context
        return RolloutContext(phase="", stable=None, canary=None, shadow=None, releases={})
    stored = row.status
    stable, canary = stored.get("stable_version"), stored.get("canary_version")
    wanted = stored.get("policy", {}).get("shadow")
    context = RolloutContext(
        phase=row.phase,
        stable=stable,
        canary=canary,
        shadow=None if wanted is None else ShadowPolicy.model_validate(wanted),
        releases={v: _release(session, row.model, v) for v in (stable, canary) if v is not None},
    )
    if row.row_version == row_version:
        rollout_contexts.put(key, context)
    return context


def _fingerprint_of(model: Any) -> list[Any]:
    """Scalar subqueries over the artifacts of ``model``: their count, latest registration and sum
    of releases. Registering or replacing a variant changes one of them, so a rollout context
    keyed by them is never used after the release counters it holds changed."""
    same = aliased(ArtifactRow)
    return [
        select(func.count()).where(same.model == model).scalar_subquery(),
        select(func.max(same.created_at)).where(same.model == model).scalar_subquery(),
        select(func.sum(same.release)).where(same.model == model).scalar_subquery(),
    ]


@functools.cache
def _desired_query() -> Select[*tuple[Any, ...]]:
    """One statement for the desired state of the devices ``ids`` (an expanding parameter): each
    device's row with its signed variant, its rollout's ``row_version`` (not its status), its
    model's baseline and the fingerprint of the model's artifacts. Built once."""
    ds, a, r, b = DesiredStateRow, ArtifactRow, RolloutRow, BaselineRow
    return (
        select(
            DeviceRow.device_id,
            DeviceRow.hardware_class,
            ds.revision,
            ds.model,
            ds.version,
            ds.rollout_id,
            a.variant,
            a.sha256,
            a.signature,
            a.release,
            a.size_bytes,
            r.row_version,
            b.version.label("baseline"),
            *_fingerprint_of(ds.model),
        )
        .select_from(DeviceRow)
        .outerjoin(ds, ds.device_id == DeviceRow.device_id)
        .outerjoin(
            a,
            (a.model == ds.model)
            & (a.version == ds.version)
            & (a.hardware_class == DeviceRow.hardware_class),
        )
        .outerjoin(r, r.rollout_id == ds.rollout_id)
        .outerjoin(b, b.model == ds.model)
        .where(DeviceRow.device_id.in_(bindparam("ids", expanding=True)))
    )


def desired_states(session: Session, device_ids: Iterable[str]) -> dict[str, DesiredState]:
    """The desired state of each of these devices that is enrolled, 500 devices a statement.

    What a long-poll answers, and what a replica woken by ``NOTIFY`` hands every long-poll it holds
    for the devices named: one query for all of them, no ORM objects, and the rollout's status read
    only when its row changed (:class:`RolloutContext`). Every answer is built from a read that
    started after the call: never older than what was committed before it."""
    ordered = sorted(set(device_ids))
    found: dict[str, DesiredState] = {}
    for i in range(0, len(ordered), 500):
        chunk = ordered[i : i + 500]
        found.update(_desired_chunk(session, chunk))
    return found


def _desired_chunk(session: Session, device_ids: list[str]) -> dict[str, DesiredState]:
    answers: dict[str, DesiredState] = {}
    for row in session.execute(_desired_query(), {"ids": device_ids}):
        if row.revision is None:
            answers[row.device_id] = DesiredState(device_id=row.device_id, revision=0)
            continue
        artifact = None
        if row.signature and row.model is not None and row.version is not None:
            artifact = _artifact(row)
        shadow, rollback = None, False
        if artifact is not None and row.rollout_id is None:
            rollback = row.baseline == artifact.version
        elif artifact is not None and row.row_version is not None:
            fingerprint = tuple(row)[-3:]
            context = _rollout_context(session, row.rollout_id, row.row_version, fingerprint)
            shadow = context.shadow_plan(artifact.version)
            rollback = context.rollback(artifact.version)
        answers[row.device_id] = DesiredState(
            device_id=row.device_id,
            revision=row.revision,
            artifact=artifact,
            rollout_id=row.rollout_id,
            shadow=shadow,
            rollback=rollback,
        )
    return answers


def is_rollback(session: Session, model: str, version: str, rollout_id: str | None) -> bool:
    """Whether pointing a device at ``version`` is a way back the controller sanctions: a rollout's
    stable version, the canary of a rollout an operator started to an older release than its
    stable one, or outside a rollout the model's baseline. Only then may a device take a lower
    release than the one it runs (``fleet.shared.signature``): a desired state that names an older
    release on any other path (replayed, or from a confused replica) is refused on the device."""
    if rollout_id is None:
        return baseline_version(session, model) == version
    rollout = session.get(RolloutRow, rollout_id)
    if rollout is None:
        return False
    stable, canary = rollout.status.get("stable_version"), rollout.status.get("canary_version")
    if version == stable:
        return True
    if version != canary or stable is None:
        return False
    canary_release = _release(session, model, version)
    stable_release = _release(session, model, stable)
    if canary_release is None or stable_release is None:
        return False
    return canary_release < stable_release


def _release(session: Session, model: str, version: str) -> int | None:
    """The release counter of ``model`` ``version`` (its variants share it), if registered."""
    return session.scalar(
        select(func.max(ArtifactRow.release)).where(
            ArtifactRow.model == model, ArtifactRow.version == version
        )
    )


SHADOWING_PHASES = (RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value)


def _shadow_plan(session: Session, rollout_id: str, version: str) -> ShadowPlan | None:
    """What a device on ``version`` compares in shadow: the rollout's stable version, while the
    rollout is in a stage, ``version`` is its canary and its policy asks for shadow comparisons.

    Reads three keys of the stored status instead of validating all of it: every long-poll answer
    of every device of the rollout asks."""
    rollout = session.get(RolloutRow, rollout_id)
    if rollout is None or rollout.phase not in SHADOWING_PHASES:
        return None
    stored = rollout.status
    wanted = stored.get("policy", {}).get("shadow")
    if wanted is None or stored.get("canary_version") != version:
        return None
    policy = ShadowPolicy.model_validate(wanted)
    return ShadowPlan(
        version=stored["stable_version"],
        rate=policy.rate,
        cpu_budget=policy.cpu_budget,
        tolerance=policy.tolerance,
    )


def target_devices(
    session: Session,
    device_ids: Iterable[str],
    *,
    model: str,
    version: str,
    rollout_id: str | None,
    now: datetime,
) -> list[str]:
    """Point devices at ``model``/``version``; returns those whose state changed (revision + 1)."""
    if rollout_id is not None:  # quarantined devices stay on what a playbook pinned them to
        device_ids = without_quarantined(session, device_ids)
    return list(
        retarget(session, device_ids, model=model, version=version, rollout_id=rollout_id, now=now)
    )


def retarget(
    session: Session,
    device_ids: Iterable[str],
    *,
    model: str,
    version: str,
    rollout_id: str | None,
    now: datetime,
) -> dict[str, int]:
    """Point devices at ``model``/``version``; returns the new revision of each device that changed.

    Set-based: one ``UPDATE ... RETURNING`` per chunk of devices, never a statement per device, so a
    rollback of a thousand devices is two statements. Targeting a device at what it is already targeted
    at changes nothing, so performing an outbox action twice is harmless. Devices that are not enrolled
    have no desired-state row and are skipped. Does not commit.
    """
    ids = list(dict.fromkeys(device_ids))
    row = DesiredStateRow
    differs = or_(
        row.model.is_distinct_from(model),
        row.version.is_distinct_from(version),
        row.rollout_id.is_distinct_from(rollout_id),
    )
    changed: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        statement = (
            update(row)
            .where(row.device_id.in_(ids[start : start + 500]), differs)
            .values(
                revision=row.revision + 1,
                model=model,
                previous_version=case(
                    (row.version.is_distinct_from(version), row.version),
                    else_=row.previous_version,
                ),
                version=version,
                rollout_id=rollout_id,
                updated_at=now,
            )
            .returning(row.device_id, row.revision)
            .execution_options(synchronize_session=False)
        )
        changed.update((d, r) for d, r in session.execute(statement))
    announce(session, list(changed))
    return {d: changed[d] for d in ids if d in changed}


def announce(session: Session, device_ids: list[str]) -> None:
    """Tell the other replicas these devices' desired state changed: ``NOTIFY`` in this transaction,
    delivered when it commits (PostgreSQL; a SQLite database has one process, which publishes to
    its own long-polls). See ``replicas``."""
    if not device_ids or session.get_bind().dialect.name != "postgresql":
        return
    replica = str(session.info.get("replica", ""))
    for payload in replicas.notify_payloads(replica, device_ids):
        session.execute(select(func.pg_notify(replicas.CHANNEL, payload)))


def targeted(session: Session, model: str, version: str, rollout_id: str | None) -> Targeted:
    """The document devices pointed at ``model``/``version`` share: the signed variant per class."""
    signed = {
        c: _artifact(r) for c, r in artifacts_of(session, model, version).items() if r.signature
    }
    return Targeted(
        model=model,
        version=version,
        rollout_id=rollout_id,
        artifacts=signed,
        rollback=is_rollback(session, model, version, rollout_id),
        shadow=None if rollout_id is None else _shadow_plan(session, rollout_id, version),
    )


def baseline_version(session: Session, model: str) -> str | None:
    """The version ``model``'s devices run outside any rollout, if one is set."""
    row = session.get(BaselineRow, model)
    return row.version if row is not None else None


def set_baseline(session: Session, model: str, version: str, now: datetime) -> list[str]:
    """Make ``version`` what every device of ``model`` runs outside a rollout; returns the devices
    whose desired state changed. Devices of an active rollout are left to it. Does not commit."""
    row = session.get(BaselineRow, model, with_for_update=True)
    if row is None:
        session.add(BaselineRow(model=model, version=version, updated_at=now))
    else:
        row.version, row.updated_at = version, now
    busy = {
        device
        for rollout in session.scalars(select(RolloutRow).where(RolloutRow.model == model))
        if RolloutPhase(rollout.phase) in OPEN_PHASES
        for device in status_of(rollout).targeted
    }
    classes = set(
        session.scalars(
            select(ArtifactRow.hardware_class).where(
                ArtifactRow.model == model, ArtifactRow.version == version
            )
        )
    )
    devices = session.scalars(
        select(DeviceRow.device_id).where(DeviceRow.hardware_class.in_(classes))
    )
    return target_devices(
        session,
        [d for d in devices if d not in busy],
        model=model,
        version=version,
        rollout_id=None,
        now=now,
    )


def baseline_for_new_device(session: Session, device_id: str, now: datetime) -> list[str]:
    """Point a newly enrolled device at the most recent baseline (if its class has an artifact)."""
    device = session.get(DeviceRow, device_id)
    for row in session.scalars(select(BaselineRow).order_by(BaselineRow.updated_at.desc())):
        has_variant = session.scalars(
            select(ArtifactRow).where(
                ArtifactRow.model == row.model,
                ArtifactRow.version == row.version,
                ArtifactRow.hardware_class == (device.hardware_class if device else ""),
            )
        ).first()
        if has_variant is not None:
            return target_devices(
                session, [device_id], model=row.model, version=row.version, rollout_id=None, now=now
            )
    return []


# --- artifacts -------------------------------------------------------------------------------


def register_artifact(
    session: Session,
    *,
    model: str,
    version: str,
    variant: str,
    hardware_class: str,
    sha256: str,
    size_bytes: int,
    signature: str | None,
    release: int,
    now: datetime,
) -> Artifact | None:
    """Record (or replace) the variant of a version for a hardware class: the bytes are already in
    the artifact store under ``sha256`` (``fleet.controller.artifacts``), checked by the API."""
    row = session.get(ArtifactRow, (model, version, hardware_class))
    if row is None:
        row = ArtifactRow(model=model, version=version, hardware_class=hardware_class)
        session.add(row)
    row.variant, row.signature, row.release = variant, signature, release
    row.sha256, row.size_bytes, row.created_at = sha256, size_bytes, now
    session.commit()
    return _artifact(row) if signature else None


def artifact_row(
    session: Session, model: str, version: str, variant: str, hardware_class: str
) -> ArtifactRow | None:
    """The variant file of a version for one hardware class (classes may share a variant)."""
    return session.scalars(
        select(ArtifactRow).where(
            ArtifactRow.model == model,
            ArtifactRow.version == version,
            ArtifactRow.variant == variant,
            ArtifactRow.hardware_class == hardware_class,
        )
    ).one_or_none()


def artifacts_of(session: Session, model: str, version: str) -> dict[str, ArtifactRow]:
    """Variants of a version by hardware class."""
    rows = session.scalars(
        select(ArtifactRow).where(ArtifactRow.model == model, ArtifactRow.version == version)
    )
    return {r.hardware_class: r for r in rows}


def _artifact(row: ArtifactRow | Row[Any]) -> Artifact:
    """The device protocol's artifact of a stored one (an ``ArtifactRow``, or a row of a query
    that selects its columns by the same names); it must be signed."""
    assert row.signature
    return Artifact(
        model=row.model,
        version=row.version,
        variant=row.variant,
        sha256=row.sha256,
        signature=row.signature,
        release=row.release,
        size_bytes=row.size_bytes,
        url=f"{API_PREFIX}/artifacts/{row.model}/{row.version}/{row.variant}",
    )


# --- telemetry -------------------------------------------------------------------------------


class HasDeviceId(Protocol):
    """A device as the telemetry path knows it: an authenticated identity or a ``DeviceRow``."""

    @property
    def device_id(self) -> str: ...


def ingest_telemetry(
    session: Session, device: HasDeviceId, reports: Sequence[TelemetryReport], now: datetime
) -> TelemetryAck:
    """Store the reports not stored before; ``(device, buffer_id, seq)`` makes this idempotent.

    Reports may come in any order and more than once (an agent resends its buffer after a lost ack).
    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` stores a batch: the database says which rows
    are new, so a concurrent duplicate loses on the unique key without an error, and a batch is two
    statements and one commit whatever its size. Both statements are built once per dialect, so a
    request reuses their compiled SQL instead of compiling a statement shaped by its batch.
    """
    in_scope = _scope(session, device.device_id)
    refused = [r.seq for r in reports if not in_scope(r)]
    if refused:
        events.count_rejection(
            session,
            device.device_id,
            [
                f"reports {refused}: a model or version this device was not told to run "
                "(nor ran before): not stored"
            ],
            now,
        )
    first: dict[tuple[str, int], TelemetryReport] = {}
    for report in reports:
        if in_scope(report):
            first.setdefault((report.buffer_id, report.seq), report)
    insert, touch = _telemetry_statements(session.get_bind().dialect.name)
    connection = session.connection()
    stored: set[tuple[str, int]] = set()
    if first:
        rows = [_telemetry_row(device.device_id, r, now) for r in first.values()]
        stored = {(b, s) for b, s in connection.execute(insert, rows)}
    connection.execute(touch, {"device": device.device_id, "now": now})
    session.commit()
    accepted: list[int] = []
    duplicates: list[int] = []
    for report in reports:
        key = (report.buffer_id, report.seq)
        if key in stored and first.get(key) is report:
            accepted.append(report.seq)
        elif in_scope(report):
            duplicates.append(report.seq)
    return TelemetryAck(accepted=accepted, duplicates=duplicates, refused=refused)


def _scope(session: Session, device_id: str) -> Callable[[TelemetryReport], bool]:
    """Which reports ``device_id`` may send: those of the model and version it is told to run, of
    the version it was told to run before, or of the version it last reported running (late labels
    for the model it replaced, whichever way it got there). A device that was never targeted may
    report what it runs. So one device cannot put numbers into a version or model it does not run:
    not into another model's alerts, not into a rollout's arms."""
    row = session.execute(
        select(
            DesiredStateRow.model, DesiredStateRow.version, DesiredStateRow.previous_version
        ).where(DesiredStateRow.device_id == device_id)
    ).first()
    if row is None or row.version is None:
        return lambda _report: True
    told = {row.version, row.previous_version}
    ran: list[str | None] = []  # read once, and only for a report of neither version

    def in_scope(report: TelemetryReport) -> bool:
        if report.model not in ("", row.model):
            return False
        if report.version in told:
            return True
        if not ran:
            ran.append(latest_versions(session, [device_id]).get(device_id))
        return report.version == ran[0]

    return in_scope


@functools.cache
def _telemetry_statements(dialect: str) -> tuple[Executable, Executable]:
    """The telemetry insert (many rows, new ones returned) and the ``last_seen`` update."""
    table = Base.metadata.tables[TelemetryRow.__tablename__]
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    new_rows = insert.on_conflict_do_nothing(
        index_elements=["device_id", "buffer_id", "seq"]
    ).returning(table.c.buffer_id, table.c.seq)
    devices = Base.metadata.tables[DeviceRow.__tablename__]
    touch = (
        update(devices)
        .where(devices.c.device_id == bindparam("device"))
        .values(last_seen=bindparam("now"))
    )
    return new_rows, touch


def _telemetry_row(device_id: str, report: TelemetryReport, now: datetime) -> dict[str, Any]:
    errors = [f.abs_error for f in report.feedback if f.abs_error is not None]
    return {
        "device_id": device_id,
        "buffer_id": report.buffer_id,
        "seq": report.seq,
        "model": report.model,
        "version": report.version,
        "variant": report.variant,
        "running": report.running,
        "window_start": report.window_start,
        "window_end": report.window_end,
        "inferences": report.inferences,
        "errors": report.errors,
        "latency": {
            "bounds_ms": list(report.latency_ms.bounds_ms),
            "counts": list(report.latency_ms.counts),
        },
        "feedback_correct": sum(
            1 for f in report.feedback if f.predicted is not None and f.predicted == f.label
        ),
        "feedback_total": sum(1 for f in report.feedback if f.label is not None),
        "targets": len(errors),
        "abs_error_sum": math.fsum(errors),
        "abs_error_squares": math.fsum(e * e for e in errors),
        "dropped_total": report.dropped_total,
        "received_at": now,
        "shadow": report.shadow.model_dump() if report.shadow is not None else None,
        "refusals": [r.model_dump() for r in report.refusals] or None,
    }


def latest_versions(session: Session, device_ids: list[str]) -> dict[str, str]:
    """The version each device runs: that of its latest report marked ``running`` (devices that
    never sent one are left out). A report of a version swapped out (late labels for the model it
    replaced, say) arrives after the running one and says nothing of what runs now."""
    latest_ids = (
        select(func.max(TelemetryRow.id))
        .where(TelemetryRow.device_id.in_(device_ids), TelemetryRow.running.is_(True))
        .group_by(TelemetryRow.device_id)
    )
    rows = session.execute(
        select(TelemetryRow.device_id, TelemetryRow.version).where(TelemetryRow.id.in_(latest_ids))
    )
    return {device_id: version for device_id, version in rows}


def _download_error(device: DeviceRow, window: datetime | None) -> str | None:
    """The device's last failed download, when it happened inside the window."""
    at = device.download_error_at
    if window is None or at is None or at < window:
        return None
    return device.download_error


def observations(
    session: Session, status: RolloutStatus, now: datetime | None = None
) -> Observations:
    """The fleet as ``next_state`` needs it for ``status``: every enrolled device of the policy's
    classes (silent ones included), the version of its latest report, and per version what it
    reported since ``status.window_start`` (nothing when the status needs no window)."""
    del now
    classes = sorted(status.policy.cohorts)
    devices = session.scalars(
        select(DeviceRow)
        .where(DeviceRow.hardware_class.in_(classes), DeviceRow.retired_at.is_(None))
        .order_by(DeviceRow.device_id)
    ).all()
    ids = [d.device_id for d in devices]
    running = latest_versions(session, ids)
    window = status.window_start
    sums: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {
            "inferences": 0,
            "errors": 0,
            "correct": 0,
            "total": 0,
            "targets": ErrorSums(),
            "latency": [],
            "shadow": {},
        }
    )
    refused: dict[str, list[Refusal]] = defaultdict(list)
    if window is not None and ids:
        rows = session.execute(
            select(
                TelemetryRow.device_id,
                TelemetryRow.version,
                TelemetryRow.inferences,
                TelemetryRow.errors,
                TelemetryRow.latency,
                TelemetryRow.feedback_correct,
                TelemetryRow.feedback_total,
                TelemetryRow.targets,
                TelemetryRow.abs_error_sum,
                TelemetryRow.abs_error_squares,
                TelemetryRow.shadow,
                TelemetryRow.refusals,
            ).where(TelemetryRow.device_id.in_(ids), TelemetryRow.received_at >= window)
        ).all()
        for (
            device_id, version, inferences, errors, latency, correct, total,
            targets, error_sum, error_squares, shadow, refusals,
        ) in rows:  # fmt: skip
            for refusal in refusals or ():
                refused[device_id].append(Refusal.model_validate(refusal))
            entry = sums[(device_id, version)]
            entry["inferences"] += inferences
            entry["errors"] += errors
            entry["correct"] += correct
            entry["total"] += total
            if targets:
                entry["targets"] = entry["targets"].plus(
                    ErrorSums(n=targets, total=error_sum, squares=error_squares)
                )
            entry["latency"].append(
                LatencyHistogram(
                    bounds_ms=tuple(latency["bounds_ms"]), counts=tuple(latency["counts"])
                )
            )
            if shadow is not None:
                _add_shadow(entry["shadow"], shadow)
    per_device: dict[str, list[VersionTelemetry]] = defaultdict(list)
    for (device_id, version), entry in sorted(sums.items()):
        per_device[device_id].append(
            VersionTelemetry(
                version=version,
                inferences=entry["inferences"],
                errors=entry["errors"],
                latency=merge_histograms(entry["latency"]),
                feedback_correct=entry["correct"],
                feedback_total=entry["total"],
                targets=entry["targets"],
                shadow=tuple(entry["shadow"][k] for k in sorted(entry["shadow"])),
            )
        )
    # A device's first report can land between reading the devices and reading the reports:
    # until the next pass it counts as silent, as the device row read says.
    reported = [d for d in devices if d.device_id in running and d.last_seen is not None]
    seen = {d.device_id: (d.last_seen, running[d.device_id]) for d in reported}
    return Observations(
        window_start=window,
        devices=tuple(
            DeviceObservation(
                device_id=d.device_id,
                hardware_class=d.hardware_class,
                last_seen=seen.get(d.device_id, (None, None))[0],
                running_version=seen.get(d.device_id, (None, None))[1],
                telemetry=tuple(per_device.get(d.device_id, ())),
                refused=tuple(refused.get(d.device_id, ())),
                download_error=_download_error(d, window),
            )
            for d in devices
        ),
    )


def _add_shadow(by_stable: dict[str, ShadowSums], stored: dict[str, Any]) -> None:
    """Add one stored :class:`ShadowReport` to the sums kept per stable version."""
    report = ShadowSums(
        against=stored["against"],
        compared=stored["compared"],
        disagreed=stored["disagreed"],
        failed=stored.get("failed", 0),
        skipped=stored.get("skipped", 0),
        canary_classes=stored.get("canary_classes", {}),
        stable_classes=stored.get("stable_classes", {}),
    )
    before = by_stable.get(report.against)
    by_stable[report.against] = report if before is None else before.plus(report)


def without_quarantined(session: Session, device_ids: Iterable[str]) -> list[str]:
    """``device_ids`` less the devices a playbook quarantined (they take no rollout targets)."""
    held = set(session.scalars(select(QuarantineRow.device_id)))
    return [d for d in device_ids if d not in held]


def quarantine(
    session: Session, device_id: str, model: str, version: str | None, reason: str, now: datetime
) -> None:
    """Hold ``device_id`` on ``version`` of ``model`` (no new rollout targets); a device already held
    stays as it was. Adds, does not commit."""
    if session.get(QuarantineRow, device_id) is None:
        session.add(
            QuarantineRow(
                device_id=device_id, model=model, version=version, reason=reason[:2000],
                created_at=now,
            )
        )  # fmt: skip


def accepted_bounds() -> tuple[float, ...]:
    """The one latency bucket layout the controller aggregates (the agent's)."""
    return LATENCY_BOUNDS_MS


# --- rollouts --------------------------------------------------------------------------------


def new_rollout_id(model: str) -> str:
    return f"{model}-{uuid.uuid4().hex[:10]}"


def insert_rollout(session: Session, status: RolloutStatus, now: datetime) -> RolloutRow:
    """Add the new rollout and commit it; :class:`RolloutConflict` when another rollout of the model
    is open. The API checks that first with a clear message, but between its read and this insert
    another replica (or request) may have created one: the partial unique index
    (``db.ONE_OPEN_ROLLOUT``) decides, and the loser gets the same kind of answer, a 409."""
    row = RolloutRow(
        rollout_id=status.rollout_id,
        model=status.model,
        phase=str(status.phase),
        status=status.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        conflict = _open_rollout_conflict(session, status.model, but=status.rollout_id)
        if conflict is None:
            raise
        raise conflict from exc
    return row


def _open_rollout_conflict(session: Session, model: str, *, but: str) -> RolloutConflict | None:
    """The refusal for a rollout of ``model`` that lost to another open one (None: no other one is
    open, so the integrity error was something else). Read after the losing transaction ended."""
    others = [r for r in open_rollouts(session, model) if r.rollout_id != but]
    session.rollback()
    if not others:
        return None
    names = ", ".join(f"{r.rollout_id} ({r.phase})" for r in others)
    reason = f"another rollout of {model} is active: {names}"
    return RolloutConflict(
        reason, reason=reason, hint="wait for it, abort it, or ask to supersede it"
    )


def load_rollout(session: Session, rollout_id: str, *, lock: bool = False) -> RolloutRow:
    row = session.get(RolloutRow, rollout_id, with_for_update=lock, populate_existing=True)
    if row is None:
        raise RolloutNotFound(f"no rollout {rollout_id}", rollout_id=rollout_id)
    return row


def status_of(row: RolloutRow) -> RolloutStatus:
    return RolloutStatus.model_validate(row.status)


def open_rollouts(session: Session, model: str | None = None) -> list[RolloutRow]:
    query = select(RolloutRow).where(RolloutRow.phase.in_([str(p) for p in OPEN_PHASES]))
    if model is not None:
        query = query.where(RolloutRow.model == model)
    return list(session.scalars(query.order_by(RolloutRow.created_at)))


def active_rollout_ids(session: Session) -> list[str]:
    """Rollouts a reconcile pass has work for (PENDING waits for ``start``; terminal ones are done)."""
    phases = [str(p) for p in OPEN_PHASES if p is not RolloutPhase.PENDING]
    return list(
        session.scalars(
            select(RolloutRow.rollout_id)
            .where(RolloutRow.phase.in_(phases))
            .order_by(RolloutRow.created_at)
        )
    )


def list_rollouts(session: Session) -> list[RolloutRow]:
    return list(session.scalars(select(RolloutRow).order_by(RolloutRow.created_at)))


def save_decision(
    session: Session,
    row: RolloutRow,
    new: RolloutStatus,
    actions: Sequence[Action],
    now: datetime,
) -> None:
    """Persist the new status and its actions (the outbox) in one transaction, before any is done.

    The row's version column turns a concurrent update by another replica into
    :class:`ConcurrentUpdate` instead of a lost write. A ``RecordOutcome`` also goes into the
    outcome feed (:mod:`~fleet.controller.storage.outcomes`) in this transaction; two writers
    taking the same feed id is a :class:`ConcurrentUpdate` as well.
    """
    row.status = new.model_dump(mode="json")
    row.phase = str(new.phase)
    row.updated_at = now
    row.last_error = None
    for position, action in enumerate(actions):
        if isinstance(action, RecordOutcome):  # the feed the registry follower reads, same commit
            outcomes.record(session, action, now)
        session.add(
            RolloutActionRow(
                rollout_id=row.rollout_id,
                attempt=action.attempt,
                transition=action.transition,
                position=position,
                kind=action.kind,
                action=action.model_dump(mode="json"),
                done=False,
                created_at=now,
            )
        )
    try:
        session.commit()
    except (StaleDataError, IntegrityError) as exc:
        session.rollback()
        if isinstance(exc, IntegrityError) and new.phase.value in OPENING_PHASES:
            # a retry of an ended rollout while another one of the model is open
            conflict = _open_rollout_conflict(session, new.model, but=row.rollout_id)
            if conflict is not None:
                raise conflict from exc
        raise ConcurrentUpdate(
            f"rollout {row.rollout_id} was changed by another pass", rollout_id=row.rollout_id
        ) from exc


def pending_actions(session: Session, rollout_id: str) -> list[RolloutActionRow]:
    return list(
        session.scalars(
            select(RolloutActionRow)
            .where(RolloutActionRow.rollout_id == rollout_id, RolloutActionRow.done.is_(False))
            .order_by(RolloutActionRow.id)
        )
    )


def claim_action(session: Session, action_id: int, now: datetime) -> bool:
    """Take one outbox action to perform it: marks it done in one conditional UPDATE, so of two
    performers (replicas, a command and the reconcile pass) exactly one gets it, the other False;
    the caller does the action's effect in this same transaction and commits both together (a
    failure rolls the claim back with the effect: the action stays pending). The first statement
    of its transaction (SQLite cannot turn an older read into a write)."""
    claimed = session.execute(
        update(RolloutActionRow)
        .where(RolloutActionRow.id == action_id, RolloutActionRow.done.is_(False))
        .values(done=True, done_at=now)
        .execution_options(synchronize_session=False)
    )
    return getattr(claimed, "rowcount", 0) == 1


def record_error(session: Session, rollout_id: str, message: str) -> None:
    """Keep the error of a failed pass on the rollout (``last_error``). Commits."""
    row = load_rollout(session, rollout_id)
    row.last_error = message[:2000]
    session.commit()


def all_actions(session: Session, rollout_id: str) -> list[Action]:
    rows = session.scalars(
        select(RolloutActionRow)
        .where(RolloutActionRow.rollout_id == rollout_id)
        .order_by(RolloutActionRow.id)
    )
    return [ACTION.validate_python(r.action) for r in rows]


def summary(row: RolloutRow) -> RolloutSummary:
    status = status_of(row)
    return RolloutSummary(
        rollout_id=row.rollout_id,
        model=status.model,
        version=status.canary_version,
        stable_version=status.stable_version,
        phase=str(status.phase),
        stage=status.stage_label(),
        reason=status.reason,
        updated_at=row.updated_at,
    )
