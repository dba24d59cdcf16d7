"""Open sessions: through the real ASGI application (WebsocketCommunicator), or on a real server (websockets)."""

import asyncio
import json
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


async def open_session(workspace: Path, *, fields: dict | None = None, **kwargs) -> tuple[WebsocketCommunicator, dict]:
    """Connect to /ws, send new_session on `workspace` (plus `fields`); the communicator and the reply."""
    comm = await connect(**kwargs)
    return comm, await new_session(comm, workspace, **(fields or {}))


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    """The next thing the server does is close with `code`."""
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": code}


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


async def close_code_after(ws: websockets.ClientConnection, timeout: float = 30) -> int:
    """Read until the server closes; the close code it sent (1006 when there was no close frame)."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=timeout)
    return ws.close_code
