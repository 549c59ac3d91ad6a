"""Run N simulated edge agents against a real fleet controller, in one process, over real HTTP.

Each device is one asyncio task pair (a poller and a worker) sharing one aiohttp connection pool (aiohttp
releases a thousand long-polls in well under a second where httpx took many) and one
:class:`~fleet.simulate.sessions.SessionCache`. A device does what the agent does, on the wire:

- enrols with the fleet's enrolment token and keeps its credential and the fleet public key on "disk";
- long-polls its desired state; on a new artifact it activates a copy it already has on disk at once
  (a rollback needs no download), else downloads it, checks the sha256 and the ed25519 signature with
  :func:`fleet.shared.signature.verify_claim`, and only then switches; a rejected download leaves it
  on its model and is retried after a back-off;
- every ``report_interval_s`` it scores ``rows_per_report`` rows of the field split through the shared
  session in one call, records each row's latency (the measured per-row time times its class's factor)
  in a :class:`~fleet.agent.telemetry.TelemetryWindow`, adds labelled feedback for ``feedback_rate``
  of the predictions, and sends the report, stamped with the version actually running, with its
  ``(buffer_id, seq)``. Offline, reports wait in the device's outbox and go on reconnect; the outbox
  holds ``outbox_limit`` reports, drops the oldest beyond that and reports the count (``dropped_total``).
  Each labelled row is also a field sample (the row as the device saw it, the prediction, the label,
  the version, whether drift was injected): kept in a second outbox of ``field_outbox_limit`` samples
  (the same drop rule) and posted to ``/v1/devices/{id}/field-samples`` after the telemetry. A
  regressor's labelled rows send their target values (``field_y`` holds them, a row per sample or a
  column per output), counted by the controller's MAE gate, and no field sample (field samples carry
  classes);
- when its desired state carries a shadow plan and the plan's stable version is on its disk, it also
  scores a sampled share of the rows with that version within the plan's CPU budget and reports the
  paired comparisons (:mod:`fleet.shared.shadow`), as the agent does.

What survives a simulated crash is exactly the device's "disk": credential, public key, downloaded
models, the active model and the outbox with its sequence counter. The open telemetry window and the
desired-state revision are memory and are lost.

A :class:`Simulation` can be run several times (``run(until=...)``); between runs the devices are off
and the next run restarts them from their disk, which lets a test drive a rollout step by step.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from fleet.agent.telemetry import FeedbackPair, TelemetryWindow
from fleet.shared.drift import DetectorPolicy, DeviceDetector, DriftReference
from fleet.shared.modelspec import Task
from fleet.shared.protocol import (
    ENROL_PATH,
    ENROLMENT_TOKENS_PATH,
    LONG_POLL_MAX_S,
    MAX_FIELD_SAMPLES_PER_BATCH,
    MAX_REFUSALS,
    MAX_REPORTS_PER_BATCH,
    Artifact,
    DesiredState,
    EnrolResponse,
    ShadowPlan,
    TelemetryAck,
    desired_path,
    field_samples_path,
    telemetry_path,
    values_prefix,
)
from fleet.shared.shadow import ShadowBudget, sample_rows
from fleet.shared.signature import ReleaseClaim, verify_claim
from fleet.simulate.faults import (
    FAULT_KINDS,
    FaultPlan,
    FaultWindow,
    assign_classes,
    parse_classes,
    parse_faults,
)
from fleet.simulate.sessions import SessionCache

log = logging.getLogger(__name__)

# --- results -------------------------------------------------------------------------------------


@dataclass
class DeviceResult:
    """One device's outcome; ``version`` is what it runs at the end (None: nothing installed)."""

    device_id: str
    hardware_class: str
    version: str | None = None
    enrolled: bool = False
    reports_sent: int = 0
    reports_acked: int = 0
    reports_pending: int = 0
    reports_dropped: int = 0
    field_samples_sent: int = 0
    field_samples_pending: int = 0
    field_samples_dropped: int = 0
    rejections: int = 0
    downloads: int = 0
    activations_from_disk: int = 0
    errors: int = 0
    faults: tuple[str, ...] = ()


