"""fleet.controller.observe.playbooks: config as data (each bad file refused with its reason), never twice per
alert, retry with exponential backoff then give up, each run recorded with its cause; a playbook's
fleet actions rate-limited per model (counted in the database, so across replicas), the runs past the
limit recorded as limited and shown; the actions against the API's database and fake HTTP
endpoints."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_controller_builders import ADMIN_HEADERS, Fleet, make_fleet
from test_controller_loop import DEVICES, Devices, start_rollout
from typer.testing import CliRunner

from edgeloop.cli import app as cli_app
from fleet.controller.errors import PlaybookActionFailed, PolicyError
from fleet.controller.observe import alerts
from fleet.controller.observe.playbooks import actions as playbook_actions
from fleet.controller.observe.playbooks import config as playbook_config
from fleet.controller.observe.playbooks import runner as playbook_runner
from fleet.controller.storage import playbook_runs as runs_table
from fleet.controller.storage import store
from fleet.controller.storage.observe_tables import AlertRow
from fleet.shared.admin_protocol import Alert

SCOPE = {"model": "churn", "version": "2", "class": "host-cpu"}
REPO = Path(__file__).resolve().parents[2]


def book(*actions: str, **extra: Any) -> playbook_config.Playbook:
    return playbook_config.load_playbooks(
        {
            "playbooks": [
                {
                    "name": "drift",
                    "trigger": {"kind": "input_drift", "scope": {"class": "host-cpu"}},
                    "actions": [{"action": a} for a in actions],
                    **extra,
                }
            ]
        }
    )[0]


def open_alert(fleet: Fleet, at: float = 0, scope: dict[str, str] | None = None) -> int:
    with fleet.app.state.sessions() as session:
        row = alerts.raise_alert(
            session, kind="input_drift", scope=scope or SCOPE, value=0.9, threshold=0.25,
            reason="input drift on feature f3: PSI 0.90", now=fleet.clock.at(at),
        )  # fmt: skip
        assert row is not None
        session.commit()
        return row.id


class Recorder:
    """A fake action: fails ``failures`` times, then succeeds; counts its calls."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures

    def __call__(
        self, ctx: playbook_actions.ActionContext, action: playbook_config.PlaybookAction
    ) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"webhook down ({self.calls})")
        return f"done for alert {ctx.alert.id}"


def run(
    fleet: Fleet, books: list[playbook_config.Playbook], at: float, fake: Recorder
) -> list[Any]:
    with fleet.app.state.sessions() as session:
        now = fleet.clock.at(at)
        playbook_runner.schedule(session, books, now)
        runs = playbook_runner.execute_due(session, books, now, actions={"notify_webhook": fake})
        return [(r.status, r.attempts) for r in runs]


# --- config ------------------------------------------------------------------------------------


