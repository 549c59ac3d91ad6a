"""One onnxruntime session per variant file, shared by every simulated device that runs it.

A thousand simulated devices on one version must not load a thousand sessions: the cache keys sessions
by the file's sha256, so two devices on the same bytes share one. Inference runs in a small thread
pool (onnxruntime releases the GIL and ``InferenceSession.run`` is thread-safe), so a heavy model never
blocks the event loop that serves the long-polls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleet.shared.modelspec import ModelSpec, read_spec
from fleet.shared.runtime import open_session


class SessionCache:
    """Sessions by sha256; ``loads`` counts how many were really opened."""

    def __init__(self, *, threads: int = 1, workers: int = 4) -> None:
        self._threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._specs: dict[int, ModelSpec] = {}  # by id() of a session this cache holds
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-infer")
        self.loads = 0

    def get(self, sha256: str, path: Path) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(sha256)
            if session is None:
                session = open_session(str(path), threads=self._threads)
                self._sessions[sha256] = session
                self._specs[id(session)] = read_spec(session)  # read once, not per batch
                self.loads += 1
            return session

    def __len__(self) -> int:
        return len(self._sessions)

    def spec(self, session: ort.InferenceSession) -> ModelSpec:
        """The contract of a session this cache opened."""
        return self._specs.get(id(session)) or read_spec(session)

    def run(self, session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, float]:
        """The scored output of the rows of ``x`` (``(n, width)``: class scores or values) and the
        wall time of the call in ms."""
        spec = self.spec(session)
        feed = spec.feed(np.asarray(x, dtype=np.float32))
        started = time.perf_counter()
        out = session.run([spec.scored.name], feed)[0]
        elapsed_ms = (time.perf_counter() - started) * 1000
        return spec.scores({spec.scored.name: out}), elapsed_ms

    async def predict(
        self, sha256: str, path: Path, x: np.ndarray
    ) -> tuple[np.ndarray, float, ModelSpec]:
        """:meth:`run` on the shared session of ``sha256``, off the event loop, with its contract."""
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._pool, self.get, sha256, path)
        scores, elapsed_ms = await loop.run_in_executor(self._pool, self.run, session, x)
        return scores, elapsed_ms, self.spec(session)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._sessions.clear()
            self._specs.clear()
