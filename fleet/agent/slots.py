"""Two model slots on a device: the one serving (``active``) and the one it replaced (``previous``).

A new model reaches the active slot only through one fixed sequence, each step a gate:

0. release: a candidate of a lower release counter than the model serving is refused unless the
   caller says the controller's rollback path asks for it (``allow_older``): an old, validly signed
   release cannot be slipped in as an update;
1. verify: copy the download into the store, check its sha256 against what the controller
   announced, then its ed25519 signature against the fleet key (:func:`verify_claim`, which also
   binds the model, the version, the variant's name and the release counter);
2. load: open a NEW onnxruntime session (the second slot) while the active one keeps serving;
3. smoke: run the golden inputs through the model's contract (``fleet.shared.modelspec``, stored in
   the file); its scored output must be ``(n, width)`` with no NaN or Inf, probabilities where the
   contract says probabilities, and a classifier must have ``expected_outputs`` classes;
4. swap: under a lock, the new slot becomes active and the old active becomes previous.

A candidate that fails any step is rejected, never served, and removed from disk; the device stays on
what it had. Only bytes that passed step 1 reach their final name in the store, and ``slots.json``
changes only at step 4, so a crash at any point restarts on the model that was serving
(:meth:`SlotManager.restore`), which is verified, loaded and smoke-tested again before it serves.

Why two slots in memory: a rollback must not wait for a download or a model load. The controller
re-targets a rolled-back device to the stable version, which is normally the previous slot, and
:meth:`SlotManager.rollback_local` (or :meth:`SlotManager.activate`) swaps it back at once.

Every step is reported to an injectable event sink as a tuple, ``("verify", version)``,
``("reject", version, "sha256 mismatch")``, ... (STYLE rule 12); tests assert the exact sequence.

Telemetry is recorded per served artifact (a :class:`TelemetryWindow` each), so an inference is
always credited to the version that actually ran it, even when a swap happens between two reports.

Shadow comparison (``fleet.shared.shadow``): during a canary the controller names the stable version
(:meth:`SlotManager.plan_shadow`); when the previous slot holds it, a sampled share of the rows the
active model served is handed to one background thread that scores them with the previous model and
counts agreement in the active model's window. Serving never waits for it: a full queue or a spent
CPU budget skips the rows (counted), and a shadow model that raises is counted as failed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fleet.agent.errors import (
    ArtifactRejected,
    InferenceFailed,
    InvalidInput,
    NoModelServing,
    NoPreviousModel,
    RejectReason,
    StoreError,
)
from fleet.agent.store import ArtifactRef, ModelStore, Slots, StoredArtifact
from fleet.agent.telemetry import AwaitingLabels, FeedbackPair, TelemetryWindow
from fleet.shared.modelspec import ModelSpec, ModelSpecError, Task, read_spec
from fleet.shared.protocol import MAX_FEATURES, ShadowPlan
from fleet.shared.runtime import open_session
from fleet.shared.shadow import ShadowBudget, sample_rows
from fleet.shared.signature import ReleaseClaim, file_sha256, verify_claim

log = logging.getLogger(__name__)

SHADOW_QUEUE = 8
"""Batches waiting for the shadow thread; more are skipped, never queued without bound."""

GOLDEN_ROWS = 8
"""Rows synthesised for the smoke test when no golden inputs are given."""
"""How far a row of probabilities may sum from 1 (float32 softmax on many classes)."""


class _Input(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Sequence[Any]: ...


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the slots use; a fake may stand in for it."""

    def get_inputs(self) -> Sequence[_Input]: ...
    def get_outputs(self) -> Sequence[_Input]: ...
    def get_modelmeta(self) -> Any: ...
    def run(self, output_names: Any, input_feed: dict[str, Any]) -> Sequence[Any]: ...


SessionFactory = Callable[[Path], Session]
"""Opens a model file as a session; give one built from the device's hardware profile."""

EventSink = Callable[[tuple[str, ...]], None]
"""Receives one tuple per step, e.g. ``("swap", "v2")``; ``list.append`` is a fine sink."""


def default_session_factory(path: Path) -> Session:
    """One thread, CPU provider: what a small device runs when no profile says otherwise."""
    return open_session(str(path))


