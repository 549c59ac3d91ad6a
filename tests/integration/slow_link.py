"""A slow network link for tests: a TCP proxy that passes at most ``rate`` bytes per second towards the
client and keeps what the client sent, so a test can interrupt a download half-way and see the
``Range`` header the resumed request carried."""

from __future__ import annotations

import asyncio
import re
import threading
from types import TracebackType

CHUNK = 16 * 1024


class SlowLink:
    """Proxy ``127.0.0.1:<port>`` to ``target`` (``host:port``), downstream at ``rate`` bytes/s."""

    def __init__(self, target: str, rate: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host.removeprefix("http://"), int(port))
        self.rate = rate
        self.sent_upstream = bytearray()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ranges(self) -> list[int]:
        """The first byte of every ``Range: bytes=N-`` the clients asked for, in order."""
        return [int(n) for n in re.findall(rb"[Rr]ange: bytes=(\d+)-", bytes(self.sent_upstream))]

    def __enter__(self) -> SlowLink:
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
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return

        async def upstream() -> None:
            while data := await client_r.read(CHUNK):
                self.sent_upstream += data
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(CHUNK):
                client_w.write(data)
                await client_w.drain()
                await asyncio.sleep(len(data) / self.rate)
            client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            client_w.close()
            server_w.close()
