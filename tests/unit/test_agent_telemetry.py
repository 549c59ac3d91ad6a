"""fleet.agent.telemetry: the bounded on-disk outbox, the in-memory window, labels awaiting ground truth."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.agent.errors import ReportTooLarge, TelemetryError
from fleet.agent.telemetry import (
    AwaitingLabels,
    FeedbackPair,
    TelemetryBuffer,
    TelemetryWindow,
)
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram, LatencyRecorder


def new_buffer(path: Path, max_reports: int = 100, max_bytes: int = 1 << 20) -> TelemetryBuffer:
    return TelemetryBuffer(path / "telemetry.db", max_reports, max_bytes, durable=False)


def report(n: int, pad: int = 0) -> dict[str, object]:
    return {"version": "v1", "n": n, "pad": "x" * pad}


# --- TelemetryBuffer -----------------------------------------------------------------------------


def test_sequence_numbers_increase_and_survive_reopen(tmp_path: Path) -> None:
    with TelemetryBuffer(tmp_path / "telemetry.db") as buffer:  # durable, as on a device
        first = [buffer.append(report(i)) for i in range(3)]
        buffer_id = buffer.buffer_id
        buffer.ack(first)  # even with nothing pending, numbers are never reused
    with TelemetryBuffer(tmp_path / "telemetry.db") as buffer:
        later = [buffer.append(report(i)) for i in range(2)]
        assert buffer.buffer_id == buffer_id
        (stored,) = buffer.pending(1)
    assert first == [1, 2, 3]
    assert later == [4, 5]
    assert stored == {**report(0), "seq": 4, "buffer_id": buffer_id, "dropped_total": 0}


def test_pending_is_oldest_first_and_ack_removes(tmp_path: Path) -> None:
    with new_buffer(tmp_path) as buffer:
        for i in range(5):
            buffer.append(report(i))
        assert [r["seq"] for r in buffer.pending(3)] == [1, 2, 3]
        assert buffer.ack([2, 4]) == 2
        assert buffer.ack([2, 99]) == 0  # repeated and unknown seqs are ignored
        assert [r["seq"] for r in buffer.pending(10)] == [1, 3, 5]
        assert [r["n"] for r in buffer.pending(10)] == [0, 2, 4]
        stats = buffer.stats()
    assert (stats.appended, stats.acked, stats.pending, stats.dropped) == (5, 2, 3, 0)


def test_bound_on_count_drops_the_oldest_and_counts_them_across_reopen(tmp_path: Path) -> None:
    with new_buffer(tmp_path, max_reports=3) as buffer:
        for i in range(5):
            buffer.append(report(i))
        assert [r["seq"] for r in buffer.pending(10)] == [3, 4, 5]
        # Each report carries every drop made so far, including the ones its own append caused.
        assert [r["dropped_total"] for r in buffer.pending(10)] == [0, 1, 2]
        assert buffer.dropped == 2
    with new_buffer(tmp_path, max_reports=3) as buffer:
        assert buffer.dropped == 2
        buffer.append(report(5))
        assert [r["seq"] for r in buffer.pending(10)] == [4, 5, 6]
        assert buffer.pending(10)[-1]["dropped_total"] == 3
    # Reopened with a smaller bound: the excess goes at once, counted.
    with new_buffer(tmp_path, max_reports=1) as buffer:
        assert [r["seq"] for r in buffer.pending(10)] == [6]
        assert buffer.dropped == 5
        stats = buffer.stats()
    assert stats.appended == stats.acked + stats.pending + stats.dropped == 6


def test_bound_on_bytes_drops_the_oldest(tmp_path: Path) -> None:
    with new_buffer(tmp_path, max_bytes=400) as buffer:
        for i in range(6):
            buffer.append(report(i, pad=100))
        stats = buffer.stats()
        pending = buffer.pending(10)
    assert stats.pending_bytes <= 400
    assert [r["seq"] for r in pending] == list(range(7 - len(pending), 7))
    assert stats.dropped == 6 - len(pending) > 0
    assert pending[-1]["dropped_total"] == stats.dropped


def test_reports_that_cannot_be_stored_are_refused_and_take_no_number(tmp_path: Path) -> None:
    with new_buffer(tmp_path, max_bytes=300) as buffer:
        buffer.append(report(0))
        with pytest.raises(ReportTooLarge) as too_large:
            buffer.append(report(1, pad=500))
        assert too_large.value.max_bytes == 300 and too_large.value.size > 500
        with pytest.raises(TelemetryError, match="NaN"):
            buffer.append({"latency": float("nan")})
        with pytest.raises(TelemetryError, match="JSON"):
            buffer.append({"when": object()})
        with pytest.raises(TelemetryError, match="seq"):
            buffer.append({"seq": 7})
        assert buffer.append(report(2)) == 2
        assert buffer.dropped == 0
        assert [r["n"] for r in buffer.pending(10)] == [0, 2]


_APPEND_FOREVER = """
import sys
from pathlib import Path
from fleet.agent.telemetry import TelemetryBuffer

buffer = TelemetryBuffer(Path(sys.argv[1]), max_reports=20)
while True:
    print(buffer.append({"pad": "x" * 50}), flush=True)
