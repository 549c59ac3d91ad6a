"""TCP proxies for tests, each on a free loopback port, in a thread of its own.

- :class:`SlowLink`: a slow network link that passes at most ``rate`` bytes per second towards the
  client and keeps what the client sent, so a test can interrupt a download half-way and see the
  ``Range`` header the resumed request carried.
- :class:`Balancer`: a load balancer in front of controller replicas, as an operator puts one (HAProxy,
  nginx, a cloud load balancer): each connection goes to the next replica in turn, skipping those
  that refuse it; a replica that dies cuts its connections, and the clients' next ones go elsewhere.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from types import TracebackType
from typing import Self

CHUNK = 16 * 1024


class SlowLink:
    """Proxy ``127.0.0.1:<port>`` to ``target`` (``host:port``), downstream at ``rate`` bytes/s."""

    def __init__(self, target: str, rate: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host.removeprefix("http://"), int(port))
        self.rate = rate
        self.sent_upstream = bytearray()
        self.record = True
        """Keep what clients send in ``sent_upstream``."""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the target for one client connection; None when it is refused."""
        try:
            return await asyncio.open_connection(*self.target)
        except OSError:
            return None

    def ranges(self) -> list[int]:
        """The first byte of every ``Range: bytes=N-`` the clients asked for, in order."""
        return [int(n) for n in re.findall(rb"[Rr]ange: bytes=(\d+)-", bytes(self.sent_upstream))]

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        opened = await self._open()
        if opened is None:
            client_w.close()
            return
        server_r, server_w = opened

        async def upstream() -> None:
            while data := await client_r.read(CHUNK):
                if self.record:
                    self.sent_upstream += data
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(CHUNK):
                client_w.write(data)
                await client_w.drain()
                if self.rate != math.inf:
                    await asyncio.sleep(len(data) / self.rate)
            client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            client_w.close()
            server_w.close()


class Balancer(SlowLink):
    """Round-robin over ``targets`` (``host:port`` or base URLs), at full speed; a target that
    refuses the connection is skipped for that connection."""

    def __init__(self, targets: list[str]) -> None:
        super().__init__(targets[0], rate=math.inf)
        self.record = False
        self.targets = [
            (host.removeprefix("http://"), int(port))
            for host, port in (t.rsplit(":", 1) for t in targets)
        ]
        self._next = 0
        self.connections = [0] * len(self.targets)
        """Connections each target took, in the order of ``targets``."""

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.targets)):
            index = self._next % len(self.targets)
            self._next += 1
            try:
                opened = await asyncio.open_connection(*self.targets[index])
            except OSError:
                continue
            self.connections[index] += 1
            return opened
        return None
