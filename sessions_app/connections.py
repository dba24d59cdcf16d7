"""Connection tracking: the connections this process has open, the sessions they hold, and whether it takes more."""

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ProtocolError
from .process import process_state

if TYPE_CHECKING:  # sessions.py waits on the lease, which closes the sessions connections hold
    from .sessions import SessionRecord


class Connection(Protocol):
    """What the lifecycle needs of a consumer: its session, and rendering an error frame."""

    session: "SessionRecord | None"
    channel_name: str

    async def send_error(self, error: ProtocolError) -> None: ...

    async def session_taken_over(self, event: dict[str, Any]) -> None: ...


def connection_opened(connection: Connection) -> None:
    """Track an accepted connection so a stop can close it."""
    process_state().connections.add(connection)


def connection_closed(connection: Connection) -> None:
    """Forget a connection; forgetting an unknown one is fine."""
    process_state().connections.discard(connection)


def connections_open() -> list[Connection]:
    """The connections open right now."""
    return list(process_state().connections)


def sessions_held() -> dict[uuid.UUID, Connection]:
    """The sessions this process's connections hold right now, by id: the truth the registry must match."""
    return {c.session.session_id: c for c in connections_open() if c.session is not None}


def stopping() -> bool:
    """Whether this process has begun to stop: new connections are refused."""
    return process_state().stopping


# How long a stop waits for the clients' close handshakes before letting the server exit.
CLOSE_HANDSHAKE_SECONDS = 2.0


async def closes_wait() -> None:
    """Give the clients' close handshakes up to CLOSE_HANDSHAKE_SECONDS, so they see our close frame.

    A connection leaves `connections` when its consumer ends: after the client's answer, or
    after the same bound when the server cancelled it (`SessionConsumer.close_handshake_finish`).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_HANDSHAKE_SECONDS
    state = process_state()
    while state.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