"""


def test_a_killed_writer_leaves_a_consistent_buffer(tmp_path: Path) -> None:
    """SIGKILL in the middle of appends: the file opens, counts add up, and no number a
    finished append returned is ever handed out again."""
    path = tmp_path / "telemetry.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _APPEND_FOREVER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert writer.stdout is not None
    returned = [int(writer.stdout.readline()) for _ in range(40)]
    writer.kill()
    writer.wait(timeout=10)
    returned += [int(line) for line in writer.stdout.read().split()]
    writer.stdout.close()

    with TelemetryBuffer(path, max_reports=20) as buffer:
        stats = buffer.stats()
        pending = [r["seq"] for r in buffer.pending(100)]
        after = buffer.append({"pad": ""})
    assert returned == list(range(1, len(returned) + 1))
    assert after > returned[-1]
    assert stats.appended == stats.acked + stats.pending + stats.dropped == after - 1
    assert pending == list(range(after - len(pending), after))


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=0, max_value=120)),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=4)),
        st.tuples(st.just("reopen"), st.integers(min_value=1, max_value=6)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_every_appended_report_is_acked_pending_or_counted_dropped(
    ops: list[tuple[str, int]],
) -> None:
    """For any interleaving of appends, acks and reopens (with any bound), nothing vanishes
    uncounted and no sequence number is handed out twice."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        buffer = new_buffer(path, max_reports=4, max_bytes=600)
        seqs: list[int] = []
        acked = 0
        try:
            for op, arg in ops:
                if op == "append":
                    seqs.append(buffer.append(report(len(seqs), pad=arg)))
                elif op == "ack":
                    acked += buffer.ack([r["seq"] for r in buffer.pending(arg)])
                else:
                    buffer.close()
                    buffer = new_buffer(path, max_reports=arg, max_bytes=600)
            stats = buffer.stats()
            pending = buffer.pending(1000)
        finally:
            buffer.close()
    assert seqs == sorted(set(seqs))
    assert stats.appended == len(seqs)
    assert stats.acked == acked
    assert acked + len(pending) + stats.dropped == len(seqs)
    assert [r["seq"] for r in pending] == sorted(r["seq"] for r in pending)
    if pending:
        assert pending[-1]["dropped_total"] <= stats.dropped


# --- TelemetryWindow and its parts ---------------------------------------------------------------


def test_histogram_bucket_edges() -> None:
    histogram = LatencyRecorder()
    assert len(histogram.counts) == len(LATENCY_BOUNDS_MS) + 1 == 13
    for value in (0.0, 0.1, 0.1000001, 1.0, 1000.0, 1000.5, 1e9):
        histogram.observe(value)
    counts = histogram.counts
    assert counts[0] == 2  # 0 and exactly 0.1: a bound is inclusive
    assert counts[1] == 1  # just above 0.1
    assert counts[LATENCY_BOUNDS_MS.index(1)] == 1
    assert counts[LATENCY_BOUNDS_MS.index(1000)] == 1
    assert counts[-1] == 2  # above every bound
    assert histogram.total == 7
    assert histogram.to_dict()["bounds_ms"] == list(LATENCY_BOUNDS_MS)
    assert histogram.snapshot() == LatencyHistogram.of(
        [0.0, 0.1, 0.1000001, 1.0, 1000.0, 1000.5, 1e9]
    )  # the recorder and the controller's histogram bucket alike
    with pytest.raises(ValueError, match="increasing"):
        LatencyRecorder([1, 1, 2])


def test_window_flush_reports_then_resets() -> None:
    ticks = iter([100.0, 160.0, 170.0])
    window = TelemetryWindow(max_feedback=2, clock=lambda: next(ticks))
    assert window.is_empty
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 3)) for n in (1, 4, 7)]
    for batch in batches:
        window.record_inference(0.3, rows=len(batch), inputs=batch)
    window.record_inference(3.0, inputs=np.array([[np.nan, 0, 0]]))
    window.record_error()
    for i in range(3):
        window.record_feedback(FeedbackPair(f"p{i}", predicted=1, label=i))

    report = window.flush("v7", model="digits", variant="int8")

    everything = np.concatenate(batches)
    assert report["version"] == "v7" and report["running"] is True
    assert (report["window_start"], report["window_end"]) == (100.0, 160.0)
    assert (report["inferences"], report["errors"], report["rows"]) == (5, 1, 13)
    assert report["latency_ms"]["counts"][2] == 3 and report["latency_ms"]["counts"][5] == 1
    stats = report["input_stats"]
    assert stats["count"] == 12 and stats["nonfinite_rows"] == 1
    np.testing.assert_allclose(stats["mean"], everything.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], everything.std(axis=0), rtol=1e-9)
    assert [p["prediction_id"] for p in report["feedback"]] == ["p1", "p2"]
    assert report["feedback_dropped"] == 1

    assert window.is_empty
    empty = window.flush("v7")
    assert (empty["inferences"], empty["feedback"], empty["input_stats"]["count"]) == (0, [], 0)
    assert empty["window_start"] == 160.0


def test_input_stats_are_bounded_in_features() -> None:
    window = TelemetryWindow(max_features=4)
    window.record_inference(1.0, rows=2, inputs=np.ones((2, 10)))
    window.record_inference(1.0, inputs=np.ones((1, 9)))  # another width: counted, not mixed in
    stats = window.flush("v1")["input_stats"]
    assert (stats["features"], stats["features_tracked"], stats["skipped_rows"]) == (10, 4, 1)
    assert stats["mean"] == [1.0] * 4 and stats["std"] == [0.0] * 4


def test_awaiting_labels_forget_the_oldest_and_count() -> None:
    labels: AwaitingLabels[str] = AwaitingLabels(max_pending=2)
    for pid in ("a", "b", "c"):
        labels.expect(pid, "v1", predicted=0)
    assert labels.resolve("a", 1) is None  # forgotten: the oldest went first
    resolved = labels.resolve("c", 1)
    assert resolved == ("v1", FeedbackPair("c", predicted=0, label=1))
    assert labels.resolve("c", 1) is None  # a label counts once
    assert labels.take_counters() == {
        "awaiting_labels": 1,
        "labels_evicted": 1,
        "labels_unmatched": 2,
    }
    assert labels.take_counters()["labels_evicted"] == 0
