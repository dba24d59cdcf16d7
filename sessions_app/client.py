"""An asyncio client for protocol v1, and a command line that opens and holds a session.

    async with connect("ws://127.0.0.1:8000/ws") as client:
        session = await client.new_session("/srv/ws/project")   # a Session
        await client.hold()                                      # until the server ends it

An `error` frame is raised as the server's own class from errors.py (WorkspaceNotFound,
SessionTerminated, ...), rebuilt from its code; `close_code` says whether the connection
survives it. ConnectionClosed means the connection ended without an error frame first.

    python -m sessions_app.client ws://127.0.0.1:8000/ws /some/dir

prints the session as JSON and holds it until Ctrl-C (exit 0); a protocol error is printed
as JSON on stderr with exit 1, a failed connection with exit 2. Needs only `websockets`:
no Django settings.
"""

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from uuid import UUID

import websockets

from .errors import ProtocolError, RequestId, all_error_classes

ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {cls.code: cls for cls in all_error_classes()}


@dataclass(frozen=True, slots=True)
class Session:
    """A session the server opened: the reply to `new_session`."""

    session_id: UUID
    workspace_dir: str
    created_at: datetime
    request_id: RequestId | None = None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> "Session":
        """Build from a `new_session` reply frame."""
        return cls(
            session_id=UUID(frame["session_id"]),
            workspace_dir=frame["workspace_dir"],
            created_at=datetime.fromisoformat(frame["created_at"].replace("Z", "+00:00")),
            request_id=frame.get("request_id"),
        )

    def as_json(self) -> dict[str, Any]:
        """The fields as the wire spells them."""
        reply = {
            "session_id": str(self.session_id),
            "workspace_dir": self.workspace_dir,
            "created_at": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.request_id is not None:
            reply["request_id"] = self.request_id
        return reply


class ClientError(Exception):
    """A failure of the connection itself, not an answer from the protocol."""


class HandshakeRefused(ClientError):
    """The server refused the WebSocket handshake (a disallowed origin, an unknown path...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server refused the WebSocket handshake with HTTP {status}")
        self.status = status


class ConnectionClosed(ClientError):
    """The connection ended without an error frame first; `code` is its close code (1006: dropped)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the connection closed with code {code}")
        self.code = code


def error_from_frame(frame: dict[str, Any]) -> ProtocolError:
    """The errors.py exception for an `error` frame; a code this client does not know is a ProtocolError."""
    cls = ERRORS_BY_CODE.get(frame.get("code", ""), ProtocolError)
    error = cls(frame.get("message", ""), request_id=frame.get("request_id"))
    if cls is ProtocolError:
        error.code = str(frame.get("code"))  # keep the server's code on the instance
    return error


class SessionClient:
    """One connection to /ws, holding at most one session. Use as an async context manager."""

    def __init__(self, websocket: websockets.ClientConnection) -> None:
        self.websocket = websocket
        self.session: Session | None = None

    async def new_session(
        self, workspace_dir: str, request_id: RequestId | None = None, *, timeout: float = 10.0
    ) -> Session:
        """Open a session on `workspace_dir`; raise the protocol's error class when refused."""
        frame: dict[str, Any] = {"type": "new_session", "workspace_dir": workspace_dir}
        if request_id is not None:
            frame["request_id"] = request_id
        await self.websocket.send(json.dumps(frame))
        reply = await self._receive(timeout)
        if reply.get("type") == "error":
            raise error_from_frame(reply)
        self.session = Session.from_frame(reply)
        return self.session

    async def hold(self) -> None:
        """Keep the connection until the server ends it; raise what ended it (SessionTerminated, ConnectionClosed)."""
        while True:
            frame = await self._receive(None)
            if frame.get("type") == "error":
                error = error_from_frame(frame)
                if error.close_code is not None:
                    self.session = None
                    raise error

    async def close(self) -> None:
        """Close the connection (code 1000); the server ends the session."""
        await self.websocket.close()
        self.session = None

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed."""
        return self.websocket.close_code

    async def _receive(self, timeout: float | None) -> dict[str, Any]:
        try:
            text = await asyncio.wait_for(self.websocket.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            raise ConnectionClosed(closed.rcvd.code if closed.rcvd else 1006) from None
        return json.loads(text)

    async def __aenter__(self) -> "SessionClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class connect:  # lower case: a function to its callers, like websockets.connect
    """`await connect(url)` or `async with connect(url) as client`: a SessionClient on `url`.

    `origin` sets the Origin header (browsers' origin policy applies to it); other keyword
    arguments go to websockets.connect.
    """

    def __init__(self, url: str, *, origin: str | None = None, open_timeout: float = 10.0, **kwargs: Any) -> None:
        self.url, self.kwargs = url, {"origin": origin, "open_timeout": open_timeout, **kwargs}
        self.client: SessionClient | None = None

    async def _open(self) -> SessionClient:
        try:
            websocket = await websockets.connect(self.url, **self.kwargs)
        except websockets.InvalidStatus as refused:
            raise HandshakeRefused(refused.response.status_code) from None
        return SessionClient(websocket)

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self) -> SessionClient:
        self.client = await self._open()
        return self.client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.client is not None:
            await self.client.close()


async def _hold_until_interrupted(url: str, workspace_dir: str, *, origin: str | None, request_id: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with connect(url, origin=origin) as client:
            session = await client.new_session(workspace_dir, request_id)
            print(json.dumps(session.as_json()), flush=True)
            print("holding the session; Ctrl-C closes it", file=sys.stderr, flush=True)
            holding = asyncio.ensure_future(client.hold())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([holding, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if holding.done():
                holding.result()  # raises what ended the session
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        return 0
    except ProtocolError as error:
        report = {"error": error.code, "message": error.message, "close_code": error.close_code}
        print(json.dumps(report), file=sys.stderr)
        return 1
    except (ClientError, OSError, TimeoutError) as error:
        print(json.dumps({"error": "connection_failed", "message": str(error)}), file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Command line: open a session, print it as JSON, hold it until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m sessions_app.client", description=main.__doc__)
    parser.add_argument("url", help="the WebSocket endpoint, e.g. ws://127.0.0.1:8000/ws")
    parser.add_argument("workspace_dir", help="absolute path of the workspace directory")
    parser.add_argument("--origin", help="send this Origin header")
    parser.add_argument("--request-id", help="a request_id to have echoed")
    args = parser.parse_args(argv)
    return asyncio.run(
        _hold_until_interrupted(args.url, args.workspace_dir, origin=args.origin, request_id=args.request_id)
    )


if __name__ == "__main__":
    sys.exit(main())
