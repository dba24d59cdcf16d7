"""Baseline: a bare `websockets` server with a dict registry, the Python floor.

Answers protocol v1's `new_session` the way the project does (reply, then `session_exists`
for a second one on the same connection) and serves GET /registry-count for the bench.
Run as `python -m bench.baseline_websockets --port N`.
"""

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve

REGISTRY: dict[str, ServerConnection] = {}


def now_rfc3339() -> str:
    """UTC, milliseconds, Z: the project's timestamp format."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def answer(frame: str, session_id: str | None) -> tuple[dict, str | None]:
    """The reply to one frame, and the connection's session id afterwards."""
    try:
        message = json.loads(frame)
    except ValueError:
        return {"type": "error", "code": "invalid_json", "message": "The frame is not valid JSON."}, session_id
    request_id = message.get("request_id")
    if message.get("type") != "new_session":
        reply = {"type": "error", "code": "unknown_type", "message": "Unknown message type."}
    elif session_id is not None:
        reply = {"type": "error", "code": "session_exists", "message": f"This connection already holds {session_id}."}
    else:
        session_id = str(uuid.uuid4())
        reply = {
            "type": "new_session",
            "session_id": session_id,
            "workspace_dir": message.get("workspace_dir"),
            "created_at": now_rfc3339(),
        }
    if request_id is not None:
        reply["request_id"] = request_id
    return reply, session_id


async def handler(connection: ServerConnection) -> None:
    """One connection: at most one session, removed from the dict when the socket goes."""
    session_id = None
    try:
        async for frame in connection:
            if not isinstance(frame, str):
                continue
            reply, new_id = answer(frame, session_id)
            if new_id != session_id:
                session_id = new_id
                REGISTRY[session_id] = connection
            await connection.send(json.dumps(reply, separators=(",", ":")))
    finally:
        if session_id is not None:
            REGISTRY.pop(session_id, None)


def process_request(connection: ServerConnection, request):
    """GET /registry-count answers with the number of live sessions."""
    if request.path == "/registry-count":
        return connection.respond(HTTPStatus.OK, f"{len(REGISTRY)}\n")
    return None


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, compression=None, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
