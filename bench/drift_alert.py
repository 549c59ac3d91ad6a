"""Drift to alert to playbook action, and false alerts over an hour of clean traffic.

A fleet of ``--devices`` simulated devices, each running the on-device detectors
(``fleet.shared.drift.DeviceDetector``) against a reference built from a training sample, reports
every ``--report-s`` seconds of SIMULATED time: ``--rows`` input rows scored, a latency histogram with
log-normal jitter, feedback. Reports go through the controller's own ingest path (``store`` and
``observe_ingest``, the functions the telemetry route calls, on SQLite in a scratch folder or
``--db-url``), and the controller's observation pass (``observe.observe_once``: aggregation, median/MAD
anomalies, alerts, playbooks) runs every ``--observe-s`` simulated seconds. No HTTP and no sleeping:
an hour of traffic takes as long as the database work, and times are on the simulated clock.

1. Clean phase: ``--clean-s`` seconds (default one hour) of clean inputs; every alert opened is a
   false alert (target: none).
2. Drift phase: ``--drift-fraction`` of the devices get inputs shifted by ``--shift`` standard
   deviations; measured: simulated seconds from the drift's start to the input-drift alert and to the
   playbook's action (a ``notify_webhook`` whose delivery is recorded in-process).

Also recorded: the wall time of each observation pass (aggregating ``devices * observe_s / report_s``
reports), the controller's cost of watching the fleet.

    python bench/drift_alert.py [--devices 100] [--db-url URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, write_report
from rich.console import Console
from rich.table import Table

from fleet.controller.observe import ingest as observe_ingest
from fleet.controller.observe import loop as observe
from fleet.controller.observe.playbooks import actions as playbook_actions
from fleet.controller.observe.playbooks import config as playbook_config
from fleet.controller.storage import db, store
from fleet.controller.storage.db import DeviceRow
from fleet.controller.storage.observe_tables import AlertRow
from fleet.shared.drift import DetectorPolicy, DeviceDetector, build_reference
from fleet.shared.latency import LatencyRecorder
from fleet.shared.protocol import EnrolmentTokenRequest, EnrolRequest, TelemetryReport

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FEATURES = 16
PLAYBOOK = {
    "playbooks": [
        {
            "name": "drift-notify",
            "trigger": {"kind": "input_drift"},
            "actions": [{"action": "notify_webhook", "url": "http://hooks.invalid/fleet"}],
        }
    ]
}


class Device:
    def __init__(self, device_id: str, detector: DeviceDetector, seed: int) -> None:
        self.id = device_id
        self.detector = detector
        self.rng = np.random.default_rng(seed)
        self.seq = 0
        self.buffer = uuid.uuid4().hex

    def report(self, t: float, rows: int, shift: float, interval: float) -> TelemetryReport:
        x = self.rng.normal(0, 1, size=(rows, FEATURES)) + shift
        self.detector.observe_inputs(x)
        hist = LatencyRecorder()
        for ms in self.rng.lognormal(np.log(3.0), 0.25, size=rows):
            hist.observe(float(ms))
        self.seq += 1
        labelled = rows // 2
        correct = int(self.rng.binomial(labelled, 0.9))
        return TelemetryReport.model_validate(
            {
                "seq": self.seq,
                "buffer_id": self.buffer,
                "model": "digits",
                "version": "1",
                "window_start": t - interval,
                "window_end": t,
                "inferences": rows,
                "errors": 0,
                "latency_ms": hist.to_dict(),
                "feedback": [
                    {"predicted": 1, "label": 1 if i < correct else 0} for i in range(labelled)
                ],
                "events": [e.to_dict() for e in self.detector.take_events()],
            }
        )


def run(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    engine = db.make_engine(db_url)
    db.migrate(engine)
    sessions = db.make_sessionmaker(engine)
    rng = np.random.default_rng(args.seed)
    reference = build_reference(rng.normal(0, 1, size=(20_000, FEATURES)))
    policy = DetectorPolicy(min_rows=args.min_rows)
    books = playbook_config.load_playbooks(PLAYBOOK)
    settings = observe.ObserveSettings(
        enabled=True, period_s=args.observe_s, window_s=args.observe_s,
        playbooks_path=Path("unused.yaml"),
    )  # fmt: skip
    delivered: list[datetime] = []

    def webhook(
        ctx: playbook_actions.ActionContext, _action: playbook_config.PlaybookAction
    ) -> str:
        delivered.append(ctx.now)
        return "delivered"

    with sessions() as session:
        token = store.create_enrolment_token(
            session, EnrolmentTokenRequest(uses=args.devices), T0
        ).token
        for i in range(args.devices):
            store.enrol(
                session,
                EnrolRequest(token=token, device_id=f"dev-{i:04d}", hardware_class="host-cpu"),
                T0,
            )
    devices = [
        Device(f"dev-{i:04d}", DeviceDetector(reference, policy), args.seed + i)
        for i in range(args.devices)
    ]
    drifting = {d.id for d in devices[: round(args.drift_fraction * args.devices)]}
    false_alerts: list[dict[str, Any]] = []
    alert_at: float | None = None
    action_at: float | None = None
    started = time.perf_counter()
    t = 0.0
    end = args.clean_s + args.max_drift_s
    next_observe = args.observe_s
    reports = 0
    pass_ms: list[float] = []
    while t < end and action_at is None:
        t += args.report_s
        now = T0 + timedelta(seconds=t)
        in_drift = t > args.clean_s
        with sessions() as session:
            for d in devices:
                shift = args.shift if in_drift and d.id in drifting else 0.0
                r = d.report(t, args.rows, shift, args.report_s)
                row = session.get(DeviceRow, d.id)
                assert row is not None
                ack = store.ingest_telemetry(session, row, [r], now)
                observe_ingest.record(session, d.id, [r], ack.accepted, now)
                reports += 1
        if t + 1e-9 < next_observe:
            continue
        next_observe += args.observe_s
        tick = time.perf_counter()
        observe.observe_once(sessions, now, settings, books, actions={"notify_webhook": webhook})
        pass_ms.append((time.perf_counter() - tick) * 1e3)
        with sessions() as session:
            opened = session.query(AlertRow).all()
        if not in_drift:
            false_alerts = [{"kind": a.kind, "reason": a.reason} for a in opened]
        drift = [a for a in opened if a.kind == "input_drift"]
        if in_drift and drift and alert_at is None:
            alert_at = (drift[0].opened_at - T0).total_seconds() - args.clean_s
        if delivered:
            action_at = (delivered[0] - T0).total_seconds() - args.clean_s
    engine.dispose()
    return {
        "devices": args.devices,
        "drifting_devices": len(drifting),
        "clean_simulated_s": args.clean_s,
        "report_s": args.report_s,
        "observe_s": args.observe_s,
        "rows_per_report": args.rows,
        "min_rows": args.min_rows,
        "shift_sd": args.shift,
        "reports": reports,
        "false_alerts": len(false_alerts),
        "false_alert_reasons": false_alerts[:10],
        "time_to_alert_s": alert_at,
        "time_to_action_s": action_at,
        "observe_pass_ms_median": round(float(np.median(pass_ms)), 1),
        "observe_pass_ms_max": round(max(pass_ms), 1),
        "reports_per_pass": args.devices * round(args.observe_s / args.report_s),
        "wall_s": round(time.perf_counter() - started, 1),
        "clock": "simulated",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--drift-fraction", type=float, default=0.1)
    parser.add_argument("--shift", type=float, default=1.0, help="drift, in standard deviations")
    parser.add_argument("--clean-s", type=float, default=3600.0)
    parser.add_argument("--max-drift-s", type=float, default=1800.0)
    parser.add_argument("--report-s", type=float, default=30.0)
    parser.add_argument("--observe-s", type=float, default=60.0)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--min-rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db-url", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        db_url = args.db_url or f"sqlite:///{Path(tmp) / 'fleet.db'}"
        result = run(args, db_url)
    backend = "postgresql" if "postgres" in db_url else "sqlite"
    result.update(backend=backend, machine=machine_info(("numpy", "sqlalchemy")))
    table = Table(title=f"drift to alert ({backend}, simulated clock)")
    columns = ("devices", "drifting", "false alerts (clean phase)", "to alert", "to action")
    for column in (*columns, "observe pass (median / max)"):
        table.add_column(column, justify="right")

    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.0f} s"

    table.add_row(
        str(result["devices"]),
        str(result["drifting_devices"]),
        str(result["false_alerts"]),
        secs(result["time_to_alert_s"]),
        secs(result["time_to_action_s"]),
        f"{result['observe_pass_ms_median']} / {result['observe_pass_ms_max']} ms",
    )
    console.print(table)
    out = args.out or Path(f".edgeloop/bench/drift_alert-{backend}.json")
    write_report(console, out, result)


if __name__ == "__main__":
    main()
