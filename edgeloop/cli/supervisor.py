"""A process supervisor: children in their own process groups, health checks, restarts, clean stop.

Each child is a command with its environment, a log file and a health check. A child that exits is
started again after an exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``); a child
that crashes ``max_quick_crashes`` times in a row, each within ``quick_s`` of its start, is given up on
with :class:`SupervisorError`, naming it and the tail of its log. Stopping sends SIGTERM to every
child's process group, then SIGKILL to the groups still alive after ``grace_s``, so nothing a child
started (server workers, flow-run subprocesses) is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop.core.errors import EdgeloopError
from fleet.shared.backoff import backoff_delay


class SupervisorError(EdgeloopError):
    """A child could not be started, never became healthy, or kept crashing."""


@dataclass
class ChildSpec:
    """What to run: ``health()`` answers whether the running child serves (False while starting)."""

    name: str
    argv: list[str]
    log: Path
    health: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str = ""
    withheld: frozenset[str] = frozenset()
    """Variables of this process's environment the child does not inherit (secrets it has no use
    for); ``env`` may still give it one of them."""


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_crashes: int = 0
    restarts: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a pre-exec hook so the child gets SIGTERM if the supervisor dies without stopping it
    (SIGKILL, OOM). libc is loaded here, in the parent, so the hook only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, chars: int = 800) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:].strip()


class Supervisor:
    """Starts, watches and stops a set of children; not thread-safe except :meth:`request_stop`."""

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        quick_s: float = 30.0,
        max_quick_crashes: int = 5,
        grace_s: float = 10.0,
        on_event: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.quick_s = quick_s
        self.max_quick_crashes = max_quick_crashes
        self.grace_s = grace_s
        self.on_event = on_event
        self._stop = threading.Event()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    def start(self, child: Child) -> None:
        spec = child.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with spec.log.open("ab") as log:
            try:
                child.proc = subprocess.Popen(
                    spec.argv,
                    env={
                        **{k: v for k, v in os.environ.items() if k not in spec.withheld},
                        **spec.env,
                    },
                    cwd=spec.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as one
                    preexec_fn=_parent_death_signal(),
                )
            except OSError as exc:
                raise SupervisorError(
                    f"cannot start {spec.name}: {exc}", hint=f"check the command {spec.argv[0]}"
                ) from exc
        child.started_at = time.monotonic()
        child.restart_at = None

    def start_all(self) -> None:
        for child in self.children:
            if not child.alive():
                self.start(child)

    def wait_healthy(self, names: list[str] | None = None, timeout_s: float = 180) -> float:
        """Block until the named children (all by default) are healthy; returns the seconds taken.

        Crashes while waiting are handled as in :meth:`poll` (restart with backoff, or give up)."""
        started = time.monotonic()
        wanted = [c for c in self.children if names is None or c.spec.name in names]
        while True:
            self.poll()
            waiting = [c for c in wanted if not (c.alive() and self._healthy(c))]
            if not waiting:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                child = waiting[0]
                raise SupervisorError(
                    f"{child.spec.name} did not become healthy within {timeout_s:g} s; "
                    f"last output: {log_tail(child.spec.log, 400)!r}",
                    hint=f"see {child.spec.log}",
                )
            if self._stop.wait(0.25):
                raise SupervisorError("stopped while waiting for the servers to become healthy")

    @staticmethod
    def _healthy(child: Child) -> bool:
        try:
            return bool(child.spec.health())
        except Exception:  # a health check that raises means "not yet"
            return False

    def poll(self, now: float | None = None) -> None:
        """Notice exited children and start them again when their backoff has passed."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.proc is None or child.alive():
                if child.alive() and now - child.started_at >= self.quick_s:
                    child.quick_crashes = 0  # it has been up long enough: a fresh start
                continue
            if child.restart_at is None:
                self._crashed(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self.on_event(f"restarting {child.spec.name} (restart {child.restarts})")
                self.start(child)

    def _crashed(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        ran = now - child.started_at
        child.quick_crashes = child.quick_crashes + 1 if ran < self.quick_s else 1
        if child.quick_crashes >= self.max_quick_crashes:
            raise SupervisorError(
                f"{child.spec.name} crashed {child.quick_crashes} times in a row, each within "
                f"{self.quick_s:g} s of starting (last exit code {code}); giving up. "
                f"Last output: {log_tail(child.spec.log, 400)!r}",
                hint=f"see {child.spec.log}",
            )
        delay = backoff_delay(
            child.quick_crashes, initial_s=self.backoff_s, max_s=self.backoff_max_s
        )
        child.restart_at = now + delay
        self.on_event(
            f"{child.spec.name} exited with code {code} after {ran:.1f} s; "
            f"restarting in {delay:g} s"
        )

    def run(self) -> None:
        """Watch the children until :meth:`request_stop`; raises :class:`SupervisorError` on give-up."""
        while not self._stop.wait(0.5):
            self.poll()

    def request_stop(self) -> None:
        """Safe from a signal handler or another thread: :meth:`run` returns soon after."""
        self._stop.set()

    def stop_all(self) -> None:
        """SIGTERM every child's process group, then SIGKILL the groups still alive after grace_s."""
        groups = [c.proc for c in self.children if c.proc is not None]
        for proc in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for proc in groups:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in groups:
            # The leader may be gone while its group (a server's workers) lives on: kill the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for child in self.children:
            child.restart_at = None
