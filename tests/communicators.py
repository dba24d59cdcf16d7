"""Drive the real ASGI application with WebsocketCommunicator."""

from pathlib import Path

from channels.testing import WebsocketCommunicator


async def open_session(workspace: Path, *, fields: dict | None = None, **kwargs) -> tuple[WebsocketCommunicator, dict]:
    """Connect to /ws, send new_session on `workspace` (plus `fields`); the communicator and the reply."""
    from wssproject.asgi import application

    comm = WebsocketCommunicator(application, "/ws", **kwargs)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "new_session", "workspace_dir": str(workspace), **(fields or {})})
    return comm, await comm.receive_json_from(timeout=5)
