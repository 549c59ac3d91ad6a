"""Controller replicas on one PostgreSQL database, as real processes (``python -m
fleet.controller.api.serve``), and a second controller refused on one SQLite file.

- Concurrent creates of a rollout of one model through two replicas: exactly one wins, the others
  are 409s naming it (the database's partial unique index decides, not a read before the insert).
- One replica leads the background passes (an advisory lock); SIGKILL the leader and the other takes
  over within seconds.
- A device long-polling replica B wakes within a moment of a change made through replica A, with
  the periodic re-read set far longer than the test waits: only NOTIFY explains it.
- SIGKILL of the leader mid-rollout: the other replica carries the rollout to its end, every device
  ends on the canary, targeted once, and every report is stored exactly once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from builders import model_bytes, sign
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import Controller, policy, wait_until, write_public_key
from test_controller_faults import Reporter, desired_versions, rows_per_device, start_rollout

pytestmark = pytest.mark.integration

LEADS = "this replica now leads the background passes"


def log_of(ctl: Controller) -> str:
    path = ctl.root / f"controller-{ctl.starts}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def leads(ctl: Controller) -> bool:
    """What the replica's health says, and its log agrees."""
    said = httpx.get(f"{ctl.base}/v1/health", timeout=10).json()["leader"]
    assert said == (LEADS in log_of(ctl)) or not said, (said, log_of(ctl)[-2000:])
    return bool(said)


def replicas(
    tmp: Path, db_url: str, key: Ed25519PrivateKey, n: int, **env: str
) -> list[Controller]:
    """``n`` controller processes on ``db_url``, sharing one artifact folder (as they would share a
    bucket), started together (they migrate in turn)."""
    public = write_public_key(key, tmp / "k.pem")
    env = {"EDGELOOP_FLEET_ARTIFACT_DIR": str(tmp / "artifact-store"), **env}
    ctls = []
    for i in range(n):
        root = tmp / f"replica-{i}"
        root.mkdir()
        ctls.append(Controller(root, db_url, public, env=dict(env)))
    with ThreadPoolExecutor(n) as pool:  # at once: the migrations take turns
        list(pool.map(Controller.start, ctls))
    return ctls


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pair(postgres_db: str, tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[list[Controller]]:
    ctls = replicas(tmp_path, postgres_db, key, 2, EDGELOOP_FLEET_LONG_POLL_RECHECK_S="60")
    try:
        yield ctls
    finally:
        for ctl in ctls:
            ctl.kill(signal.SIGTERM)


def register(ctl: Controller, key: Ed25519PrivateKey, model: str, cls: str, *versions: str) -> None:
    for version in versions:
        data = model_bytes(int(version))
        sig = sign(key, f"{cls}-int8", data, model=model, version=version)
        ctl.register(model, version, cls, data, sig)


def advisory_holders(db_url: str) -> list[int]:
    with psycopg.connect(db_url) as con:
        rows = con.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return [pid for (pid,) in rows]


def waiting_to_insert(db_url: str) -> int:
    """Transactions waiting for a lock on the rollouts table (an INSERT behind a SHARE lock)."""
    with psycopg.connect(db_url) as con:
        row = con.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'rollouts' AND NOT l.granted"
        ).fetchone()
    return int(row[0]) if row else 0


def test_concurrent_creates_through_two_replicas_make_one_rollout(
    pair: list[Controller], key: Ed25519PrivateKey, postgres_db: str
) -> None:
    """Every create passes the API's check (no open rollout yet) and then waits at its INSERT
    behind a SHARE lock the test holds on the table: the widest race there is, made certain. When
    the lock goes, the database lets one insert through."""
    a, b = pair
    cls, model, n = "race-cpu", "racem", 12
    register(a, key, model, cls, "1", "2")
    with psycopg.connect(postgres_db) as hold, ThreadPoolExecutor(n) as pool:
        hold.execute("LOCK TABLE rollouts IN SHARE MODE")  # reads go on, inserts wait
        pending = [pool.submit((a, b)[i % 2].rollout, model, "2", cls) for i in range(n)]
        wait_until("every create at its insert", lambda: waiting_to_insert(postgres_db) == n)
        hold.commit()
        answers = [f.result() for f in pending]
    won = [r for r in answers if r.status_code == 201]
    lost = [r for r in answers if r.status_code == 409]
    assert len(won) == 1 and len(lost) == n - 1, [(r.status_code, r.text) for r in answers]
    winner = won[0].json()["rollout_id"]
    for r in lost:
        assert r.json()["reason"] == f"another rollout of {model} is active: {winner} (pending)"
    stored = b.admin("GET", "/v1/rollouts").json()
    assert [r["rollout_id"] for r in stored if r["model"] == model] == [winner]


