"""The process supervisor with tiny `python -c` children: backoff, give-up, health, clean stop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from edgeloop.cli.supervisor import ChildSpec, Supervisor, SupervisorError

SLEEPER = "import time\nwhile True: time.sleep(1)"
# A child that starts a grandchild in its own group and ignores SIGTERM: only SIGKILL stops them.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True: time.sleep(1)'])\n"
    "while True: time.sleep(1)"
)


def spec(tmp_path: Path, name: str, code: str, healthy: bool = True) -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=[sys.executable, "-c", code],
        log=tmp_path / f"{name}.log",
        health=lambda: healthy,
    )


def _wait_exit(sup: Supervisor, name: str, timeout: float = 10) -> None:
    proc = sup.child(name).proc
    assert proc is not None
    proc.wait(timeout=timeout)


def test_crashing_child_restarts_with_doubling_backoff_then_gives_up(tmp_path: Path) -> None:
    events: list[str] = []
    sup = Supervisor(
        [spec(tmp_path, "crasher", "import sys; print('boom'); sys.exit(3)")],
        backoff_s=1.0, backoff_max_s=3.0, quick_s=60, max_quick_crashes=4, on_event=events.append,
    )  # fmt: skip
    sup.start_all()
    crasher = sup.child("crasher")
    now = time.monotonic()
    delays = []
    for _ in range(3):
        _wait_exit(sup, "crasher")
        sup.poll(now)  # notices the exit and schedules a restart
        assert crasher.restart_at is not None
        delays.append(round(crasher.restart_at - now, 3))
        sup.poll(now + 0.5)  # too early: still down
        assert not crasher.alive()
        now = crasher.restart_at
        sup.poll(now)  # due: started again
        assert crasher.alive() or crasher.proc is not None
    assert delays == [1.0, 2.0, 3.0]  # doubling, capped at backoff_max_s
    assert crasher.restarts == 3
    _wait_exit(sup, "crasher")
    with pytest.raises(SupervisorError) as err:
        sup.poll(now)
    message = str(err.value)
    assert "crasher crashed 4 times in a row" in message and "exit code 3" in message
    assert "boom" in message and "giving up" in message
    assert any("restarting in 2 s" in e for e in events)
    sup.stop_all()


def test_a_child_that_ran_long_enough_starts_its_crash_count_again(tmp_path: Path) -> None:
    sup = Supervisor(
        [spec(tmp_path, "flaky", "import sys; sys.exit(1)")],
        backoff_s=1.0, quick_s=5, max_quick_crashes=2,
    )  # fmt: skip
    sup.start_all()
    flaky = sup.child("flaky")
    _wait_exit(sup, "flaky")
    sup.poll(flaky.started_at + 1)  # quick crash 1
    assert flaky.quick_crashes == 1
    sup.poll(flaky.restart_at)  # restarted
    _wait_exit(sup, "flaky")
    sup.poll(flaky.started_at + 10)  # ran 10 s > quick_s: not quick, count starts over
    assert flaky.quick_crashes == 1 and flaky.restart_at is not None
    sup.stop_all()


def test_sigterm_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    sup = Supervisor(
        [spec(tmp_path, "a", SLEEPER), spec(tmp_path, "stubborn", STUBBORN)], grace_s=1.0
    )
    sup.start_all()
    assert sup.wait_healthy(timeout_s=10) >= 0
    stubborn = psutil.Process(sup.child("stubborn").pid)
    deadline = time.monotonic() + 10
    while not stubborn.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [sup.child("a").pid, stubborn.pid, *(p.pid for p in stubborn.children())]
    assert len(pids) == 3
    sup.stop_all()
    time.sleep(0.3)
    alive = [p for p in pids if p is not None and psutil.pid_exists(p) and _not_zombie(p)]
    assert alive == []


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_unhealthy_child_times_out_with_its_name_and_log(tmp_path: Path) -> None:
    sup = Supervisor([spec(tmp_path, "deaf", "print('listening nowhere')\n" + SLEEPER, False)])
    sup.start_all()
    try:
        with pytest.raises(SupervisorError, match=r"deaf did not become healthy within 1 s"):
            sup.wait_healthy(timeout_s=1)
    finally:
        sup.stop_all()


def test_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    missing = ChildSpec(
        "ghost", [str(tmp_path / "no-such-binary")], tmp_path / "g.log", lambda: True
    )
    with pytest.raises(SupervisorError, match=r"cannot start ghost"):
        Supervisor([missing]).start_all()


def test_a_withheld_variable_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_TEST_SECRET", "s3cret")
    monkeypatch.setenv("EDGELOOP_TEST_PLAIN", "plain")
    code = "import os\nprint(os.environ.get('EDGELOOP_TEST_SECRET'), os.environ.get('EDGELOOP_TEST_PLAIN'))"
    child = spec(tmp_path, "reader", code)
    child.withheld = frozenset({"EDGELOOP_TEST_SECRET"})
    sup = Supervisor([child])
    sup.start_all()
    _wait_exit(sup, "reader")
    assert child.log.read_text().split() == ["None", "plain"]