@dataclass
class SimulationResult:
    """Per device results and the timeline of ``(t, device, version)`` changes (``t`` in seconds from
    the start of the first run)."""

    devices: dict[str, DeviceResult] = field(default_factory=dict)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    session_loads: int = 0

    def versions(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for d in self.devices.values():
            counts[d.version] = counts.get(d.version, 0) + 1
        return counts

    def on(self, version: str) -> list[str]:
        return sorted(d.device_id for d in self.devices.values() if d.version == version)


# --- one device ----------------------------------------------------------------------------------


@dataclass
class _Disk:
    """What survives a crash: credential, key, models, active model, outbox."""

    credential: str | None = None
    public_key_pem: bytes = b""
    models: dict[str, Artifact] = field(default_factory=dict)  # version -> verified artifact
    active: Artifact | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    field_outbox: list[dict[str, Any]] = field(default_factory=list)
    field_dropped: int = 0
    next_seq: int = 1
    dropped: int = 0
    buffer_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class _Device:
    def __init__(self, sim: Simulation, device_id: str, hardware_class: str, index: int) -> None:
        self.sim = sim
        self.id = device_id
        self.cls = hardware_class
        self.disk = _Disk()
        self.rng = np.random.default_rng(sim.seed * 7919 + index)
        self.result = DeviceResult(device_id, hardware_class)
        self._reset_memory()

    def _reset_memory(self) -> None:
        self.revision: int | None = None
        self.shadow: ShadowPlan | None = None
        self.budget: ShadowBudget | None = None
        self.refusals: list[dict[str, str]] = []  # refused artifacts, for the next report
        self.window = TelemetryWindow()
        self.retry_at = 0.0
        ref = self.sim.drift_reference
        self.detector = DeviceDetector(ref, self.sim.detector_policy) if ref is not None else None

    # helpers ---------------------------------------------------------------------------------------

    def fault(self, kind: str) -> bool:
        return self.sim.faults.active(kind, self.id, self.sim.hit, self.sim.now())

    def down(self) -> bool:
        return self.fault("crash")

    def offline(self) -> bool:
        return self.down() or self.fault("offline")

    def next_edge(self) -> float:
        t = self.sim.now()
        later = [e for e in self.sim.faults.boundaries(self.id, self.sim.hit) if e > t]
        return min(later) - t if later else math.inf

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.disk.credential}"}

    def _set_active(self, artifact: Artifact) -> None:
        before = self.disk.active.version if self.disk.active else None
        if before != artifact.version and before is not None:
            self._flush(running=False)  # the old version's window ends with it
        self.disk.active = artifact
        self.result.version = artifact.version
        if before != artifact.version:
            self.sim.result.timeline.append((round(self.sim.now(), 3), self.id, artifact.version))

    # enrolment and desired state -----------------------------------------------------------------

    async def enrol(self) -> None:
        while self.disk.credential is None:
            if self.offline():
                await asyncio.sleep(0.1)
                continue
            body = {"token": self.sim.token, "device_id": self.id, "hardware_class": self.cls}
            try:
                async with self.sim.http.post(f"{self.sim.base}{ENROL_PATH}", json=body) as r:
                    text = await r.text()
                    if r.status != 200:
                        raise RuntimeError(f"enrol {self.id}: {r.status} {text}")
                    answer = EnrolResponse.model_validate_json(text)
            except aiohttp.ClientError:
                self.result.errors += 1
                await asyncio.sleep(0.5)
                continue
            self.disk.credential = answer.credential
            self.disk.public_key_pem = answer.public_key_pem.encode()
            self.result.enrolled = True

    async def poll_loop(self) -> None:
        await self.enrol()
        while True:
            if self.offline():
                await asyncio.sleep(min(0.1, max(self.next_edge(), 0.01)))
                if not self.down():
                    continue
                while self.down():
                    await asyncio.sleep(0.05)
                self._reset_memory()  # a restart forgets the revision and the open window
                continue
            wait = min(self.sim.poll_wait_s, self.next_edge())
            if self.retry_at > self.sim.now():
                wait = min(wait, self.retry_at - self.sim.now())
            params: dict[str, str] = {"wait": f"{max(wait, 0.0):.3f}"}
            if self.revision is not None:
                params["revision"] = str(self.revision)
            url = f"{self.sim.base}{desired_path(self.id)}"
            try:
                async with self.sim.http.get(url, params=params, headers=self.auth) as r:
                    text = await r.text()
                    if r.status != 200:
                        raise aiohttp.ClientResponseError(
                            r.request_info, (), status=r.status, message=text
                        )
                    state = DesiredState.model_validate_json(text)
            except (TimeoutError, aiohttp.ClientError):
                self.result.errors += 1
                await asyncio.sleep(0.5)
                continue
            if self.offline():
                continue  # went offline during the poll: the answer never arrived
            if await self.reconcile(state):
                self.revision = state.revision
            else:
                self.revision = None  # try again after the back-off
                self.retry_at = self.sim.now() + self.sim.retry_s
                await asyncio.sleep(self.sim.retry_s)

    async def reconcile(self, state: DesiredState) -> bool:
        """Move to the desired artifact; False when it was rejected (retry later)."""
        if state.shadow != self.shadow:
            self.shadow = state.shadow
            self.budget = ShadowBudget(state.shadow.cpu_budget) if state.shadow else None
        want = state.artifact
        if want is None:
            return True
        active = self.disk.active
        if active is not None and active.version == want.version and active.sha256 == want.sha256:
            return True
        older = active is not None and active.model == want.model and want.release < active.release
        if older and not state.rollback:  # as the agent: no older release but a rollback
            self._refuse(want, "release", "older than the release serving")
            return False
        kept = self.disk.models.get(want.version)
        if kept is not None and kept.sha256 == want.sha256:
            self.result.activations_from_disk += 1
            self._set_active(kept)
            return True
        return await self.install(want)

    async def install(self, want: Artifact) -> bool:
        url = want.url if "://" in want.url else f"{self.sim.base}{want.url}"
        try:
            async with self.sim.http.get(url, headers=self.auth) as r:
                if r.status != 200:
                    self.result.errors += 1
                    return False
                data = await r.read()
        except (TimeoutError, aiohttp.ClientError):
            self.result.errors += 1
            return False
        self.result.downloads += 1
        if self.fault("corrupt"):
            data = _corrupt(data, self.rng)
        if hashlib.sha256(data).hexdigest() != want.sha256:
            self._refuse(want, "sha256", "the download is not the announced bytes")
            return False
        self.sim.store_bytes(want.sha256, data)
        if not self.sim.verified(self.disk.public_key_pem, want):
            self._refuse(want, "signature", "the fleet key did not sign this release")
            return False
        self.disk.models[want.version] = want
        self._set_active(want)
        return True

    def _refuse(self, want: Artifact, reason: str, detail: str) -> None:
        """Count a refused artifact and name it in the next running report."""
        self.result.rejections += 1
        self.refusals.append(
            {"version": want.version, "variant": want.variant, "reason": reason, "detail": detail}
        )

    # serving and telemetry ---------------------------------------------------------------------

    async def work_loop(self) -> None:
        interval = self.sim.report_interval_s
        await asyncio.sleep(float(self.rng.uniform(0, interval)))  # spread the reports
        while True:
            if not self.down() and self.disk.active is not None:
                if self.sim.serving:
                    await self.infer()
                    self._flush(running=True)
                if not self.offline():
                    await self.send()
            await asyncio.sleep(interval)

    async def infer(self) -> None:
        active = self.disk.active
        assert active is not None
        sim = self.sim
        k = sim.rows_per_report
        rows = self.rng.integers(0, len(sim.field_x), size=k)
        x = sim.field_x[rows].astype(np.float32, copy=True)
        if self.fault("drift"):
            x += sim.faults.drift_shift
            x += self.rng.normal(0, sim.faults.drift_noise, x.shape).astype(np.float32)
            if sim.faults.drift_clip is not None:
                np.clip(x, *sim.faults.drift_clip, out=x)
        try:
            scores, batch_ms, spec = await sim.sessions.predict(
                active.sha256, sim.model_path(active), x
            )
        except Exception:  # a failing model is a reported error, as on a device
            for _ in range(k):
                self.window.record_error()
            return
        if self.disk.active is not active:
            return  # swapped while scoring: this batch belongs to no window
        await self._shadow(active, x, scores, batch_ms, spec.task)
        factor = sim.latency_scale.get(self.cls, 1.0)
        if self.fault("slow"):
            factor *= sim.faults.slow_factor
        jitter = self.rng.lognormal(0.0, 0.1, size=k)
        for latency in batch_ms / k * factor * jitter:
            self.window.record_inference(float(latency))
        self.window.inputs.update(x)
        if self.detector is not None:
            self.detector.observe_inputs(x)
        labelled = np.flatnonzero(self.rng.random(k) < sim.feedback_rate)
        if spec.task is Task.REGRESSION:  # target values: feedback for the MAE gate, no samples
            targets = sim.field_y[rows[labelled]].astype(float).reshape(len(labelled), -1)
            for i, target in zip(labelled, targets, strict=True):
                predicted = tuple(float(v) for v in scores[i])
                truth = tuple(float(v) for v in target)
                self.window.record_feedback(FeedbackPair(uuid.uuid4().hex[:16], predicted, truth))
            return
        preds = scores.argmax(axis=1).astype(np.int64)
        if self.detector is not None:
            self.detector.observe_predictions(preds)
        for i in labelled:
            pair = FeedbackPair(uuid.uuid4().hex[:16], int(preds[i]), int(sim.field_y[rows[i]]))
            self.window.record_feedback(pair)
        self._keep_field_samples(active, x[labelled], preds[labelled], sim.field_y[rows[labelled]])

    async def _shadow(
        self, active: Artifact, x: np.ndarray, scores: np.ndarray, batch_ms: float, task: Task
    ) -> None:
        """Score the sampled rows with the stable model too, as the agent does, within budget."""
        plan, budget = self.shadow, self.budget
        stable = self.disk.models.get(plan.version) if plan is not None else None
        if plan is None or budget is None or stable is None or plan.version == active.version:
            return
        budget.served(batch_ms)
        rows = sample_rows(self.rng, len(x), plan.rate)
        if not len(rows):
            return
        if not budget.allows():
            with self.window.shadow(plan.version) as tally:
                tally.skip(len(rows))
            return
        try:
            stable_scores, shadow_ms, _ = await self.sim.sessions.predict(
                stable.sha256, self.sim.model_path(stable), x[rows]
            )
        except Exception:
            with self.window.shadow(plan.version) as tally:
                tally.fail(len(rows))
            return
        budget.spent(shadow_ms)
        if self.disk.active is not active:
            return
        with self.window.shadow(plan.version) as tally:
            tally.add(
                scores[rows], stable_scores, task=task, tolerance=plan.tolerance, busy_ms=shadow_ms
            )

    def _keep_field_samples(
        self, active: Artifact, x: np.ndarray, preds: np.ndarray, labels: np.ndarray
    ) -> None:
        drifted = self.fault("drift")
        for row, predicted, label in zip(x, preds, labels, strict=True):
            self.disk.field_outbox.append(
                {
                    "model": active.model,
                    "version": active.version,
                    "features": [float(v) for v in row],
                    "predicted": int(predicted),
                    "label": int(label),
                    "drifted": drifted,
                }
            )
        excess = len(self.disk.field_outbox) - self.sim.field_outbox_limit
        if excess > 0:  # bounded like the telemetry outbox: the oldest go, and are counted
            del self.disk.field_outbox[:excess]
            self.disk.field_dropped += excess
        self.result.field_samples_dropped = self.disk.field_dropped
        self.result.field_samples_pending = len(self.disk.field_outbox)

    def _flush(self, *, running: bool) -> None:
        active = self.disk.active
        if active is None or self.window.is_empty:
            return
        report = self.window.flush(
            active.version, model=active.model, variant=active.variant, running=running
        )
        excess = len(self.disk.outbox) + 1 - self.sim.outbox_limit
        if excess > 0:  # bounded, as on a device: the oldest reports go, and are counted
            del self.disk.outbox[:excess]
            self.disk.dropped += excess
        report.update(
            seq=self.disk.next_seq, buffer_id=self.disk.buffer_id, dropped_total=self.disk.dropped
        )
        self.result.reports_dropped = self.disk.dropped
        if self.detector is not None:
            report["events"] = [e.to_dict() for e in self.detector.take_events()]
        if running and self.refusals:  # as the agent: the controller hears at once
            report["refusals"] = self.refusals[-MAX_REFUSALS:]
            self.refusals = []
        self.disk.next_seq += 1
        self.disk.outbox.append(report)
        self.result.reports_pending = len(self.disk.outbox)

    async def send(self) -> None:
        url = f"{self.sim.base}{telemetry_path(self.id)}"
        while self.disk.outbox and not self.offline():
            batch = self.disk.outbox[:MAX_REPORTS_PER_BATCH]
            try:
                async with self.sim.http.post(url, json={"reports": batch}, headers=self.auth) as r:
                    text = await r.text()
                    self.result.reports_sent += len(batch)
                    if r.status != 200:
                        self.result.errors += 1
                        return
                    ack = TelemetryAck.model_validate_json(text)
            except (TimeoutError, aiohttp.ClientError):
                self.result.errors += 1
                return
            done = set(ack.accepted) | set(ack.duplicates) | set(ack.refused)
            self.result.reports_acked += len(done)
            self.disk.outbox = [r for r in self.disk.outbox if r["seq"] not in done]
            self.result.reports_pending = len(self.disk.outbox)
        await self.send_field_samples()

    async def send_field_samples(self) -> None:
        url = f"{self.sim.base}{field_samples_path(self.id)}"
        while self.disk.field_outbox and not self.offline():
            batch = self.disk.field_outbox[:MAX_FIELD_SAMPLES_PER_BATCH]
            batch = batch[: values_prefix([len(sample["features"]) for sample in batch])]
            body = {"samples": batch, "dropped_total": self.disk.field_dropped}
            try:
                async with self.sim.http.post(url, json=body, headers=self.auth) as r:
                    await r.read()
                    if r.status != 200:
                        self.result.errors += 1
                        return
            except (TimeoutError, aiohttp.ClientError):
                self.result.errors += 1
                return
            del self.disk.field_outbox[: len(batch)]
            self.result.field_samples_sent += len(batch)
            self.result.field_samples_pending = len(self.disk.field_outbox)