def log_event(event: tuple[str, ...]) -> None:
    """The default sink: one log line per step."""
    log.info("agent slots: %s", " ".join(event))


@dataclass(frozen=True)
class Candidate:
    """A downloaded variant the controller asked the device to run, with what it must hash to and
    the signature the registry made. ``sha256`` is hex; ``signature`` is base64."""

    model: str
    version: str
    variant: str
    path: Path
    sha256: str
    signature: str
    release: int

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.model, self.version, self.variant)


class InstallOutcome(StrEnum):
    """What :meth:`SlotManager.install` did."""

    INSTALLED = "installed"
    """The candidate passed every step and is now active; the old active is previous."""
    REUSED_PREVIOUS = "reused_previous"
    """The candidate was the model in the previous slot (same bytes); the slots traded places."""
    ALREADY_ACTIVE = "already_active"
    """The candidate is the model already serving (same bytes); nothing changed."""
    REJECTED = "rejected"
    """A step failed; the candidate was not served and the active model did not change."""

    def is_serving(self) -> bool:
        """Whether the candidate serves after the call."""
        return self is not InstallOutcome.REJECTED


@dataclass(frozen=True)
class InstallResult:
    """The outcome for one candidate, and what serves now; ``rejection`` is set only when rejected."""

    ref: ArtifactRef
    outcome: InstallOutcome
    active: ArtifactRef | None
    rejection: ArtifactRejected | None = None

    @property
    def ok(self) -> bool:
        return self.outcome.is_serving()

    def raise_for_rejection(self) -> None:
        """Raise the :class:`ArtifactRejected` when the candidate was rejected (like httpx's
        ``raise_for_status``)."""
        if self.rejection is not None:
            raise self.rejection


@dataclass(frozen=True)
class Prediction:
    """Probabilities for each input row, the artifact that computed them, and one id per row to
    send a ground-truth label back with (:meth:`SlotManager.record_label`)."""

    probabilities: np.ndarray
    ref: ArtifactRef
    ids: tuple[str, ...]


@dataclass(frozen=True)
class _Slot:
    ref: ArtifactRef
    sha256: str
    session: Session
    spec: ModelSpec
    release: int


@dataclass(frozen=True)
class _ShadowJob:
    """Rows the active model served, its scores, and the stable slot to compare them with."""

    ref: ArtifactRef
    task: Task
    stable: _Slot
    features: np.ndarray
    scores: np.ndarray
    plan: ShadowPlan


def _claim(ref: ArtifactRef, sha256: str, release: int) -> ReleaseClaim:
    return ReleaseClaim(
        model=ref.model, version=ref.version, variant=ref.variant, sha256=sha256, release=release
    )


def _holds(slot: _Slot | None, ref: ArtifactRef, sha256: str) -> bool:
    """Whether ``slot`` holds exactly these bytes of ``ref``."""
    return slot is not None and slot.ref == ref and slot.sha256 == sha256