def test_a_playbook_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(
        "playbooks:\n  - name: p\n    trigger: {kind: input_drift, threshold: 0.3}\n"
        "    actions: [{action: pause_rollout}, {action: notify_webhook, url: 'http://h/x'}]\n"
    )
    (loaded,) = playbook_config.load_playbooks_file(path)
    assert loaded.trigger.threshold == 0.3 and [a.action for a in loaded.actions] == [
        "pause_rollout",
        "notify_webhook",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["not", "a", "mapping"], "must be a mapping"),
        ({"playbooks": [{"name": "p", "trigger": {"kind": "x"}, "actions": []}]}, "actions"),
        (
            {"playbooks": [{"name": "p", "trigger": {"kind": "x"}, "actions": [{"action": "x"}]}]},
            "actions.0.action",
        ),
        ({"playbooks": [{"name": "p", "actions": [{"action": "pause_rollout"}]}]}, "trigger"),
        (
            {
                "playbooks": [
                    {"name": "p", "trigger": {"kind": "x"}, "actions": [{"action": "open_retrain"}]}
                ]
                * 2
            },
            "unique",
        ),
    ],
    ids=["not_a_mapping", "no_actions", "unknown_action", "no_trigger", "duplicate_names"],
)
def test_bad_playbooks_are_refused_with_the_reason(raw: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        playbook_config.load_playbooks(raw)


def test_the_rate_limit_has_a_safe_default_and_refuses_nonsense() -> None:
    loaded = book("pause_rollout")
    assert (loaded.max_runs_per_model, loaded.rate_window_s) == (3, 3600)
    for bad in ({"max_runs_per_model": 0}, {"rate_window_s": 0}, {"max_runs_per_model": "many"}):
        with pytest.raises(PolicyError, match=next(iter(bad))):
            book("pause_rollout", **bad)
    (shipped,) = [
        p
        for p in playbook_config.load_playbooks_file(REPO / "playbooks.yaml")
        if p.name == "input-drift"
    ]
    assert {a.action for a in shipped.actions} <= playbook_config.FLEET_ACTIONS
    assert shipped.max_runs_per_model <= 3


def test_a_playbooks_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text("playbooks: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        playbook_config.load_playbooks_file(path)


def test_an_unreadable_playbooks_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read playbooks file"):
        playbook_config.load_playbooks_file(tmp_path / "missing.yaml")


# --- running -----------------------------------------------------------------------------------


def test_an_action_never_runs_twice_for_the_same_alert(fleet: Fleet) -> None:
    alert_id = open_alert(fleet)
    fake = Recorder()
    books = [book("notify_webhook")]
    assert run(fleet, books, 0, fake) == [("succeeded", 1)]
    for at in (1, 5, 60):
        open_alert(fleet, at)  # the same finding again: the same open alert
        assert run(fleet, books, at, fake) == []
    assert fake.calls == 1
    with fleet.app.state.sessions() as session:
        (recorded,) = playbook_runner.list_playbook_runs(session)
    assert recorded["alert_id"] == alert_id and recorded["playbook"] == "drift"
    assert "input_drift" in recorded["cause"] and "PSI 0.90" in recorded["cause"]
    assert recorded["result"] == f"done for alert {alert_id}"


def test_a_failing_action_is_retried_with_backoff_then_recorded_as_failed(fleet: Fleet) -> None:
    open_alert(fleet)
    fake = Recorder(failures=10)
    books = [book("notify_webhook", max_attempts=3, backoff_s=2)]
    assert run(fleet, books, 0, fake) == [("pending", 1)]  # next try at 2 s
    assert run(fleet, books, 1.9, fake) == []
    assert run(fleet, books, 2, fake) == [("pending", 2)]  # next try at 2 + 4 s
    assert run(fleet, books, 5.9, fake) == []
    assert run(fleet, books, 6, fake) == [("failed", 3)]
    assert run(fleet, books, 1000, fake) == []  # given up: not repeated forever
    assert fake.calls == 3
    r = fleet.client.get("/v1/playbook-runs", headers=ADMIN_HEADERS)
    (recorded,) = r.json()
    assert recorded["status"] == "failed" and recorded["attempts"] == 3
    assert recorded["result"] == "attempt 3: RuntimeError: webhook down (3)"


def test_a_transient_failure_succeeds_on_retry(fleet: Fleet) -> None:
    open_alert(fleet)
    fake = Recorder(failures=1)
    books = [book("notify_webhook", backoff_s=1)]
    assert run(fleet, books, 0, fake) == [("pending", 1)]
    assert run(fleet, books, 1, fake) == [("succeeded", 2)]


def test_a_trigger_matches_kind_scope_and_threshold(fleet: Fleet) -> None:
    open_alert(fleet, scope={**SCOPE, "class": "edge-small"})
    fake = Recorder()
    assert run(fleet, [book("notify_webhook")], 0, fake) == []
    open_alert(fleet)
    high = book("notify_webhook", trigger={"kind": "input_drift", "threshold": 5.0})
    assert run(fleet, [high], 0, fake) == []
    assert run(fleet, [book("notify_webhook")], 0, fake) == [("succeeded", 1)]


# --- the rate limit per model ------------------------------------------------------------------


def invented(fleet: Fleet, versions: range, at: float = 0, model: str = "churn") -> list[int]:
    """One open alert per version, as devices inventing versions raise them."""
    return [open_alert(fleet, at, {**SCOPE, "model": model, "version": f"v{v}"}) for v in versions]


def runs_by_alert(fleet: Fleet) -> dict[int, dict[str, tuple[str, str]]]:
    """``{alert_id: {action: (status, result)}}`` as the API lists them."""
    r = fleet.client.get("/v1/playbook-runs?limit=1000", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    out: dict[int, dict[str, tuple[str, str]]] = {}
    for run_ in r.json():
        out.setdefault(run_["alert_id"], {})[run_["action"]] = (run_["status"], run_["result"])
    return out


def test_a_playbook_acts_on_at_most_n_alerts_of_a_model_per_window(fleet: Fleet) -> None:
    """Five invented versions of one model: the fleet action runs for the first two, the other
    three are recorded as limited with the reason and never performed; the webhook (it only tells a
    person) goes out for all five; another model has its own count; after the window, it acts
    again."""
    books = [book("pause_rollout", "notify_webhook", max_runs_per_model=2, rate_window_s=100)]
    churn = invented(fleet, range(5))
    other = invented(fleet, range(1), model="other")
    paused, notified = Recorder(), Recorder()
    with fleet.app.state.sessions() as session:
        assert playbook_runner.schedule(session, books, fleet.clock.at(1)) == 12
        playbook_runner.execute_due(
            session, books, fleet.clock.at(1),
            actions={"pause_rollout": paused, "notify_webhook": notified},
        )  # fmt: skip
    assert (paused.calls, notified.calls) == (3, 6)
    runs = runs_by_alert(fleet)
    for alert_id in churn[:2] + other:
        assert runs[alert_id]["pause_rollout"] == ("succeeded", f"done for alert {alert_id}")
    for alert_id in churn[2:]:
        status, result = runs[alert_id]["pause_rollout"]
        assert status == "limited"
        assert result == (
            "limited: playbook drift already acted on 2 alerts of model churn within 100 s "
            "(max_runs_per_model 2); not performed"
        )
        assert runs[alert_id]["notify_webhook"][0] == "succeeded"
    page = fleet.client.get("/dashboard", headers=ADMIN_HEADERS).text
    assert page[page.index("id='playbooks'") :].count("limited: playbook drift") == 3
    with fleet.app.state.sessions() as session:  # limited runs are never due
        playbook_runner.execute_due(
            session, books, fleet.clock.at(1000), actions={"pause_rollout": paused}
        )
    assert paused.calls == 3
    # the window has passed: the next invented version is acted on, then the limit holds again
    later = invented(fleet, range(5, 8), at=150)
    with fleet.app.state.sessions() as session:
        playbook_runner.schedule(session, books, fleet.clock.at(150))
    runs = runs_by_alert(fleet)
    assert [runs[a]["pause_rollout"][0] for a in later] == ["pending", "pending", "limited"]


def test_the_rate_limit_is_counted_in_the_database_across_replicas(fleet: Fleet) -> None:
    """Each replica schedules with its own session and nothing in memory: what one acted on counts
    for the other; and replicas scheduling the same flood at the same time still act on at most
    ``max_runs_per_model`` alerts of the model between them."""
    books = [book("pause_rollout", max_runs_per_model=2)]
    first = invented(fleet, range(1))
    with fleet.app.state.sessions() as replica_a:
        assert playbook_runner.schedule(replica_a, books, fleet.clock.at(1)) == 1
    flood = invented(fleet, range(1, 9), at=2)
    started = threading.Barrier(4)

    def replica() -> None:
        with fleet.app.state.sessions() as session:
            started.wait()
            for at in (
                3,
                4,
                5,
            ):  # a replica whose batch lost to another's schedules on its next pass
                playbook_runner.schedule(session, books, fleet.clock.at(at))

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    runs = runs_by_alert(fleet)
    assert sorted(runs) == sorted(first + flood)  # every alert recorded, once per action
    acted = [a for a in first + flood if runs[a]["pause_rollout"][0] == "pending"]
    assert acted == [first[0], flood[0]]  # the oldest alerts, and no more than two
    assert all(runs[a]["pause_rollout"][0] == "limited" for a in flood[1:])


def test_the_migration_gives_earlier_runs_their_alerts_model(tmp_path: Path) -> None:
    """Runs recorded before the rate limit existed count towards it: migration 0011 takes each
    run's model from its alert's scope."""
    import importlib

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from fleet.controller.storage import db

    migration = importlib.import_module(
        "fleet.controller.storage.migrations.versions.0011_playbook_rate_limit"
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, migration.down_revision)
        connection.execute(
            text(
                "INSERT INTO alerts (id, kind, scope_key, scope, value, threshold, reason, status, "
                "occurrences, suppressed, opened_at, last_seen_at) VALUES (7, 'input_drift', "
                '\'model=churn\', \'{"model": "churn", "version": "9"}\', 1, 0.2, \'r\', '
                "'open', 1, 0, '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO playbook_runs (playbook, alert_id, action, cause, status, result, "
                "attempts, created_at, updated_at) VALUES ('drift', 7, 'pause_rollout', 'c', "
                "'succeeded', 'paused', 1, '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            )
        )
        command.upgrade(config, "head")
        assert connection.execute(text("SELECT model FROM playbook_runs")).scalar_one() == "churn"
    engine.dispose()


# --- the actions -------------------------------------------------------------------------------


def context(
    fleet: Fleet, session: Any, alert_id: int, **changes: Any
) -> playbook_actions.ActionContext:
    alert = session.get(AlertRow, alert_id)
    return playbook_actions.ActionContext(session, alert, fleet.clock.at(10), **changes)


def retrain_context(
    fleet: Fleet, session: Any, alert_id: int, prefect: Callable[[httpx.Request], httpx.Response]
) -> playbook_actions.ActionContext:
    """A context whose Prefect client answers with ``prefect``."""
    transport = httpx.MockTransport(prefect)
    return context(
        fleet, session, alert_id,
        prefect_api_url="http://prefect.test/api",
        prefect=lambda url: playbook_actions.prefect_client(url, {"transport": transport}),
    )  # fmt: skip


def test_rollback_cohort_aborts_the_open_rollout(fleet: Fleet) -> None:
    Devices(fleet)
    rollout_id = start_rollout(fleet)
    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="rollback_cohort")
    with fleet.app.state.sessions() as session:
        result = playbook_actions.rollback_cohort(context(fleet, session, alert_id), action)
        assert result == f"rolled back {rollout_id}"
        assert store.load_rollout(session, rollout_id).phase in ("rolling_back", "aborted")
        again = playbook_actions.rollback_cohort(context(fleet, session, alert_id), action)
    assert again.startswith("skipped: no open rollout")


def test_pause_rollout_pauses_a_progressing_rollout(fleet: Fleet) -> None:
    Devices(fleet)
    rollout_id = start_rollout(fleet)
    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="pause_rollout")
    with fleet.app.state.sessions() as session:
        assert playbook_actions.pause_rollout(context(fleet, session, alert_id), action) == (
            f"paused {rollout_id}"
        )
        assert store.load_rollout(session, rollout_id).phase == "paused"


def test_quarantine_device_pins_the_baseline(fleet: Fleet) -> None:
    devices = Devices(fleet)
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    r = fleet.client.put("/v1/baselines/churn", json={"version": "1"}, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    alert_id = open_alert(fleet, scope={**SCOPE, "device": "dev-0"})
    action = playbook_config.PlaybookAction(action="quarantine_device")
    with fleet.app.state.sessions() as session:
        result = playbook_actions.quarantine_device(context(fleet, session, alert_id), action)
        assert result == "quarantined dev-0 on churn 1"
        assert store.without_quarantined(session, DEVICES) == DEVICES[1:]
        rollout = store.target_devices(
            session, DEVICES, model="churn", version="2", rollout_id="r-1", now=fleet.clock.at(20)
        )
        session.commit()
    assert sorted(rollout) == DEVICES[1:]  # no new targets for a quarantined device
    assert devices.running("dev-0") == "1" and devices.running("dev-1") == "2"


def test_open_retrain_without_prefect_is_skipped(fleet: Fleet) -> None:
    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="open_retrain")
    with fleet.app.state.sessions() as session:
        ctx = context(fleet, session, alert_id, prefect_api_url=None)
        assert playbook_actions.open_retrain(ctx, action).startswith("skipped: no Prefect API")


def fake_prefect(
    deployment_id: str, flow_id: str, active: list[dict[str, Any]], seen: list[httpx.Request]
) -> Callable[[httpx.Request], httpx.Response]:
    """Enough of Prefect's API for ``open_retrain``: the deployment, its runs not ended
    (``active``), a run's update and a new run."""
    run_id = str(uuid.uuid4())

    def prefect(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/csrf-token":  # the client asks once; this API has none
            return httpx.Response(422, json={"detail": "CSRF protection is disabled."})
        seen.append(request)
        path = request.url.path
        if request.method == "GET":
            assert path == "/api/deployments/name/scheduled-retrain/scheduled"
            return httpx.Response(
                200, json={"id": deployment_id, "name": "scheduled", "flow_id": flow_id}
            )
        if path == "/api/flow_runs/filter":
            return httpx.Response(200, json=active)
        if request.method == "PATCH":
            return httpx.Response(204)
        assert path == f"/api/deployments/{deployment_id}/create_flow_run"
        return httpx.Response(
            201,
            json={"id": run_id, "name": "r", "flow_id": flow_id, "deployment_id": deployment_id},
        )

    return prefect


def test_open_retrain_starts_the_retrain_with_the_alert(fleet: Fleet) -> None:
    """Through Prefect's own client (``get_client``), against a fake Prefect API: the run's
    parameter ``alert`` is the alert itself; no path of the controller's disk travels."""
    seen: list[httpx.Request] = []
    deployment_id, flow_id = str(uuid.uuid4()), str(uuid.uuid4())
    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="open_retrain", parameters={"x": 1})
    with fleet.app.state.sessions() as session:
        ctx = retrain_context(
            fleet, session, alert_id, fake_prefect(deployment_id, flow_id, [], seen)
        )
        result = playbook_actions.open_retrain(ctx, action)
    assert result.startswith("flow run ") and result.endswith(
        f"of scheduled-retrain/scheduled for alert {alert_id}"
    )
    created = json.loads(seen[-1].content)
    assert created["parameters"]["x"] == 1
    alert = Alert.model_validate(created["parameters"]["alert"])
    assert alert.id == alert_id and alert.kind
    assert f"edgeloop.alert.{alert_id}" in created["tags"]
    assert "job_variables" not in created or not created["job_variables"]


def test_a_second_alert_joins_the_retrain_already_under_way(fleet: Fleet) -> None:
    seen: list[httpx.Request] = []
    deployment_id, flow_id, running_id = (str(uuid.uuid4()) for _ in range(3))
    running = {
        "id": running_id, "name": "r", "flow_id": flow_id, "deployment_id": deployment_id,
        "tags": ["edgeloop.playbook", "edgeloop.alert.1"],
        "state": {"type": "RUNNING", "name": "Running"},
    }  # fmt: skip
    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="open_retrain")
    with fleet.app.state.sessions() as session:
        prefect = fake_prefect(deployment_id, flow_id, [running], seen)
        result = playbook_actions.open_retrain(
            retrain_context(fleet, session, alert_id, prefect), action
        )
    assert (
        result
        == f"attached to flow run {running_id} of scheduled-retrain/scheduled (Running): one retrain"
    )
    assert not [r for r in seen if r.url.path.endswith("/create_flow_run")]
    [patch] = [r for r in seen if r.method == "PATCH"]
    assert patch.url.path == f"/api/flow_runs/{running_id}"
    assert f"edgeloop.alert.{alert_id}" in json.loads(patch.content)["tags"]


def test_open_retrain_raises_when_prefect_refuses(fleet: Fleet) -> None:
    """A missing deployment (or any refusal) raises, so the runner retries it with backoff."""

    def prefect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Deployment not found"})

    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="open_retrain")
    with fleet.app.state.sessions() as session:
        ctx = retrain_context(fleet, session, alert_id, prefect)
        with pytest.raises(
            PlaybookActionFailed, match="no Prefect deployment scheduled-retrain/scheduled"
        ):
            playbook_actions.open_retrain(ctx, action)


