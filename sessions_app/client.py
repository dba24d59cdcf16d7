"""An asyncio client for protocol v1.1, and a command line that opens and holds a session.

    async with connect("ws://127.0.0.1:8000/ws") as client:
        session = await client.new_session("/srv/ws/project")   # a Session
        await client.hold()                                      # until the server ends it

A resumable session survives its connection: `hold()` then reconnects with backoff (to the
same URL, or in turn to each of `fallback_urls`) and resumes it, for as long as the
server's grace allows, and raises only when the session is really gone:

    async with connect(url, fallback_urls=[other_url]) as client:
        await client.new_session("/srv/ws/project", resumable=True)
        await client.hold()   # rides out drops and server restarts

An `error` frame is raised as the server's own class from errors.py (WorkspaceNotFound,
SessionTerminated, SessionNotFound...), rebuilt from its code; `close_code` says whether
the connection survives it. ConnectionClosed means the connection ended without an error
frame first.

    python -m sessions_app.client ws://127.0.0.1:8000/ws /some/dir [--resumable] [--fallback-url URL]

prints the session as JSON and holds it until Ctrl-C (exit 0), resuming it across drops and
server restarts with --resumable; a protocol error is printed as JSON on stderr with exit 1,
a failed connection with exit 2. Needs only `websockets`: no Django settings.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from uuid import UUID

import websockets

from .errors import (
    ProtocolError,
    RateLimited,
    RequestId,
    ServerShuttingDown,
    SessionLost,
    SessionNotFound,
    Unavailable,
    all_error_classes,
)

ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {cls.code: cls for cls in all_error_classes()}


@dataclass(frozen=True, slots=True)
class Session:
    """A session the server opened: the reply to `new_session`."""

    session_id: UUID
    workspace_dir: str
    created_at: datetime
    request_id: RequestId | None = None
    # v1.1: set when the session is resumable; the token changes at every resume.
    resume_token: str | None = None
    resume_grace_seconds: float | None = None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> "Session":
        """Build from a `new_session` or `session_resumed` reply frame."""
        return cls(
            session_id=UUID(frame["session_id"]),
            workspace_dir=frame["workspace_dir"],
            created_at=datetime.fromisoformat(frame["created_at"].replace("Z", "+00:00")),
            request_id=frame.get("request_id"),
            resume_token=frame.get("resume_token"),
            resume_grace_seconds=frame.get("resume_grace_seconds"),
        )

    @property
    def resumable(self) -> bool:
        """Whether the server gave a token to resume this session with."""
        return self.resume_token is not None

    def as_json(self) -> dict[str, Any]:
        """The fields as the wire spells them, except the secret resume token."""
        reply: dict[str, Any] = {
            "session_id": str(self.session_id),
            "workspace_dir": self.workspace_dir,
            "created_at": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.resume_grace_seconds is not None:
            reply["resume_grace_seconds"] = self.resume_grace_seconds
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


# A resumable session rides these out: the server went away or lost track of the connection.
RESUMABLE_ERRORS = (ServerShuttingDown, SessionLost)
# A resume refused by these is tried again on the next server, within the grace.
RETRYABLE_RESUME_ERRORS = (ServerShuttingDown, Unavailable, RateLimited)


def backoff(*, initial: float = 0.1, factor: float = 2.0, cap: float = 5.0) -> Iterator[float]:
    """Reconnect delays: exponential with full jitter, so clients of a stopped server do not return in step."""
    for attempt in itertools.count():
        yield random.uniform(0, min(cap, initial * factor**attempt))


class SessionClient:
    """One connection to /ws, holding at most one session. Use as an async context manager."""

    def __init__(
        self,
        websocket: websockets.ClientConnection,
        *,
        urls: list[str] | None = None,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.websocket = websocket
        self.session: Session | None = None
        self.urls = urls or []
        self.connect_kwargs = connect_kwargs or {}
        self.resumes = 0  # how many times hold() resumed the session on a new connection

    async def new_session(
        self,
        workspace_dir: str,
        request_id: RequestId | None = None,
        *,
        resumable: bool = False,
        timeout: float = 10.0,
    ) -> Session:
        """Open a session on `workspace_dir` (resumable if asked); raise the protocol's error class when refused."""
        frame: dict[str, Any] = {"type": "new_session", "workspace_dir": workspace_dir}
        if resumable:
            frame["resumable"] = True
        return await self._request(frame, request_id, timeout)

    async def resume_session(
        self, session_id: UUID | str, resume_token: str, request_id: RequestId | None = None, *, timeout: float = 10.0
    ) -> Session:
        """Reattach a resumable session to this connection; SessionNotFound when it is gone."""
        frame = {"type": "resume_session", "session_id": str(session_id), "resume_token": resume_token}
        return await self._request(frame, request_id, timeout)

    async def end_session(self, request_id: RequestId | None = None, *, timeout: float = 10.0) -> UUID:
        """End this connection's session now (NoSession when there is none); the connection stays open."""
        reply = await self._exchange({"type": "end_session"}, request_id, timeout)
        self.session = None
        return UUID(reply["session_id"])

    async def _request(self, frame: dict[str, Any], request_id: RequestId | None, timeout: float) -> Session:
        self.session = Session.from_frame(await self._exchange(frame, request_id, timeout))
        return self.session

    async def _exchange(self, frame: dict[str, Any], request_id: RequestId | None, timeout: float) -> dict[str, Any]:
        """Send one request frame and return its reply; an error reply is raised as its error class."""
        if request_id is not None:
            frame["request_id"] = request_id
        await self.websocket.send(json.dumps(frame))
        reply = await self._receive(timeout)
        if reply.get("type") == "error":
            raise error_from_frame(reply)
        return reply

    async def hold(self) -> None:
        """Keep the session until the server ends it; raise what ended it (SessionTerminated, ConnectionClosed...).

        A resumable session is resumed on a new connection when this one drops or its server
        stops; then this raises only when the session is really gone (SessionNotFound once
        the grace has run out, SessionTerminated, SessionTakenOver...).
        """
        while True:
            try:
                frame = await self._receive(None)
            except ConnectionClosed:
                if self.session is None or not self.session.resumable:
                    raise
                await self._resume_elsewhere()
                continue
            if frame.get("type") != "error":
                continue
            error = error_from_frame(frame)
            if error.close_code is None:
                continue
            if isinstance(error, RESUMABLE_ERRORS) and self.session is not None and self.session.resumable:
                await self._resume_elsewhere()
                continue
            self.session = None
            raise error

    async def _resume_elsewhere(self) -> None:
        """Reconnect with backoff, in turn to each URL, and resume; within the session's grace period."""
        session = self.session
        assert session is not None and session.resume_token is not None
        with contextlib.suppress(Exception):
            # Not 1000: the client's own close 1000 would end the session we mean to resume.
            await self.websocket.close(code=1001)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(session.resume_grace_seconds or 0)
        delays = backoff()
        for url in itertools.cycle(self.urls):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                open_timeout = min(remaining, self.connect_kwargs.get("open_timeout", 10.0))
                websocket = await websockets.connect(url, **{**self.connect_kwargs, "open_timeout": open_timeout})
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                # Not there (yet), or refusing: a stopping server answers the handshake with 403,
                # so within the grace even a refusal is worth another try.
                pass
            else:
                self.websocket = websocket
                try:
                    await self.resume_session(session.session_id, session.resume_token, timeout=min(remaining, 10))
                    self.resumes += 1
                    return
                except SessionNotFound:
                    self.session = None  # gone for good: expired, ended or terminated meanwhile
                    raise
                except RETRYABLE_RESUME_ERRORS:
                    pass  # that server is stopping, or its registry is down: try the next one
                except (ConnectionClosed, TimeoutError):
                    pass
                with contextlib.suppress(Exception):
                    await websocket.close()
            await asyncio.sleep(min(next(delays), max(0.0, deadline - loop.time())))
        self.session = None
        raise SessionNotFound(
            f"Could not resume session {session.session_id} within its {session.resume_grace_seconds} s grace."
        )

    async def close(self) -> None:
        """Close the connection (code 1000); the server ends the session, resumable or not."""
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

    `origin` sets the Origin header (browsers' origin policy applies to it); `fallback_urls`
    are tried in turn after `url` when a resumable session reconnects; other keyword
    arguments go to websockets.connect.
    """

    def __init__(
        self,
        url: str,
        *,
        origin: str | None = None,
        open_timeout: float = 10.0,
        fallback_urls: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.url, self.kwargs = url, {"origin": origin, "open_timeout": open_timeout, **kwargs}
        self.urls = [url, *(fallback_urls or [])]
        self.client: SessionClient | None = None

    async def _open(self) -> SessionClient:
        try:
            websocket = await websockets.connect(self.url, **self.kwargs)
        except websockets.InvalidStatus as refused:
            raise HandshakeRefused(refused.response.status_code) from None
        return SessionClient(websocket, urls=self.urls, connect_kwargs=self.kwargs)

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


async def _hold_until_interrupted(
    url: str,
    workspace_dir: str,
    *,
    origin: str | None,
    request_id: str | None,
    resumable: bool = False,
    fallback_urls: list[str] | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with connect(url, origin=origin, fallback_urls=fallback_urls) as client:
            session = await client.new_session(workspace_dir, request_id, resumable=resumable)
            print(json.dumps(session.as_json()), flush=True)
            if session.resumable:
                print("holding the session (resumed after drops and restarts); Ctrl-C ends it", file=sys.stderr)
            else:
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
    parser.add_argument(
        "--resumable", action="store_true", help="open a resumable session and resume it after drops and restarts"
    )
    parser.add_argument("--fallback-url", action="append", default=[], help="another server to resume on (repeatable)")
    args = parser.parse_args(argv)
    return asyncio.run(
        _hold_until_interrupted(
            args.url,
            args.workspace_dir,
            origin=args.origin,
            request_id=args.request_id,
            resumable=args.resumable,
            fallback_urls=args.fallback_url,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
