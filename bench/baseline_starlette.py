"""Baseline: Starlette with a dict registry under uvicorn, what a user would pick instead of Channels.

Answers protocol v1's `new_session` the way the project does (bench.baseline_websockets.answer)
and serves GET /registry-count. Serve as `uvicorn bench.baseline_starlette:application`
(uvicorn's defaults: its `websockets` implementation, httptools and uvloop when installed).
"""

import json

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.baseline_websockets import answer

REGISTRY: dict[str, WebSocket] = {}


async def sessions(websocket: WebSocket) -> None:
    """One connection: at most one session, removed from the dict when the socket goes."""
    await websocket.accept()
    session_id = None
    try:
        while True:
            frame = await websocket.receive_text()
            reply, new_id = answer(frame, session_id)
            if new_id != session_id:
                session_id = new_id
                REGISTRY[session_id] = websocket
            await websocket.send_text(json.dumps(reply, separators=(",", ":")))
    except (WebSocketDisconnect, KeyError):  # KeyError: a binary frame has no "text"
        pass
    finally:
        if session_id is not None:
            REGISTRY.pop(session_id, None)


async def registry_count(request) -> PlainTextResponse:
    """The number of live sessions."""
    return PlainTextResponse(f"{len(REGISTRY)}\n")


application = Starlette(routes=[WebSocketRoute("/ws", sessions), Route("/registry-count", registry_count)])
