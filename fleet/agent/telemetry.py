"""What a device reports about the model it runs, and the disk buffer that holds reports while offline.

Two boundaries live here, for two different failures.

:class:`TelemetryWindow` aggregates in memory between two reports: inference and error counts, a
latency histogram with fixed bucket bounds, per-feature input statistics and labelled feedback pairs.
Everything in it is bounded, so a busy device cannot grow a report without limit: the cost per inference
is O(features) and the feedback list has a cap whose overflow is counted. One window belongs to one
version (``flush(version)`` stamps it), because the controller counts a device as upgraded only on
telemetry FROM the new version; ``SlotManager`` keeps a window per served artifact so an inference is
never credited to a version that did not serve it.

:class:`AwaitingLabels` remembers recent predictions until their ground-truth label arrives. It is not
part of a window: labels come late, often after the window that served the prediction was flushed or
after a swap, and the feedback pair must still go to the version that made the prediction.

:class:`TelemetryBuffer` is the device's outbox. The controller may be unreachable for hours; the agent
keeps serving and appends reports here, and sends them on reconnect. It lives in SQLite (WAL,
``synchronous=FULL``), so a crash or a power cut never corrupts it and never loses a committed sequence
number. It is bounded by a number of reports and a number of bytes; at the bound the OLDEST reports go,
and the number dropped is counted persistently and carried by every later report (``dropped_total``), so
nothing disappears without the controller learning of it. Sequence numbers increase strictly and are
never reused, even across restarts, which makes sending idempotent per (device, seq).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from fleet.agent.errors import ReportTooLarge, TelemetryError
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyRecorder
from fleet.shared.protocol import MAX_ABS_ERROR, MAX_CLASS_INDEX
from fleet.shared.shadow import ShadowTally

RESERVED_KEYS = ("seq", "dropped_total", "buffer_id")
"""Keys :class:`TelemetryBuffer` adds to each report; a report may not carry them itself."""

K = TypeVar("K", bound=Hashable)


# --- aggregation ---------------------------------------------------------------------------------


class InputStats:
    """Per-feature count, mean and standard deviation of the inputs seen, merged batch by batch.

    Cost is O(features) per row and memory O(features), whatever the traffic. Only the first
    ``max_features`` features are tracked; rows with a NaN or Inf are counted, not averaged; a batch
    whose width differs from the first one seen (not expected within one version) is counted as
    skipped.
    """

    def __init__(self, max_features: int = 256) -> None:
        self.max_features = max_features
        self.count = 0
        self.nonfinite_rows = 0
        self.skipped_rows = 0
        self.features: int | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, inputs: np.ndarray) -> None:
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[0] == 0:
            self.skipped_rows += int(x.shape[0]) if x.ndim else 1
            return
        if self.features is None:
            self.features = int(x.shape[1])
        if x.shape[1] != self.features:
            self.skipped_rows += int(x.shape[0])
            return
        x = x[:, : self.max_features]
        finite = np.isfinite(x).all(axis=1)
        self.nonfinite_rows += int((~finite).sum())
        x = x[finite]
        n_b = int(x.shape[0])
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self._mean is None or self._m2 is None:
            self.count, self._mean, self._m2 = n_b, mean_b, m2_b
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    def to_dict(self) -> dict[str, Any]:
        mean = [] if self._mean is None else [float(v) for v in self._mean]
        std = (
            []
            if self._m2 is None or self.count == 0
            else [float(v) for v in np.sqrt(self._m2 / self.count)]
        )
        return {
            "count": self.count,
            "features": self.features,
            "features_tracked": len(mean),
            "mean": mean,
            "std": std,
            "nonfinite_rows": self.nonfinite_rows,
            "skipped_rows": self.skipped_rows,
        }


Values = tuple[float, ...]
"""A regressor's prediction, or the target values that came back for it, one per output."""


