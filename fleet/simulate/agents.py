"""Real edge agents beside the simulated ones: ``edgeloop agent`` processes, with traffic.

The simulator speaks the device protocol itself; these are the agent a user installs on a device, each
its own OS process (``python -m fleet.agent.agent``) with its own state folder, enrolled with a token
from the controller and serving ``POST /predict`` on a free loopback port. The agent reports only what
it served, so a traffic thread posts a batch of field rows to every running agent at an interval: each
then reports real telemetry (latency, errors, shadow comparisons) from the model it really runs.

:meth:`RealAgents.kill` and :meth:`RealAgents.start_agent` stop an agent as a power cut does
(SIGKILL) and start it again on the same state folder, which is how a test interrupts a download.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import numpy as np

from fleet.shared.ports import free_port

NPY = "application/x-npy"


@dataclass
class AgentProcess:
    """One agent: its device id, folder, local /predict port and, while it runs, its process."""

    device_id: str
    folder: Path
    port: int
    controller_url: str
    process: subprocess.Popen[bytes] | None = None
    served: int = 0
    refused: int = 0
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.folder / "agent.log"

    @property
    def downloads(self) -> Path:
        return self.folder / "state" / "downloads"


@dataclass
class RealAgents:
    """``count`` agent processes of ``hardware_class`` against the controller at ``url``.

    ``token`` is an enrolment token good for every agent (a restart reuses the credential on disk).
    ``controller_urls`` optionally gives an agent another address of the controller (a throttling
    proxy in a test). ``rows`` field rows go to each agent every ``interval_s``.
    """

    url: str
    token: str
    field_x: np.ndarray
    folder: Path
    count: int = 3
    hardware_class: str = "host-cpu"
    rows: int = 20
    interval_s: float = 0.3
    long_poll_s: float = 1.0
    controller_urls: Mapping[int, str] = field(default_factory=dict)
    agents: list[AgentProcess] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _quiet: threading.Event = field(default_factory=threading.Event)
    _traffic: threading.Thread | None = None

    def __enter__(self) -> RealAgents:
        self.folder.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            agent = AgentProcess(
                device_id=f"agent-{i:02d}",
                folder=self.folder / f"agent-{i:02d}",
                port=free_port(),
                controller_url=self.controller_urls.get(i, self.url),
            )
            agent.folder.mkdir(parents=True, exist_ok=True)
            self.agents.append(agent)
            self.start_agent(i)
        self._traffic = threading.Thread(target=self._send_traffic, name="traffic", daemon=True)
        self._traffic.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(timeout=10)
        for i in range(len(self.agents)):
            self.stop_agent(i)

    # --- processes ---------------------------------------------------------------------------------

    def start_agent(self, index: int) -> None:
        """Start agent ``index`` on its state folder (enrols on the first start only)."""
        agent = self.agents[index]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_AGENT_")}
        env.update(
            EDGELOOP_AGENT_CONTROLLER_URL=agent.controller_url,
            EDGELOOP_AGENT_STATE_DIR=str(agent.folder / "state"),
            EDGELOOP_AGENT_DEVICE_ID=agent.device_id,
            EDGELOOP_AGENT_HARDWARE_CLASS=self.hardware_class,
            EDGELOOP_AGENT_ENROLMENT_TOKEN=self.token,
            EDGELOOP_AGENT_PREDICT_PORT=str(agent.port),
            EDGELOOP_AGENT_LONG_POLL_S=str(self.long_poll_s),
            EDGELOOP_AGENT_BACKOFF_MAX_S="2",
        )
        with agent.log.open("ab") as log:
            agent.process = subprocess.Popen(
                [sys.executable, "-m", "fleet.agent.agent"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        agent.starts += 1

    def kill(self, index: int) -> None:
        """SIGKILL agent ``index``, as a power cut would."""
        process = self.agents[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self.agents[index].process = None

    def stop_agent(self, index: int) -> None:
        """SIGTERM agent ``index`` and wait for it (SIGKILL after 10 s)."""
        process = self.agents[index].process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.agents[index].process = None

    def process_ids(self) -> list[int]:
        """The process ids of the agents running now."""
        return [
            a.process.pid for a in self.agents if a.process is not None and a.process.poll() is None
        ]

    # --- what they run -----------------------------------------------------------------------------

    def versions(self) -> dict[str, str | None]:
        """What each agent serves now, from its own ``/healthz`` (None: nothing, or not running)."""
        out: dict[str, str | None] = {}
        with httpx.Client(timeout=2) as client:
            for agent in self.agents:
                version = None
                if agent.process is not None:
                    try:
                        r = client.get(f"http://127.0.0.1:{agent.port}/healthz")
                        version = r.json().get("version")
                    except (httpx.HTTPError, ValueError):
                        version = None
                out[agent.device_id] = version
        return out

    def wait_for(self, versions: Mapping[str, str], timeout_s: float = 60) -> dict[str, str | None]:
        """Wait until every agent named in ``versions`` serves its version; the last reading."""
        deadline = time.monotonic() + timeout_s
        seen = self.versions()
        while any(seen.get(d) != v for d, v in versions.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = self.versions()
        return seen

    # --- traffic -----------------------------------------------------------------------------------

    def hold_traffic(self) -> None:
        """No more rows to any agent until :meth:`resume_traffic`: the agents serve and report
        nothing new, so no rollout gate can reach a verdict meanwhile."""
        self._quiet.set()

    def resume_traffic(self) -> None:
        self._quiet.clear()

    def _send_traffic(self) -> None:
        rng = np.random.default_rng(11)
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                for agent in self.agents:
                    if self._quiet.is_set():
                        break
                    if agent.process is None or agent.process.poll() is not None:
                        continue
                    rows = self.field_x[rng.integers(0, len(self.field_x), size=self.rows)]
                    body = io.BytesIO()
                    np.save(body, rows.astype(np.float32))
                    try:
                        r = client.post(
                            f"http://127.0.0.1:{agent.port}/predict",
                            content=body.getvalue(),
                            headers={"Content-Type": NPY},
                        )
                    except httpx.HTTPError:
                        continue  # starting, restarting or busy: the next round tries again
                    if r.status_code == 200:
                        agent.served += 1
                    else:
                        agent.refused += 1
                self._stop.wait(self.interval_s)