def test_one_replica_leads_and_another_takes_over_when_it_is_killed(
    pair: list[Controller], postgres_db: str
) -> None:
    leader = wait_until("a leader", lambda: [c for c in pair if leads(c)], timeout=15)
    assert len(leader) == 1, "two replicas lead at once"
    (old,) = leader
    (other,) = [c for c in pair if c is not old]
    holders = advisory_holders(postgres_db)
    assert len(holders) == 1, holders
    old.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_until("the other replica to lead", lambda: leads(other), timeout=10)
    took = time.monotonic() - killed
    print(f"took over {took:.2f} s after the SIGKILL")  # shown with -rP
    assert took < 5, f"took over after {took:.1f} s"
    after = advisory_holders(postgres_db)
    assert len(after) == 1 and after != holders, (holders, after)


def test_a_change_through_one_replica_wakes_a_long_poll_on_another(
    pair: list[Controller], key: Ed25519PrivateKey
) -> None:
    """Long-polls re-read the database every 60 s here: a wake-up within 2 s is NOTIFY's."""
    a, b = pair
    cls, model = "wake-cpu", "wakem"
    credential = a.enrol("wake-0", cls)
    register(a, key, model, cls, "1")
    answer: dict[str, object] = {}

    def poll() -> None:
        with b.client(timeout=40) as client:
            desired = client.desired("wake-0", credential, 0, 25)
        answer["at"], answer["desired"] = time.monotonic(), desired

    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(1.5)  # the poll is held on b
    assert not answer, answer
    changed = time.monotonic()
    r = a.admin("PUT", f"/v1/baselines/{model}", json={"version": "1"})
    assert r.status_code == 200 and r.json()["devices_changed"] == 1, r.text
    waiting.join(timeout=40)
    woke = float(answer["at"]) - changed  # type: ignore[arg-type]
    print(f"woke {woke:.3f} s after the change")  # shown with -rP
    desired = answer["desired"]
    assert desired.revision == 1 and desired.artifact.version == "1"  # type: ignore[attr-defined]
    assert woke < 2.0, f"the long-poll on the other replica woke after {woke:.1f} s"


def test_sigkill_of_the_leader_mid_rollout_another_replica_finishes_it(
    postgres_db: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cls, model = "lead-cpu", "leadm"
    ctls = replicas(tmp_path, postgres_db, key, 2)
    try:
        (leader,) = wait_until("a leader", lambda: [c for c in ctls if leads(c)], timeout=15)
        (other,) = [c for c in ctls if c is not leader]
        creds = {f"lead-{i}": other.enrol(f"lead-{i}", cls) for i in range(4)}
        # the operator talks to the leader, the devices half to each replica
        rollout_id = start_rollout(leader, model, cls, key, policy=policy(cls, bake_s=2.0))
        before = desired_versions(other, creds)
        assert sorted(v for _, v in before.values()) == ["1", "1", "2", "2"]
        on_leader = dict(list(creds.items())[:2])
        on_other = dict(list(creds.items())[2:])
        with Reporter(leader, on_leader) as first, Reporter(other, on_other) as second:
            wait_until("telemetry from every device", lambda: len(first.accepted) == 2)
            wait_until("telemetry from every device", lambda: len(second.accepted) == 2)
            assert other.status(rollout_id)["phase"] == "progressing"
            leader.kill(signal.SIGKILL)  # mid-stage, reports in flight
            wait_until("the other replica to lead", lambda: leads(other), timeout=10)
            leader.start()  # it comes back as a follower; its devices resend what was not acked
            final = wait_until(
                "the rollout to end",
                lambda: (s := other.status(rollout_id))["phase"] != "progressing" and s,
                timeout=60,
            )
            assert final["phase"] == "succeeded", final
            time.sleep(1.0)  # a last round of reports
        assert not leads(leader), "the restarted replica leads beside the other one"
        after = desired_versions(other, creds)
        assert after == {d: (1, "2") for d in creds}, after  # each device targeted exactly once
        counts = rows_per_device(postgres_db)
        for fleet in (first, second):
            assert all(not pending for pending in fleet.unacked.values()), fleet.unacked
            made = {d: set(range(1, fleet.seq[d] + 1)) for d in fleet.credentials}
            assert fleet.stored == made, (fleet.stored, made)
            assert {d: counts[d] for d in fleet.credentials} == {
                d: len(made[d]) for d in fleet.credentials
            }
    finally:
        for ctl in ctls:
            ctl.kill(signal.SIGTERM)


def test_a_second_controller_on_one_sqlite_file_refuses_to_start(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    (first,) = replicas(tmp_path, db_url, key, 1)
    try:
        (tmp_path / "second").mkdir()
        second = Controller(tmp_path / "second", db_url, first.public_key)
        with pytest.raises(AssertionError, match="controller exited") as refused:
            second.start()
        said = str(refused.value)
        assert first.proc is not None
        assert f"another controller process (pid {first.proc.pid})" in said, said
        assert "SQLite serves one controller process" in said, said
        assert first.admin("GET", "/v1/health").status_code == 200  # the first one serves on
    finally:
        first.kill(signal.SIGTERM)
