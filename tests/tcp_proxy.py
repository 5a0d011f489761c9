"""A TCP proxy on 127.0.0.1 for tests, to make a real server unreachable for a while.

Between a client and a server: `down()` stops listening (new connections are refused) and
cuts every open connection, as when the server's host goes away; `up()` listens again on
the same port and forwards as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted so far
        self.cut = 0  # open connections cut by down()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()  # client, server

    def start(self) -> TcpProxy:
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        """Listen (on the same port as before, once it has one) and forward."""
        self._call(self._listen())

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._call(self._close())

    def stop(self) -> None:
        if self._thread.is_alive():
            self.down()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pair in list(self._open):
            self.cut += 1
            for writer in pair:
                writer.transport.abort()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer, server_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
        finally:
            self._open.discard(pair)
            for writer in pair:
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    # One side closed: close the other, so the peer sees the end too.
    with contextlib.suppress(ConnectionError, OSError):
        writer.write_eof()