class SlotManager:
    """The active and previous models of one device, and the only way a model gets to serve.

    ``public_key_pem`` is the fleet's ed25519 public key. ``golden_inputs`` are rows the smoke test
    feeds every candidate (``None``: rows are synthesised from the model's declared input width, which
    must then be fixed). ``expected_outputs`` is the number of classes. ``max_awaiting_labels`` bounds
    the predictions remembered for delayed labels. ``on_label`` is called with each labelled
    prediction (its scored row attached), from the thread that recorded the label: the agent turns
    them into field samples.
    """

    def __init__(
        self,
        store: ModelStore,
        public_key_pem: bytes,
        golden_inputs: np.ndarray | None,
        expected_outputs: int,
        *,
        session_factory: SessionFactory = default_session_factory,
        events: EventSink = log_event,
        max_awaiting_labels: int = 10_000,
        window_factory: Callable[[], TelemetryWindow] = TelemetryWindow,
        on_label: Callable[[ArtifactRef, FeedbackPair], None] | None = None,
    ) -> None:
        key = load_pem_public_key(public_key_pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the fleet public key is not an ed25519 key")
        if expected_outputs < 1:
            raise ValueError(f"expected_outputs must be at least 1, got {expected_outputs}")
        if golden_inputs is not None and (golden_inputs.ndim != 2 or len(golden_inputs) == 0):
            raise ValueError(
                f"golden_inputs must be a non-empty 2-D array, got {golden_inputs.shape}"
            )
        self.store = store
        self._public_key_pem = public_key_pem
        self._golden = None if golden_inputs is None else golden_inputs.astype(np.float32)
        self._expected_outputs = expected_outputs
        self._factory = session_factory
        self._events = events
        self._window_factory = window_factory
        self._on_label = on_label
        self._labels: AwaitingLabels[ArtifactRef] = AwaitingLabels(max_awaiting_labels)
        # Three locks, always taken in this order, so a rollback never waits for a model to load:
        self._install_lock = threading.Lock()  # one verify/load/smoke pipeline at a time
        self._change_lock = threading.Lock()  # one change of the slots (persist, then swap)
        self._swap_lock = threading.Lock()  # guards _active, _previous, _windows; held briefly
        self._active: _Slot | None = None
        self._previous: _Slot | None = None
        self._windows: dict[ArtifactRef, TelemetryWindow] = {}
        self._shadow_plan: ShadowPlan | None = None
        self._shadow_budget: ShadowBudget | None = None
        self._shadow_jobs: queue.Queue[_ShadowJob] = queue.Queue(SHADOW_QUEUE)
        self._shadow_thread: threading.Thread | None = None
        self._rng = np.random.default_rng()

    # --- what serves -----------------------------------------------------------------------------

    @property
    def active(self) -> ArtifactRef | None:
        slot = self._active
        return slot.ref if slot else None

    @property
    def previous(self) -> ArtifactRef | None:
        slot = self._previous
        return slot.ref if slot else None

    @property
    def active_spec(self) -> ModelSpec | None:
        """The serving model's contract (how a request's named inputs become rows)."""
        with self._swap_lock:
            slot = self._active
        return slot.spec if slot else None

    def predict(self, x: np.ndarray, *, await_labels: bool = True) -> Prediction:
        """Score ``x`` (rows of features) with the active model; record latency or the error.

        The slot is read once, so a swap during the call cannot mix two models; the call finishes
        on the model it started with, and its telemetry goes to that model's window. Raises
        :class:`NoModelServing` and :class:`InferenceFailed` (the session's error is the cause).
        """
        with self._swap_lock:
            slot = self._active
        if slot is None:
            raise NoModelServing("no model is installed on this device yet")
        features = np.asarray(x, dtype=np.float32)
        try:
            feed = slot.spec.feed(features)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        start = time.perf_counter()
        try:
            raw = slot.session.run([slot.spec.scored.name], feed)[0]
            probabilities = slot.spec.scores({slot.spec.scored.name: raw})
        except Exception as exc:
            with self._swap_lock:
                self._window(slot.ref).record_error()
            raise InferenceFailed(
                f"{slot.ref} failed on an input of shape {features.shape}: {exc}",
                model=slot.ref.model,
                version=slot.ref.version,
            ) from exc
        latency_ms = (time.perf_counter() - start) * 1e3
        with self._swap_lock:  # with the lock, a flush cannot slip between lookup and record
            self._window(slot.ref).record_inference(
                latency_ms, rows=len(probabilities), inputs=features
            )
        self._offer_shadow(slot, features, probabilities, latency_ms)
        ids = tuple(uuid.uuid4().hex for _ in range(len(probabilities)))
        if await_labels and probabilities.ndim == 2 and slot.spec.task is Task.REGRESSION:
            for pid, values in zip(ids, probabilities.tolist(), strict=True):
                self._labels.expect(pid, slot.ref, tuple(values))
        elif await_labels and probabilities.ndim == 2:
            keep = self._on_label is not None and features.ndim == 2
            keep = keep and 0 < features.shape[1] <= MAX_FEATURES
            for i, (pid, predicted) in enumerate(
                zip(ids, probabilities.argmax(axis=1), strict=True)
            ):
                row = features[i].copy() if keep else None
                self._labels.expect(pid, slot.ref, int(predicted), row)
        return Prediction(probabilities=probabilities, ref=slot.ref, ids=ids)

    # --- shadow comparison -----------------------------------------------------------------------

    def plan_shadow(self, plan: ShadowPlan | None) -> None:
        """Compare the active model with ``plan.version`` from now on (None: stop comparing)."""
        with self._swap_lock:
            if plan == self._shadow_plan:
                return
            self._shadow_plan = plan
            self._shadow_budget = ShadowBudget(plan.cpu_budget) if plan is not None else None

    def _offer_shadow(
        self, slot: _Slot, features: np.ndarray, scores: np.ndarray, latency_ms: float
    ) -> None:
        """Hand a sampled share of what ``slot`` just served to the shadow thread, or count it
        skipped; never blocks."""
        with self._swap_lock:
            plan, budget, stable = self._shadow_plan, self._shadow_budget, self._previous
        if plan is None or budget is None or stable is None:
            return
        if stable.ref.version != plan.version or slot.ref.version == plan.version:
            return
        budget.served(latency_ms)
        rows = sample_rows(self._rng, len(scores), plan.rate)
        if not len(rows):
            return
        job = _ShadowJob(slot.ref, slot.spec.task, stable, features[rows], scores[rows], plan)
        if budget.allows():
            try:
                self._shadow_jobs.put_nowait(job)
                self._start_shadow_thread()
                return
            except queue.Full:
                pass
        with self._swap_lock, self._window(slot.ref).shadow(plan.version) as tally:
            tally.skip(len(rows))

    def _start_shadow_thread(self) -> None:
        if self._shadow_thread is None:
            self._shadow_thread = threading.Thread(
                target=self._shadow_loop, name="shadow", daemon=True
            )
            self._shadow_thread.start()

    def _shadow_loop(self) -> None:
        while True:
            job = self._shadow_jobs.get()
            try:
                self.run_shadow(job)
            finally:
                self._shadow_jobs.task_done()

    def run_shadow(self, job: _ShadowJob) -> None:
        """Score one job's rows with the stable model and count the comparison in the window of
        the version that served them (the shadow thread's work; tests call it directly)."""
        started = time.perf_counter()
        try:
            feed = job.stable.spec.feed(job.features)
            raw = job.stable.session.run([job.stable.spec.scored.name], feed)[0]
            stable_scores = job.stable.spec.scores({job.stable.spec.scored.name: raw})
            busy_ms = (time.perf_counter() - started) * 1e3
            with self._swap_lock, self._window(job.ref).shadow(job.plan.version) as tally:
                tally.add(
                    job.scores,
                    stable_scores,
                    task=job.task,
                    tolerance=job.plan.tolerance,
                    busy_ms=busy_ms,
                )
        except Exception as exc:
            busy_ms = (time.perf_counter() - started) * 1e3
            log.warning("shadow inference with %s failed: %s", job.stable.ref, exc)
            with self._swap_lock, self._window(job.ref).shadow(job.plan.version) as tally:
                tally.fail(len(job.features), busy_ms)
        budget = self._shadow_budget
        if budget is not None:
            budget.spent(busy_ms)

    def record_label(self, prediction_id: str, label: object) -> bool:
        """Pair a ground truth with an earlier prediction; the pair goes to the telemetry of the
        version that predicted, even if it no longer serves. False for an unknown id.

        ``label`` is a class index for a classifier, the target value (a number, or one per output)
        for a regressor; one that does not fit the prediction raises ValueError naming what was
        expected, and the prediction keeps waiting for its label."""
        resolved = self._labels.resolve(prediction_id, label)
        if resolved is None:
            return False
        ref, pair = resolved
        with self._swap_lock:
            self._window(ref).record_feedback(pair)
        if self._on_label is not None and pair.inputs is not None:
            self._on_label(ref, pair)
        return True

    def flush_telemetry(self) -> list[dict[str, Any]]:
        """One report per artifact with something to say, always one for the active artifact.

        Each report is stamped with the version that served it and ``running`` (True only for the
        one active now), so the controller confirms a device on telemetry FROM the new version.
        The running report also carries the label counters. Append each to a ``TelemetryBuffer``.
        """
        reports = []
        with self._swap_lock:  # recording happens under this lock too, so no count is lost
            active = self._active.ref if self._active else None
            keep = {ref for ref in (active, self.previous) if ref is not None}
            for ref in sorted(self._windows, key=lambda r: (r != active, r)):
                window = self._windows[ref]
                if ref != active and window.is_empty:
                    continue
                reports.append(
                    window.flush(
                        ref.version, model=ref.model, variant=ref.variant, running=ref == active
                    )
                )
            for ref in [r for r in self._windows if r not in keep]:
                del self._windows[ref]  # flushed; recreated if a late label arrives
            if active is not None and active not in self._windows:
                reports.insert(
                    0,
                    self._window(active).flush(
                        active.version, model=active.model, variant=active.variant
                    ),
                )
        if reports and active is not None:
            reports[0].update(self._labels.take_counters())
        return reports

    def _window(self, ref: ArtifactRef) -> TelemetryWindow:
        """The telemetry window of ``ref``, created on first use; call with ``_swap_lock`` held."""
        window = self._windows.get(ref)
        if window is None:
            window = self._windows[ref] = self._window_factory()
        return window

    # --- changing what serves --------------------------------------------------------------------

    def install(self, candidate: Candidate, *, allow_older: bool = False) -> InstallResult:
        """Verify, load into the second slot, smoke-test, then swap; see the module docstring.

        Returns the outcome; a rejection is returned, not raised (a corrupted download is an
        everyday event for the agent loop). Raises :class:`StoreError` only when the state directory
        itself fails, in which case nothing changed either. ``allow_older``: the controller's
        rollback path asks for this candidate, so a lower release than the serving one is taken.
        """
        ref = candidate.ref
        sha256 = candidate.sha256.lower()
        with self._install_lock:
            with self._change_lock:
                if _holds(self._active, ref, sha256):
                    return InstallResult(ref, InstallOutcome.ALREADY_ACTIVE, active=ref)
                older = self._older_than_serving(ref, candidate.release, allow_older)
                if older is not None:
                    return older
                if _holds(self._previous, ref, sha256):
                    self._swap_back()
                    return InstallResult(ref, InstallOutcome.REUSED_PREVIOUS, active=ref)

            self._emit("verify", ref.version)
            # A rollback may trade the slots meanwhile, but only an install (serialised by
            # _install_lock) changes which artifacts fill them, so this check stays true.
            for slot in (self._active, self._previous):
                if slot is not None and slot.ref == ref:  # same name, other bytes: never overwrite
                    return self._rejected(
                        ref,
                        RejectReason.SHA256,
                        f"the copy of {ref} already on this device has sha256 {slot.sha256}",
                    )
            try:
                staged = self.store.stage(ref, candidate.path)
            except OSError as exc:
                return self._rejected(ref, RejectReason.SHA256, f"cannot read the download: {exc}")
            try:
                if staged.sha256 != sha256:
                    self.store.discard(staged)
                    return self._rejected(
                        ref,
                        RejectReason.SHA256,
                        f"expected {candidate.sha256}, the file has {staged.sha256}",
                    )
                claim = _claim(ref, staged.sha256, candidate.release)  # of the bytes just hashed
                if not verify_claim(self._public_key_pem, claim, candidate.signature):
                    self.store.discard(staged)
                    return self._rejected(
                        ref,
                        RejectReason.SIGNATURE,
                        f"the fleet key did not sign this file as {claim.describe()}",
                    )
                stored = self.store.commit(
                    staged, signature=candidate.signature, release=candidate.release
                )
            except BaseException:
                self.store.discard(staged)
                raise

            try:
                slot = self._load_and_smoke(stored)
            except ArtifactRejected as rejection:
                self._forget(ref)
                return self._reject_with(rejection)
            self._swap_in(slot)
            try:
                self.store.prune()
            except StoreError as exc:  # installed all the same; pruning is retried next time
                log.warning("could not prune the model store: %s", exc)
            return InstallResult(ref, InstallOutcome.INSTALLED, active=ref)

    def activate(self, ref: ArtifactRef, *, allow_older: bool = False) -> InstallResult:
        """Serve ``ref`` from what the device already has: the active slot, the previous slot, or
        the store (verified, loaded and smoke-tested again). Raises :class:`NotStored` when the
        device does not have it; then the agent loop downloads it and calls :meth:`install`.
        ``allow_older`` as for :meth:`install`."""
        with self._change_lock:
            if self._active is not None and self._active.ref == ref:
                return InstallResult(ref, InstallOutcome.ALREADY_ACTIVE, active=ref)
            if self._previous is not None and self._previous.ref == ref:
                older = self._older_than_serving(ref, self._previous.release, allow_older)
                if older is not None:
                    return older
                self._swap_back()
                return InstallResult(ref, InstallOutcome.REUSED_PREVIOUS, active=ref)
        stored = self.store.get(ref)
        return self.install(
            Candidate(
                model=ref.model,
                version=ref.version,
                variant=ref.variant,
                path=stored.path,
                sha256=stored.sha256,
                signature=stored.signature,
                release=stored.release,
            ),
            allow_older=allow_older,
        )

    def refuse_older(self, ref: ArtifactRef, release: int) -> InstallResult | None:
        """The rejection of ``ref`` at ``release`` when it is older than the serving release of
        its model (checked before a download; the install checks again)."""
        with self._change_lock:
            return self._older_than_serving(ref, release, allow_older=False)

    def _older_than_serving(
        self, ref: ArtifactRef, release: int, allow_older: bool
    ) -> InstallResult | None:
        """The rejection of a lower release of the serving model, unless ``allow_older``."""
        active = self._active
        if allow_older or active is None or active.ref.model != ref.model:
            return None
        if release >= active.release:
            return None
        return self._rejected(
            ref,
            RejectReason.RELEASE,
            f"release {release} is older than release {active.release} ({active.ref}) serving, "
            "and the controller did not ask for it as a rollback",
        )

    def rollback_local(self) -> ArtifactRef:
        """Swap the previous model back in at once (no download, no load); returns it.

        The model swapped out becomes previous, so the rollback can itself be undone. It does not
        wait for an install in progress (that one swaps in afterwards, if it passes). Raises
        :class:`NoPreviousModel` when there is nothing to go back to.
        """
        with self._change_lock:
            if self._previous is None:
                raise NoPreviousModel("there is no previous model on this device to roll back to")
            return self._swap_back()

    def restore(self) -> ArtifactRef | None:
        """After a restart, serve again what ``slots.json`` records; returns what serves now.

        Both slots are verified (sha256 against the manifest, signature), loaded and smoke-tested
        again: the disk may have been damaged by the crash. If the active model fails, the previous
        one serves instead; if both fail, nothing serves (``None``) and the agent must download.
        """
        with self._install_lock:
            recorded = self.store.read_slots()
            restored: list[_Slot] = []
            for ref in (recorded.active, recorded.previous):
                if ref is None:
                    continue
                slot = self._restore_one(ref)
                if slot is not None:
                    restored.append(slot)
            now = Slots(
                restored[0].ref if restored else None,
                restored[1].ref if len(restored) > 1 else None,
            )
            with self._change_lock:
                if now != recorded:
                    self.store.write_slots(now)
                with self._swap_lock:
                    self._active = restored[0] if restored else None
                    self._previous = restored[1] if len(restored) > 1 else None
            if now.active is not None:
                self._emit("restore", now.active.version)
            return now.active

    def _restore_one(self, ref: ArtifactRef) -> _Slot | None:
        self._emit("verify", ref.version)
        try:
            stored = self.store.get(ref)
        except StoreError as exc:  # gone, or a manifest the crash left unreadable
            self._rejected(ref, RejectReason.SHA256, str(exc))
            return None
        try:
            self._verify_stored(stored)
            return self._load_and_smoke(stored)
        except ArtifactRejected as rejection:
            self._reject_with(rejection)
            return None

    def _verify_stored(self, stored: StoredArtifact) -> None:
        ref = stored.ref
        try:
            actual = file_sha256(stored.path)
        except OSError as exc:
            raise self._rejection(
                ref, RejectReason.SHA256, f"cannot read {stored.path}: {exc}"
            ) from exc
        if actual != stored.sha256:
            raise self._rejection(
                ref,
                RejectReason.SHA256,
                f"the manifest says {stored.sha256}, the file has {actual}",
            )
        claim = _claim(ref, stored.sha256, stored.release)  # its bytes were hashed just above
        if not verify_claim(self._public_key_pem, claim, stored.signature):
            raise self._rejection(
                ref,
                RejectReason.SIGNATURE,
                f"the stored signature does not verify for {claim.describe()}",
            )

    # --- the steps -------------------------------------------------------------------------------

    def _load_and_smoke(self, stored: StoredArtifact) -> _Slot:
        ref = stored.ref
        self._emit("load", ref.version)
        try:
            session = self._factory(stored.path)
        except Exception as exc:
            raise self._rejection(ref, RejectReason.LOAD, f"{type(exc).__name__}: {exc}") from exc
        try:
            spec = read_spec(session, classes=self._expected_outputs)
        except ModelSpecError as exc:
            raise self._rejection(ref, RejectReason.LOAD, str(exc)) from exc
        self._emit("smoke", ref.version)
        golden = self._golden if self._golden is not None else self._synthesise(spec)
        try:
            output = np.asarray(session.run([spec.scored.name], spec.feed(golden))[0])
        except Exception as exc:
            raise self._rejection(
                ref, RejectReason.SMOKE, f"it raised on the golden inputs: {exc}"
            ) from exc
        problem = self._smoke_problem(spec, output, len(golden))
        if problem:
            raise self._rejection(ref, RejectReason.SMOKE, problem)
        return _Slot(
            ref=ref, sha256=stored.sha256, session=session, spec=spec, release=stored.release
        )

    @staticmethod
    def _synthesise(spec: ModelSpec) -> np.ndarray:
        """Golden rows drawn inside each input's value range, when the device was given none."""
        rng = np.random.default_rng(0)
        parts = [
            rng.uniform(*(i.value_range or (-1.0, 1.0)), size=(GOLDEN_ROWS, i.size))
            for i in spec.inputs
        ]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _smoke_problem(self, spec: ModelSpec, output: np.ndarray, rows: int) -> str:
        """Why ``output`` is not a usable answer to ``rows`` golden rows ('' when it is)."""
        if spec.task is Task.CLASSIFICATION and spec.scored.width != self._expected_outputs:
            return (
                f"output {spec.scored.name!r} has {spec.scored.width} classes, this device "
                f"expects {self._expected_outputs}"
            )
        return spec.output_problem(output, rows)

    def _swap_in(self, slot: _Slot) -> None:
        """Make ``slot`` active and the active one previous: persisted first, then in memory.

        If ``slots.json`` cannot be written, :class:`StoreError` propagates and nothing changed.
        """
        with self._change_lock:
            active = self._active
            self.store.write_slots(Slots(slot.ref, active.ref if active else None))
            with self._swap_lock:
                self._previous, self._active = active, slot
            self._emit("swap", slot.ref.version)

    def _swap_back(self) -> ArtifactRef:
        """Trade the slots; the caller holds ``_change_lock`` and has checked previous exists."""
        active, previous = self._active, self._previous
        assert previous is not None
        self.store.write_slots(Slots(previous.ref, active.ref if active else None))
        with self._swap_lock:
            self._active, self._previous = previous, active
        self._emit("rollback", previous.ref.version)
        return previous.ref

    def _forget(self, ref: ArtifactRef) -> None:
        """Remove a rejected artifact from disk unless it fills a slot."""
        try:
            if not self.store.read_slots().protects(ref):
                self.store.remove(ref)
        except StoreError as exc:  # debris is pruned later; the rejection is what matters
            log.warning("could not remove rejected %s: %s", ref, exc)

    # --- rejections and events -------------------------------------------------------------------

    def _emit(self, *event: str) -> None:
        self._events(tuple(event))

    def _rejection(self, ref: ArtifactRef, reason: RejectReason, detail: str) -> ArtifactRejected:
        return ArtifactRejected(
            f"{ref} rejected: {reason.phrase()} ({detail})",
            reason=reason,
            model=ref.model,
            version=ref.version,
            variant=ref.variant,
            detail=detail,
        )

    def _reject_with(self, rejection: ArtifactRejected) -> InstallResult:
        self._emit("reject", rejection.version, rejection.reason.phrase())
        ref = ArtifactRef(rejection.model, rejection.version, rejection.variant)
        return InstallResult(ref, InstallOutcome.REJECTED, active=self.active, rejection=rejection)

    def _rejected(self, ref: ArtifactRef, reason: RejectReason, detail: str) -> InstallResult:
        return self._reject_with(self._rejection(ref, reason, detail))