def _waiting_in(tasks: Sequence[asyncio.Task[None]]) -> str:
    """Where the device tasks are suspended, counted by innermost function and line (a stall shows
    as most of them at one place)."""
    places: Counter[str] = Counter()
    for task in tasks:
        chain: list[str] = []
        coro: Any = None if task.done() else task.get_coro()
        while getattr(coro, "cr_frame", None) is not None:
            chain.append(f"{coro.cr_frame.f_code.co_name}:{coro.cr_frame.f_lineno}")
            coro = coro.cr_await  # down to the innermost coroutine
        places[" < ".join(reversed(chain[-2:])) or "done"] += 1
    return ", ".join(f"{n} at {place}" for place, n in places.most_common())


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip a few bytes (at least one) of a download, as a bad link or a tampering proxy would."""
    out = bytearray(data)
    for i in rng.integers(0, len(out), size=max(1, len(out) // 4096)):
        out[int(i)] ^= 0xFF
    return bytes(out)


# --- the fleet -----------------------------------------------------------------------------------


class Simulation:
    """A simulated fleet against ``controller_url``; see the module docstring.

    ``admin_token`` is used once, to create one enrolment token for every device. ``classes`` maps a
    hardware class to its share of the fleet; ``latency_scale`` maps a class to its latency factor.
    """

    def __init__(
        self,
        controller_url: str,
        admin_token: str,
        *,
        devices: int,
        classes: Mapping[str, float],
        field_x: np.ndarray,
        field_y: np.ndarray,
        feedback_rate: float = 0.5,
        latency_scale: Mapping[str, float] | None = None,
        faults: FaultPlan | None = None,
        report_interval_s: float = 1.0,
        rows_per_report: int = 20,
        poll_wait_s: float = LONG_POLL_MAX_S,
        retry_s: float = 1.0,
        seed: int = 0,
        prefix: str = "sim",
        workdir: Path | None = None,
        connections: int | None = None,
        outbox_limit: int = 10_000,
        field_outbox_limit: int = 5000,
        drift_reference: DriftReference | None = None,
        detector_policy: DetectorPolicy | None = None,
    ) -> None:
        if len(field_x) == 0 or len(field_x) != len(field_y):
            raise ValueError("field_x and field_y need the same, non-zero number of rows")
        if not 0 <= feedback_rate <= 1:
            raise ValueError(f"feedback_rate must be within [0, 1], got {feedback_rate}")
        self.base = controller_url.rstrip("/")
        self.admin_token = admin_token
        self.field_x = np.asarray(field_x, dtype=np.float32)
        y = np.asarray(field_y)
        self.field_y = y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y.astype(float)
        self.feedback_rate = feedback_rate
        self.serving = True
        """False: the devices serve no traffic and write no reports, but still send their outboxes
        (a test drains them without new reports arriving all the time)."""
        self.latency_scale = dict(latency_scale or {})
        self.faults = faults or FaultPlan()
        self.drift_reference = drift_reference
        self.detector_policy = detector_policy
        self.report_interval_s = report_interval_s
        self.rows_per_report = rows_per_report
        self.poll_wait_s = min(poll_wait_s, LONG_POLL_MAX_S)
        self.retry_s = retry_s
        if outbox_limit < 1:
            raise ValueError(f"outbox_limit must be at least 1, got {outbox_limit}")
        self.outbox_limit = outbox_limit
        if field_outbox_limit < 1:
            raise ValueError(f"field_outbox_limit must be at least 1, got {field_outbox_limit}")
        self.field_outbox_limit = field_outbox_limit
        self.seed = seed
        self.connections = connections or 2 * devices + 16
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="edgesim-")
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.sessions = SessionCache()
        self.result = SimulationResult()
        hw = assign_classes(devices, classes, seed)
        ids = [f"{prefix}-{i:05d}" for i in range(devices)]
        self.hit = self.faults.assign(ids, seed)
        self.devices = [
            _Device(self, d, c, i) for i, (d, c) in enumerate(zip(ids, hw, strict=True))
        ]
        for d in self.devices:
            self.result.devices[d.id] = d.result
        self._mark_faults()
        self.token = ""
        self._t0: float | None = None
        self._verified: dict[tuple[bytes, ReleaseClaim, str], bool] = {}
        self._http: aiohttp.ClientSession | None = None

    # shared services ----------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the first run started (fault windows are measured on this clock)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def inject(self, faults: FaultPlan) -> None:
        """Replace the fault plan between runs, its windows counted from now (e.g. once the fleet
        has converged); the devices each fault hits are drawn again from the seed."""
        shift = self.now()
        moved: dict[str, Any] = {
            kind: FaultWindow(w.fraction, w.start_s + shift, w.end_s + shift)
            for kind in FAULT_KINDS
            if (w := faults.window(kind)) is not None
        }
        self.faults = replace(faults, **moved)
        self.hit = self.faults.assign([d.id for d in self.devices], self.seed)
        self._mark_faults()

    def _mark_faults(self) -> None:
        for d in self.devices:
            d.result.faults = tuple(k for k, hit in self.hit.items() if d.id in hit)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "only inside run()"
        return self._http

    def model_path(self, artifact: Artifact) -> Path:
        return self.workdir / "models" / f"{artifact.sha256}.onnx"

    def store_bytes(self, sha256: str, data: bytes) -> Path:
        """The shared, content-addressed model store: each verified file is written once."""
        path = self.workdir / "models" / f"{sha256}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_suffix(f".{uuid.uuid4().hex}.part")
            part.write_bytes(data)
            part.replace(path)
        return path

    def verified(self, key: bytes, artifact: Artifact) -> bool:
        """``verify_claim`` once per (key, release claim, signature); the caller has checked that
        the downloaded bytes hash to ``artifact.sha256``."""
        claim = ReleaseClaim(
            model=artifact.model,
            version=artifact.version,
            variant=artifact.variant,
            sha256=artifact.sha256,
            release=artifact.release,
        )
        cache_key = (key, claim, artifact.signature)
        if cache_key not in self._verified:
            try:
                ok = bool(key) and verify_claim(key, claim, artifact.signature)
            except ValueError:
                ok = False
            self._verified[cache_key] = ok
        return self._verified[cache_key]

    async def _enrolment_token(self) -> None:
        if self.token:
            return
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        body = {"uses": max(1, len(self.devices))}
        async with self.http.post(
            f"{self.base}{ENROLMENT_TOKENS_PATH}", json=body, headers=headers
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"cannot create an enrolment token: {r.status} {text}")
            self.token = str((await r.json())["token"]) if text else ""

    # running ------------------------------------------------------------------------------------

    async def run(
        self,
        *,
        duration_s: float | None = None,
        until: Callable[[], bool] | None = None,
        check_s: float = 0.2,
        timeout_s: float | None = None,
    ) -> SimulationResult:
        """Run every device until ``duration_s`` passed or ``until()`` is true (checked every
        ``check_s`` in a thread, so it may block on HTTP), whichever comes first; ``timeout_s``
        bounds an ``until`` that never comes true (the result then says where the fleet stood)."""
        if duration_s is None and until is None:
            raise ValueError("give duration_s or until")
        if self._t0 is None:
            self._t0 = time.monotonic()
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        timeout = aiohttp.ClientTimeout(total=LONG_POLL_MAX_S + 15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            self._http = http
            await self._enrolment_token()
            tasks = [
                asyncio.create_task(loop())
                for d in self.devices
                for loop in (d.poll_loop, d.work_loop)
            ]
            try:
                while True:
                    elapsed = time.monotonic() - started
                    if duration_s is not None and elapsed >= duration_s:
                        break
                    if timeout_s is not None and elapsed >= timeout_s:
                        if until is not None:
                            log.warning(
                                "the condition did not come true in %.0f s; device tasks wait in: %s; "
                                "reports sent %d, acked %d, errors %d",
                                timeout_s,
                                _waiting_in(tasks),
                                sum(d.result.reports_sent for d in self.devices),
                                sum(d.result.reports_acked for d in self.devices),
                                sum(d.result.errors for d in self.devices),
                            )
                        break
                    failed = [t for t in tasks if t.done() and t.exception() is not None]
                    if failed:
                        raise failed[0].exception()  # type: ignore[misc]
                    if until is not None and await asyncio.to_thread(until):
                        break
                    await asyncio.sleep(check_s)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for d in self.devices:
                    d._reset_memory()  # powered off between runs: only the disk remains
                self._http = None
        self.result.elapsed_s = round(self.now(), 3)
        self.result.session_loads = self.sessions.loads
        return self.result

    def run_sync(self, **kwargs: Any) -> SimulationResult:
        return asyncio.run(self.run(**kwargs))

    @contextmanager
    def in_background(self, join_s: float = 40) -> Iterator[Simulation]:
        """Run in a thread of its own until the block ends; then stop, wait up to ``join_s``
        seconds for the devices' last calls, and close."""
        stop = threading.Event()
        thread = threading.Thread(
            target=lambda: self.run_sync(until=stop.is_set), name="simulation", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=join_s)
            self.close()

    def close(self) -> None:
        self.sessions.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def simulate(
    controller_url: str,
    admin_token: str,
    *,
    duration_s: float | None = None,
    until: Callable[[], bool] | None = None,
    **options: Any,
) -> SimulationResult:
    """One run of a fresh :class:`Simulation`; ``options`` are its constructor's keyword arguments."""
    sim = Simulation(controller_url, admin_token, **options)
    try:
        return sim.run_sync(duration_s=duration_s, until=until)
    finally:
        sim.close()