@dataclass(frozen=True)
class FeedbackPair:
    """A prediction and its ground truth, for the field-quality gates: a classifier's predicted
    class and true label (accuracy), or a regressor's predicted values and target values (MAE).
    ``inputs`` (the row that was scored, when kept) makes a classifier's pair a field sample for
    retraining and is not part of telemetry."""

    prediction_id: str
    predicted: int | Values
    label: int | Values
    inputs: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def abs_error(self) -> float | None:
        """A regressor's mean absolute error over its outputs; None for a classifier's pair."""
        if isinstance(self.predicted, int) or isinstance(self.label, int):
            return None
        return math.fsum(abs(p - t) for p, t in zip(self.predicted, self.label, strict=True)) / len(
            self.label
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form, a :class:`~fleet.shared.protocol.Feedback`."""
        error = self.abs_error
        if error is not None:
            return {"prediction_id": self.prediction_id, "abs_error": error}
        return {
            "prediction_id": self.prediction_id,
            "predicted": self.predicted,
            "label": self.label,
        }


def ground_truth(value: object, predicted: int | Values) -> int | Values:
    """``value`` as the ground truth of a prediction ``predicted``: a class index for a classifier,
    one finite number per output for a regressor (a bare number for a single output). Raises
    ValueError naming what was expected."""
    if isinstance(predicted, int):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= MAX_CLASS_INDEX
        ):
            raise ValueError(
                f"a classifier's label is a class index (0 to {MAX_CLASS_INDEX}), not {value!r}"
            )
        return value
    items = value if isinstance(value, list) else [value]
    numbers = [
        float(v)
        for v in items
        if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= MAX_ABS_ERROR / 2
    ]
    if len(numbers) != len(items) or len(numbers) != len(predicted):
        raise ValueError(
            f"a regressor's target is {len(predicted)} number(s) of at most {MAX_ABS_ERROR / 2:g} "
            "in size, one per output, "
            f"not {value!r}"
        )
    return tuple(numbers)


class AwaitingLabels(Generic[K]):
    """Recent predictions waiting for a label, at most ``max_pending``; the oldest are forgotten first.

    ``key`` says where the feedback pair belongs (``SlotManager`` uses the artifact that predicted).
    Forgetting is normal (most predictions never get a label) and is counted in ``evicted``; a label
    for an unknown id (forgotten, already labelled, or made up) is counted in ``unmatched``.
    Thread-safe.
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[K, int | Values, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.unmatched = 0

    def expect(
        self,
        prediction_id: str,
        key: K,
        predicted: int | Values,
        inputs: np.ndarray | None = None,
    ) -> None:
        """Remember a prediction (and the row it scored, to send back as a field sample)."""
        with self._lock:
            self._pending[prediction_id] = (key, predicted, inputs)
            self._pending.move_to_end(prediction_id)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1

    def resolve(self, prediction_id: str, label: object) -> tuple[K, FeedbackPair] | None:
        """The pair and its key, or None (and ``unmatched`` counted) for an id not waiting.

        ``label`` is read by :func:`ground_truth`; one that does not fit the prediction raises
        ValueError and the prediction keeps waiting."""
        with self._lock:
            entry = self._pending.get(prediction_id)
            if entry is None:
                self.unmatched += 1
                return None
            key, predicted, inputs = entry
            truth = ground_truth(label, predicted)
            del self._pending[prediction_id]
        return key, FeedbackPair(prediction_id, predicted, truth, inputs)

    def __len__(self) -> int:
        return len(self._pending)

    def take_counters(self) -> dict[str, int]:
        """Waiting count now, and evicted/unmatched since the last call (then reset)."""
        with self._lock:
            counters = {
                "awaiting_labels": len(self._pending),
                "labels_evicted": self.evicted,
                "labels_unmatched": self.unmatched,
            }
            self.evicted = self.unmatched = 0
        return counters


class TelemetryWindow:
    """Everything measured about one version between two reports; :meth:`flush` ends the window.

    Thread-safe: ``predict`` calls record from many threads while the agent loop flushes.
    """

    def __init__(
        self,
        *,
        bounds_ms: Iterable[float] = LATENCY_BOUNDS_MS,
        max_feedback: int = 1000,
        max_features: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bounds_ms = tuple(bounds_ms)
        self._max_feedback = max_feedback
        self._max_features = max_features
        self._clock = clock
        self._lock = threading.Lock()
        self._reset()

    def _reset(self, started_at: float | None = None) -> None:
        self.started_at = self._clock() if started_at is None else started_at
        self.inferences = 0
        self.errors = 0
        self.rows = 0
        self.latency = LatencyRecorder(self._bounds_ms)
        self.inputs = InputStats(self._max_features)
        self.feedback: deque[FeedbackPair] = deque(maxlen=self._max_feedback)
        self.feedback_dropped = 0
        self._shadow: ShadowTally | None = None

    def record_inference(
        self, latency_ms: float, *, rows: int = 1, inputs: np.ndarray | None = None
    ) -> None:
        """One successful call that scored ``rows`` rows in ``latency_ms``."""
        with self._lock:
            self.inferences += 1
            self.rows += rows
            self.latency.observe(latency_ms)
            if inputs is not None:
                self.inputs.update(inputs)

    def record_error(self) -> None:
        """One call that failed; it counts as an inference and as an error, with no latency."""
        with self._lock:
            self.inferences += 1
            self.errors += 1

    def record_feedback(self, pair: FeedbackPair) -> None:
        with self._lock:
            if len(self.feedback) == self.feedback.maxlen:
                self.feedback_dropped += 1  # the deque drops the oldest pair
            self.feedback.append(pair)

    @contextlib.contextmanager
    def shadow(self, against: str) -> Iterator[ShadowTally]:
        """This window's shadow counts against the stable version ``against``, under the lock.

        A window compares against one version; a plan that names another one mid-window starts the
        counts afresh (the controller would not pair them with the new stable version anyway)."""
        with self._lock:
            if self._shadow is None or self._shadow.against != against:
                self._shadow = ShadowTally(against)
            yield self._shadow

    @property
    def is_empty(self) -> bool:
        with self._lock:
            return self.inferences == 0 and not self.feedback and self.feedback_dropped == 0

    def flush(
        self, version: str, *, model: str = "", variant: str = "", running: bool = True
    ) -> dict[str, Any]:
        """The report for this window, stamped with the ``version`` that served it; then reset.

        ``running`` says whether ``version`` is the one serving at flush time (the controller's
        "confirmed running"); a window of a version swapped out mid-window reports ``False``.
        """
        with self._lock:
            ended_at = self._clock()  # the next window starts where this one ends
            report: dict[str, Any] = {
                "model": model,
                "version": version,
                "variant": variant,
                "running": running,
                "window_start": self.started_at,
                "window_end": ended_at,
                "inferences": self.inferences,
                "errors": self.errors,
                "rows": self.rows,
                "latency_ms": self.latency.to_dict(),
                "input_stats": self.inputs.to_dict(),
                "feedback": [pair.to_dict() for pair in self.feedback],
                "feedback_dropped": self.feedback_dropped,
            }
            if self._shadow is not None:
                report["shadow"] = self._shadow.to_dict()
            self._reset(started_at=ended_at)
        return report


# --- the outbox on disk --------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferStats:
    """Counts since the buffer was created; ``appended == acked + pending + dropped`` always."""

    appended: int
    acked: int
    pending: int
    dropped: int
    pending_bytes: int
    next_seq: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


class TelemetryBuffer:
    """Reports waiting to be sent, in SQLite at ``path``; see the module docstring for the guarantees.

    ``max_reports`` and ``max_bytes`` bound what is pending (``max_bytes`` counts report bodies, not
    the file's overhead). ``durable=False`` skips fsync: only for simulations and tests, where a
    power cut is not a concern. Thread-safe; one process at a time per file.
    """

    def __init__(
        self,
        path: Path,
        max_reports: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        *,
        durable: bool = True,
    ) -> None:
        if max_reports < 1 or max_bytes < 1:
            raise ValueError(
                f"bounds must be positive (max_reports={max_reports}, max_bytes={max_bytes})"
            )
        self.path = Path(path)
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            self._db.executescript(_SCHEMA)
            with self._transaction():
                self._init_meta()
                self.buffer_id = self._meta("buffer_id")
                self._make_room(0)  # the bounds may have shrunk since the last run
        except sqlite3.Error as exc:
            raise TelemetryError(f"cannot open the telemetry buffer {self.path}: {exc}") from exc

    # sqlite plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: all of it reaches the disk, or none of it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def _meta_int(self, key: str) -> int:
        return int(self._meta(key))

    def _set_meta(self, key: str, value: int | str) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(value), key))

    def _init_meta(self) -> None:
        defaults = {
            "schema": "1",
            "buffer_id": uuid.uuid4().hex,
            "next_seq": "1",
            "appended": "0",
            "acked": "0",
            "dropped": "0",
        }
        self._db.executemany(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", list(defaults.items())
        )

    def _make_room(self, incoming_bytes: int) -> None:
        """Drop the oldest reports until one more of ``incoming_bytes`` fits (or, with 0, until the
        bounds hold); count what went."""
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM reports"
        ).fetchone()
        extra = 1 if incoming_bytes else 0
        dropped = 0
        last: int | None = None
        for seq, size in self._db.execute("SELECT seq, size FROM reports ORDER BY seq"):
            if count + extra <= self.max_reports and total + incoming_bytes <= self.max_bytes:
                break
            last, dropped, count, total = seq, dropped + 1, count - 1, total - size
        if last is not None:  # the oldest reports, contiguous from the start
            self._db.execute("DELETE FROM reports WHERE seq <= ?", (last,))
            self._set_meta("dropped", self._meta_int("dropped") + dropped)

    # the API -------------------------------------------------------------------------------------

    def append(self, report: Mapping[str, Any]) -> int:
        """Store ``report`` with the next sequence number and return it; may drop the oldest reports.

        The stored report gains ``seq``, ``buffer_id`` and ``dropped_total`` (every report this buffer
        has dropped so far, including any this very append pushed out). Raises
        :class:`TelemetryError` for a report that is not JSON (NaN and Inf included) or that carries
        a reserved key, and :class:`ReportTooLarge` for one bigger than ``max_bytes``; either way
        nothing is stored, dropped or numbered.
        """
        clash = [key for key in RESERVED_KEYS if key in report]
        if clash:
            raise TelemetryError(f"a report may not set {clash}: the buffer adds them")
        with self._lock:
            try:
                with self._transaction():
                    seq = self._meta_int("next_seq")
                    body = self._serialise(report, seq, self._meta_int("dropped"))
                    while True:
                        if len(body) > self.max_bytes:
                            raise ReportTooLarge(
                                f"a report of {len(body)} bytes cannot fit a buffer of "
                                f"{self.max_bytes} bytes",
                                size=len(body),
                                max_bytes=self.max_bytes,
                            )
                        dropped_before = self._meta_int("dropped")
                        self._make_room(len(body))
                        if self._meta_int("dropped") == dropped_before:
                            break
                        # The new report names the drops it caused; its size may change with them.
                        body = self._serialise(report, seq, self._meta_int("dropped"))
                    self._db.execute(
                        "INSERT INTO reports (seq, size, body) VALUES (?, ?, ?)",
                        (seq, len(body), body.decode()),
                    )
                    self._set_meta("next_seq", seq + 1)
                    self._set_meta("appended", self._meta_int("appended") + 1)
            except sqlite3.Error as exc:
                raise TelemetryError(f"cannot append to {self.path}: {exc}") from exc
        return seq

    def _serialise(self, report: Mapping[str, Any], seq: int, dropped_total: int) -> bytes:
        try:
            text = json.dumps(
                {**report, "seq": seq, "buffer_id": self.buffer_id, "dropped_total": dropped_total},
                allow_nan=False,
                separators=(",", ":"),
            )
        except (TypeError, ValueError) as exc:
            raise TelemetryError(f"a report must be JSON without NaN or Inf: {exc}") from exc
        return text.encode()

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` unacknowledged reports, oldest (lowest ``seq``) first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT body FROM reports ORDER BY seq LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise TelemetryError(f"cannot read {self.path}: {exc}") from exc
        return [json.loads(body) for (body,) in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Forget the reports the controller confirmed; unknown or repeated seqs are ignored.

        Returns how many reports were removed.
        """
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0
        with self._lock:
            try:
                with self._transaction():
                    removed = 0
                    for start in range(0, len(wanted), 500):
                        chunk = wanted[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        cursor = self._db.execute(
                            f"DELETE FROM reports WHERE seq IN ({marks})", chunk
                        )
                        removed += cursor.rowcount
                    self._set_meta("acked", self._meta_int("acked") + removed)
            except sqlite3.Error as exc:
                raise TelemetryError(f"cannot acknowledge in {self.path}: {exc}") from exc
        return removed

    @property
    def dropped(self) -> int:
        """Reports dropped at the bound since the buffer was created (persisted)."""
        with self._lock:
            return self._meta_int("dropped")

    def stats(self) -> BufferStats:
        with self._lock:
            count, total = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM reports"
            ).fetchone()
            return BufferStats(
                appended=self._meta_int("appended"),
                acked=self._meta_int("acked"),
                pending=int(count),
                dropped=self._meta_int("dropped"),
                pending_bytes=int(total),
                next_seq=self._meta_int("next_seq"),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TelemetryBuffer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
