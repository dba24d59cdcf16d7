"""Open sessions: through the real ASGI application (WebsocketCommunicator), or on a real server (websockets)."""

import asyncio
import json
import time
from pathlib import Path

import pytest
import websockets
from channels.testing import WebsocketCommunicator


async def connect(path: str = "/ws", **kwargs) -> WebsocketCommunicator:
    """A communicator connected to `path` through wssproject.asgi.application (the handshake must succeed)."""
    from wssproject.asgi import application

    comm = WebsocketCommunicator(application, path, **kwargs)
    assert (await comm.connect())[0]
    return comm


async def new_session(comm: WebsocketCommunicator, workspace_dir: object, **extra) -> dict:
    """Send new_session on an open communicator; the reply, whatever it is."""
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace_dir), **extra})
    return await comm.receive_json_from(timeout=5)


async def open_session(
    workspace: Path, *, fields: dict | None = None, ok: bool = False, **kwargs
) -> tuple[WebsocketCommunicator, dict]:
    """Connect to /ws, send new_session on `workspace` (plus `fields`); the communicator and the reply.

    With `ok`, the reply must be a success.
    """
    comm = await connect(**kwargs)
    reply = await new_session(comm, workspace, **(fields or {}))
    if ok:
        assert reply["type"] == "new_session", reply
    return comm, reply


async def resume(comm: WebsocketCommunicator, session_id: str, token: str, **extra) -> dict:
    """Send resume_session (plus `extra` fields) on an open communicator; the reply, whatever it is."""
    await comm.send_json_to({"type": "resume_session", "session_id": session_id, "resume_token": token, **extra})
    return await comm.receive_json_from(timeout=5)


async def detached_session(workspace: Path) -> dict:
    """A resumable session whose connection dropped (1006): its new_session reply."""
    comm, reply = await open_session(workspace, fields={"resumable": True})
    await comm.disconnect(code=1006)
    return reply


async def assert_session_held(comm: WebsocketCommunicator) -> None:
    """The connection is open and still holds its session: another new_session is session_exists.

    A positive probe, where waiting for silence would need a window long enough to fail: a
    session closed meanwhile answers with its error frame first.
    """
    reply = await new_session(comm, "/", request_id="probe")
    assert (reply["type"], reply.get("code"), reply.get("request_id")) == ("error", "session_exists", "probe"), reply


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    """The next thing the server does is close with `code`."""
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": code}


async def expect_session_lost(comm: WebsocketCommunicator, timeout: float = 10) -> float:
    """Read `session_lost` and close 4503; the time.monotonic() at which the error frame arrived."""
    reply = await comm.receive_json_from(timeout=timeout)
    arrived = time.monotonic()
    assert (reply["type"], reply["code"]) == ("error", "session_lost")
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await comm.disconnect(code=4503)
    return arrived


# --- a real server, through the websockets client -------------------------------------------


def new_session_frame(workspace_dir: object, **extra) -> str:
    """A new_session text frame; a Path becomes its string, anything else is sent as it is."""
    value = str(workspace_dir) if isinstance(workspace_dir, Path) else workspace_dir
    return json.dumps({"type": "new_session", "workspace_dir": value, **extra})


async def ws_open_session(ws: websockets.ClientConnection, workspace: object, timeout: float = 30, **extra) -> str:
    """Send new_session on a websockets connection; the session id (the reply must be a success)."""
    await ws.send(new_session_frame(workspace, **extra))
    reply = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert reply["type"] == "new_session", reply
    return reply["session_id"]


async def ws_connect_session(
    url: str, workspace: object, *, timeout: float = 30, **extra
) -> tuple[websockets.ClientConnection, str]:
    """Connect to a real server at `url` and open a session there; the connection and the session id."""
    ws = await websockets.connect(url, open_timeout=timeout)
    return ws, await ws_open_session(ws, workspace, timeout, **extra)


async def frames_until_closed(
    ws: websockets.ClientConnection, timeout: float | None = 30, *, into: list[dict] | None = None
) -> tuple[list[dict], int | None]:
    """Read until the connection closes: every frame (parsed, also appended to `into` as it comes) and
    the close code the server sent (None: no close frame). Fails the test when `timeout` passes first."""
    frames = [] if into is None else into
    try:
        async with asyncio.timeout(timeout):
            while True:
                frames.append(json.loads(await ws.recv()))
    except websockets.ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        pytest.fail(f"the connection was still open after {timeout:g} s")


async def close_code_after(ws: websockets.ClientConnection, timeout: float = 30) -> int:
    """Read until the server closes; the close code it sent (1006 when there was no close frame)."""
    await frames_until_closed(ws, timeout)
    return ws.close_code


# --- the admin's live channel ---------------------------------------------------------------

ADMIN_ORIGIN = "http://testserver"


async def admin_session_cookie(user) -> str:
    """A `Cookie` header value for the admin logged in as `user` (a real Django session)."""
    from django.conf import settings
    from django.test import AsyncClient

    client = AsyncClient()
    await client.aforce_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def admin_live_connect(
    cookie: str | None = None, *, origin: str | None = ADMIN_ORIGIN
) -> tuple[bool, WebsocketCommunicator]:
    """A handshake on the admin's live channel through the ASGI app: whether it was accepted, and the communicator."""
    from wssproject.asgi import application

    headers = [(b"host", b"testserver")]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    comm = WebsocketCommunicator(application, "/admin/live/", headers=headers)
    accepted, _ = await comm.connect()
    return accepted, comm


async def admin_watch(comm: WebsocketCommunicator, **watch) -> dict:
    """Send a `watch` frame (page "changelist" of live sessions unless told); the first answer."""
    await comm.send_json_to({"type": "watch", "page": "changelist", "model": "livesession", "query": "", **watch})
    return await comm.receive_json_from(timeout=5)


async def admin_frame_until(comm: WebsocketCommunicator, predicate, timeout: float = 2.0) -> dict:
    """Read the channel's frames until one satisfies `predicate`; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            pytest.fail(f"no admin frame matched within {timeout:g} s")
        try:
            frame = await comm.receive_json_from(timeout=left)
        except TimeoutError:
            pytest.fail(f"no admin frame matched within {timeout:g} s")
        if predicate(frame):
            return frame