# --- command line --------------------------------------------------------------------------------


def load_field(path: Path, schema: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a split parquet; features are the schema's, else every non-label
    column."""
    import json

    import pandas as pd

    frame = pd.read_parquet(path)
    schema = schema or path.with_name("schema.json")
    if schema.is_file():
        names = list(json.loads(schema.read_text())["feature_names"])
    else:
        names = [c for c in frame.columns if c != "label"]
    return frame[names].to_numpy(np.float32), frame["label"].to_numpy(np.int64)


def _scales(text: str) -> dict[str, float]:
    return parse_classes(text) if text else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.simulate.fleet", description=__doc__)
    parser.add_argument("--controller", required=True, help="base URL of the fleet controller")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--classes", default="host-cpu:0.7,edge-small:0.3")
    parser.add_argument("--latency-scale", default="host-cpu:1,edge-small:4")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--field", type=Path, default=Path("data/splits/field.parquet"))
    parser.add_argument("--feedback-rate", type=float, default=0.5)
    parser.add_argument("--report-interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="", help="e.g. drift:0.1,slow:0.05 (whole run)")
    parser.add_argument(
        "--drift-reference", type=Path, help="JSON drift reference: devices run the detectors"
    )
    args = parser.parse_args(argv)
    try:
        classes = parse_classes(args.classes)
        faults = parse_faults(args.faults)
        reference = DriftReference.load(args.drift_reference) if args.drift_reference else None
        scales = _scales(args.latency_scale)
        x, y = load_field(args.field)
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = simulate(
        args.controller,
        args.admin_token,
        devices=args.devices,
        classes=classes,
        field_x=x,
        field_y=y,
        feedback_rate=args.feedback_rate,
        latency_scale=scales,
        duration_s=args.duration,
        report_interval_s=args.report_interval,
        seed=args.seed,
        faults=faults,
        drift_reference=reference,
    )
    enrolled = sum(d.enrolled for d in result.devices.values())
    sent = sum(d.reports_sent for d in result.devices.values())
    acked = sum(d.reports_acked for d in result.devices.values())
    rejected = sum(d.rejections for d in result.devices.values())
    print(
        f"{len(result.devices)} devices ({enrolled} enrolled) in {result.elapsed_s:.1f} s: "
        f"versions {result.versions()}, reports sent {sent}, acked {acked}, rejections {rejected}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