def test_notify_webhook_posts_the_alert_and_a_refusal_raises(fleet: Fleet) -> None:
    bodies: list[bytes] = []

    def hook(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(204 if len(bodies) == 1 else 500)

    alert_id = open_alert(fleet)
    action = playbook_config.PlaybookAction(action="notify_webhook", url="http://hooks.test/fleet")
    with fleet.app.state.sessions() as session:
        ctx = context(
            fleet, session, alert_id, http=lambda: httpx.Client(transport=httpx.MockTransport(hook))
        )
        assert playbook_actions.notify_webhook(ctx, action) == "POST http://hooks.test/fleet: 204"
        with pytest.raises(httpx.HTTPStatusError):
            playbook_actions.notify_webhook(ctx, action)
    assert b"input drift on feature f3" in bodies[0]


def test_two_replicas_never_run_the_same_attempt(fleet: Fleet) -> None:
    open_alert(fleet)
    books = [book("notify_webhook")]
    with fleet.app.state.sessions() as session:
        playbook_runner.schedule(session, books, fleet.clock.at(0))
    calls: list[int] = []
    started = threading.Barrier(2)

    def slow(ctx: playbook_actions.ActionContext, _action: playbook_config.PlaybookAction) -> str:
        calls.append(ctx.alert.id)
        time.sleep(0.3)
        return "done"

    def replica() -> None:
        with fleet.app.state.sessions() as session:
            started.wait()
            playbook_runner.execute_due(
                session, books, fleet.clock.at(1), actions={"notify_webhook": slow}
            )

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1


def test_a_replica_that_reads_a_run_while_another_runs_it_leaves_it_until_the_lease_ends(
    fleet: Fleet,
) -> None:
    """The interleaving behind the flaky two-replica test, made deterministic: replica A has
    claimed the attempt and is inside the action when replica B reads the runs."""
    open_alert(fleet)
    books = [book("notify_webhook")]
    calls: list[str] = []

    def act(replica: str) -> Callable[..., str]:
        return lambda _ctx, _action: calls.append(replica) or "done"

    with fleet.app.state.sessions() as session:
        playbook_runner.schedule(session, books, fleet.clock.at(0))
    with fleet.app.state.sessions() as a, fleet.app.state.sessions() as b:
        (run,) = runs_table.due_runs(a, fleet.clock.at(1))
        assert runs_table.claim(a, run, fleet.clock.at(1))  # A now runs the action
        assert run.status == "running" and run.attempts == 1
        playbook_runner.execute_due(
            b, books, fleet.clock.at(2), actions={"notify_webhook": act("B")}
        )
        assert calls == []  # leased to A: not due for B
        assert runs_table.due_runs(b, fleet.clock.at(2)) == []
        # A died inside the action: once its lease has run out, the next attempt is due
        later = 2 + runs_table.CLAIM_LEASE_S
        playbook_runner.execute_due(
            b, books, fleet.clock.at(later), actions={"notify_webhook": act("B")}
        )
    assert calls == ["B"]
    with fleet.app.state.sessions() as session:
        (recorded,) = playbook_runner.list_playbook_runs(session)
    assert (recorded["status"], recorded["attempts"]) == ("succeeded", 2)


def test_a_controller_with_a_bad_playbooks_file_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "playbooks.yaml"
    bad.write_text("playbooks:\n  - {name: p, trigger: {kind: x}, actions: [{action: reboot}]}\n")
    monkeypatch.setenv("EDGELOOP_FLEET_OBSERVE_PLAYBOOKS_PATH", str(bad))
    with pytest.raises(PolicyError, match=r"playbooks.yaml: playbooks are invalid: .*action"):
        make_fleet(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, ["fleet", "serve", "--port", "0"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "playbooks are invalid" in lines[0]
    assert not (tmp_path / ".edgeloop").exists()  # nothing half-done
