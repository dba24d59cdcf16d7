"""The WebSocket consumer: glue only. Decode, dispatch to one handler per type, reply or close."""

import logging
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import events, lifecycle, protocol
from .conf import app_settings
from .errors import InternalError, ProtocolError, SessionExists, SessionTerminated
from .events import client_address
from .inbox import Inbox
from .ratelimit import TokenBucket
from .resolver import workspace_resolve_async
from .services import SessionRecord, session_close, session_create

logger = logging.getLogger(__name__)


class SessionConsumer(AsyncJsonWebsocketConsumer):
    """One WebSocket connection, holding at most one live session."""

    session: SessionRecord | None = None
    closing_error: str | None = None  # the error code the server closed with, if it did

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the connection; however it ends, even by a channel-layer failure, its row goes too."""
        # Frames are read as they arrive and bounded there, not left buffered in the server (inbox.py).
        inbox = Inbox(
            receive,
            bucket=TokenBucket(
                rate=app_settings.WSS_RATE_LIMIT, burst=app_settings.WSS_RATE_LIMIT_BURST, now=time.monotonic()
            ),
            max_bytes=app_settings.WSS_MAX_MESSAGE_BYTES,
            max_queued=app_settings.WSS_MAX_QUEUED_FRAMES,
        )
        try:
            await super().__call__(scope, inbox, send)
        finally:
            inbox.close()
            # daphne calls disconnect() only after a clean end. An exception escaping the
            # base class (Redis failing under the channel layer's receive) would leak the row.
            if self.session is not None:
                self.closing_error = self.closing_error or "internal_error"
            await self.disconnect(1011)

    async def connect(self) -> None:
        """Accept every handshake that the middleware let through, unless this process is stopping."""
        if lifecycle.stopping():
            await self.close()
            return
        lifecycle.connection_opened(self)
        await self.accept(subprotocol=protocol.subprotocol_choose(self.scope.get("subprotocols", [])))
        events.connected(self.scope)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Overridden: the base class raises on binary frames and bad JSON."""
        if self.closing_error is not None:
            return  # frames already in flight after a fatal error: nothing more to say
        message = None
        try:
            message = protocol.decode(text_data, bytes_data, limit=app_settings.WSS_MAX_MESSAGE_BYTES)
            await HANDLERS[type(message)](self, message)
        except ProtocolError as error:
            if message is not None:
                error.request_id = message.request_id
            await self.send_error(error)
        except Exception:
            # No exception may escape: daphne would close with 1011 and never call disconnect().
            logger.exception("unexpected error while handling a frame")
            request_id = message.request_id if message is not None else None
            await self.send_error(
                InternalError("The server failed to handle this message; it has been logged.", request_id=request_id)
            )

    async def on_new_session(self, message: protocol.NewSession) -> None:
        """Resolve the workspace, commit the row, then reply."""
        started = time.monotonic()
        if self.session is not None:
            raise SessionExists(f"This connection already holds session {self.session.session_id}.")
        workspace_dir = await workspace_resolve_async(message.workspace_dir)
        self.session = await session_create(
            workspace_dir=workspace_dir,
            channel_name=self.channel_name,
            client_addr=client_address(self.scope),
            user_id=getattr(self.scope.get("user"), "pk", None),
        )
        await self.send_json(
            protocol.new_session_reply(
                session_id=self.session.session_id,
                workspace_dir=self.session.workspace_dir,
                created_at=self.session.created_at,
                request_id=message.request_id,
            )
        )
        events.session_created(self.scope, self.session, started=started)

    async def wss_refused(self, event: dict[str, Any]) -> None:
        """A frame refused on arrival (rate, size, backlog: inbox.py): answer it in its turn."""
        if self.closing_error is None:
            await self.send_error(event["error"])

    async def session_terminate(self, event: dict[str, Any]) -> None:
        """Channel-layer event `session.terminate`: an operator ended this session."""
        if self.session is None or str(self.session.session_id) != event.get("session_id"):
            return
        session, self.session = self.session, None
        await session_close(session_id=session.session_id)
        events.session_ended(self.scope, session, reason="terminated")
        await self.send_error(SessionTerminated("An operator terminated this session."))

    async def disconnect(self, code: int) -> None:
        """Remove the session, if any. Idempotent; never raises."""
        lifecycle.connection_closed(self)
        session, self.session = self.session, None
        if session is not None:
            await session_close(session_id=session.session_id)
            reason = events.end_reason(code, closing_error=self.closing_error)
            events.session_ended(self.scope, session, reason=reason, close_code=code)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Overridden: Channels hops to a thread before every event to close old DB connections.

        That is one hop per connect, frame and disconnect. This consumer reaches the database
        only through the registry writer, which owns its connection (registry_writer.py), and
        database_sync_to_async closes old connections itself; so the hop closes nothing of ours.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Overridden for the same hop as `dispatch`; this consumer joins no groups."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def send_error(self, error: ProtocolError) -> None:
        """Render an error frame: the one place errors reach the wire."""
        events.error_sent(error.code)
        await self.send(text_data=protocol.encode(protocol.error_reply(error)))
        if error.close_code is not None:
            self.closing_error = error.code
            await self.close(code=error.close_code)

    @classmethod
    async def encode_json(cls, content: dict[str, Any]) -> str:
        """Compact JSON, ASCII-safe."""
        return protocol.encode(content)


# One line per client message type.
HANDLERS = {
    protocol.NewSession: SessionConsumer.on_new_session,
}
