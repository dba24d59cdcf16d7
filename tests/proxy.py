"""A loopback TCP proxy a test can cut, stall and restore: a service "goes away" for real.

cut()      reset every live link; new links are accepted and closed at once
stall()    keep every link open but forward nothing, either way (a hung server)
restore()  forward again; stalled bytes are delivered, cut links stay gone
"""

import asyncio
import contextlib


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target, with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.is_cut = False
        self.port = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def is_stalled(self) -> bool:
        return not self._flowing.is_set()

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every live link and refuse new ones (accepted, then closed at once)."""
        self.is_cut = True
        self._flowing.set()  # a cut wins over a stall: links die now
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def stall(self) -> None:
        """Hold every link open and forward nothing: the peer sees a server that never answers."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again."""
        self.is_cut = False
        self._flowing.set()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            client_writer.transport.abort()
            return
        await self._flowing.wait()  # a stalled proxy accepts, then says nothing
        if self.is_cut:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._links.update((client_writer, upstream_writer))
        # Cancelled when the test's loop closes with links still open: nothing to report.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer))
        self._links.difference_update((client_writer, upstream_writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
