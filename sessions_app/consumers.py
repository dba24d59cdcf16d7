"""The WebSocket consumer: glue only. Decode, dispatch to one handler per type, reply or close."""

import asyncio
import logging
import time
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import connections, delivery, events, message_types, protocol
from .compat import WithoutConnectionHop
from .conf import app_settings
from .errors import (
    InternalError,
    NoSession,
    ProtocolError,
    SessionExists,
    SessionLost,
    SessionNotFound,
    SessionTakenOver,
    SessionTerminated,
)
from .events import client_address
from .inbox import Inbox
from .instances import resume_grace_seconds
from .process import process_state
from .ratelimit import TokenBucket
from .release import held_channel, session_release
from .resolver import workspace_resolve_async
from .sessions import (
    SessionRecord,
    session_close,
    session_create,
    session_resume,
)

logger = logging.getLogger(__name__)


class SessionConsumer(WithoutConnectionHop, AsyncJsonWebsocketConsumer):
    """One WebSocket connection, holding at most one live session."""

    session: SessionRecord | None = None
    closing_error: str | None = None  # the error code the server closed with, if it did
    delivered_seq = 0  # the session's last event seq when this connection took it
    event_stream: delivery.EventStream | None = None  # made at the first event: a quiet session pays nothing
    gap_timer: asyncio.Task | None = None  # the wake-up after an event gap, while one is open

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
        except asyncio.CancelledError:
            await self.close_handshake_finish(inbox)
            raise
        finally:
            inbox.close()
            # daphne calls disconnect() only after a clean end. An exception escaping the
            # base class (Redis failing under the channel layer's receive) would leak the row.
            if self.session is not None:
                self.closing_error = self.closing_error or "internal_error"
            await self.disconnect(1011)

    async def close_handshake_finish(self, inbox: Inbox) -> None:
        """Cancelled while the process stops: wait (bounded) for the client's answer to the stop's close frame.

        daphne cancels every application as it shuts down, beside the stop that has just sent
        each client its close frame. Ending at once would let the process exit before the
        frame leaves: the client would see the connection drop instead of 4503.
        """
        if not connections.stopping():
            return
        code = await inbox.disconnected(connections.CLOSE_HANDSHAKE_SECONDS)
        if code is not None:
            await self.disconnect(code)

    async def connect(self) -> None:
        """Accept every handshake that the middleware let through, unless this process is stopping."""
        if connections.stopping():
            await self.close()
            return
        connections.connection_opened(self)
        await self.accept(subprotocol=protocol.subprotocol_choose(self.scope.get("subprotocols", [])))
        events.connected(self.scope)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Overridden: the base class raises on binary frames and bad JSON."""
        if self.closing_error is not None:
            return  # frames already in flight after a fatal error: nothing more to say
        message = None
        try:
            types = message_types.registry()
            message = protocol.decode(text_data, bytes_data, types)
            await self.message_handle(types[message.type], message)
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

    async def message_handle(self, declared: message_types.MessageType, message: protocol.Message) -> None:
        """Run a declared type's handler with this connection's context; send its reply, if any."""
        if declared.needs_session and self.session is None:
            raise NoSession(
                f"This connection holds no session; {declared.name!r} needs one: open or resume a session first."
            )
        context = message_types.MessageContext(
            session=self.session,
            user=self.scope.get("user"),
            process=process_state().identity,
            request_id=message.request_id,
            connection=self,
        )
        fields = await declared.handler(context, message)
        if fields is not None:
            reply = protocol.declared_reply(message_type=declared.name, fields=fields, request_id=message.request_id)
            await self.send_json(reply)

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
            user_id=self.user_id,
            resumable=message.resumable,
        )
        self.events_reset(0)
        grant = protocol.ResumeGrant(self.session.resume_token, resume_grace_seconds()) if message.resumable else None
        await self.send_json(
            protocol.new_session_reply(
                session_id=self.session.session_id,
                workspace_dir=self.session.workspace_dir,
                created_at=self.session.created_at,
                request_id=message.request_id,
                resume=grant,
            )
        )
        events.session_created(self.scope, self.session, started=started)

    async def wss_refused(self, event: dict[str, Any]) -> None:
        """A frame refused on arrival (rate, size, backlog: inbox.py): answer it in its turn."""
        if self.closing_error is None:
            await self.send_error(event["error"])

    async def on_resume_session(self, message: protocol.ResumeSession) -> None:
        """Reattach a resumable session here; tell the connection that still held it, if any."""
        if self.session is not None:
            raise SessionExists(f"This connection already holds session {self.session.session_id}.")
        resumed = await session_resume(
            session_id=message.session_id,
            resume_token=message.resume_token,
            channel_name=self.channel_name,
            client_addr=client_address(self.scope),
            user_id=self.user_id,
            last_seq=message.last_seq,
        )
        if resumed is None:
            # One message for every cause, so the reply tells a guesser nothing.
            raise SessionNotFound("There is no resumable session with this id and token.")
        self.session = resumed.record
        self.events_reset(resumed.replay.base_seq)
        await self.send_json(
            protocol.session_resumed_reply(
                session_id=self.session.session_id,
                workspace_dir=self.session.workspace_dir,
                created_at=self.session.created_at,
                resume=protocol.ResumeGrant(self.session.resume_token, resume_grace_seconds()),
                request_id=message.request_id,
                replay=resumed.replay.count,
            )
        )
        # Before any live event: channel-layer messages wait until this handler returns.
        for frame in resumed.replay.frames:
            await self.send(text_data=frame)
        events.session_resumed(self.scope, self.session, taken_over=bool(resumed.previous_channel))
        if resumed.previous_channel:
            await self.tell(resumed.previous_channel, "session.taken_over", self.session)
        if process_state().fenced():
            # The lease ran out while the resume was under way: peers may reap this instance
            # any moment. The client has its new token and resumes elsewhere.
            await self.send_error(SessionLost("This server lost the session registry; resume the session elsewhere."))

    async def on_end_session(self, message: protocol.EndSession) -> None:
        """End this connection's session now; the connection stays open for another."""
        session, self.session = self.session, None
        await session_close(session_id=session.session_id, channel_name=held_channel(session, self.channel_name))
        await self.send_json(protocol.session_ended_reply(session_id=session.session_id, request_id=message.request_id))
        events.session_ended(self.scope, session, reason="client_close")

    async def session_event(self, event: dict[str, Any]) -> None:
        """Channel-layer event `session.event`: deliver the session's events once each, in seq order."""
        session = self.session
        if session is None or self.closing_error is not None or str(session.session_id) != event.get("session_id"):
            return
        seq, frame = event.get("seq"), event.get("frame")
        if not isinstance(seq, int) or not isinstance(frame, str):
            logger.warning("dropped a malformed session.event for session %s", session.session_id)
            return  # a message no sender of ours made: never let it end the connection
        if self.event_stream is None:
            self.event_stream = delivery.EventStream(
                session_id=session.session_id, delivered=self.delivered_seq, resumable=session.resumable
            )
        for ready in await self.event_stream.arrived(seq, frame):
            await self.send(text_data=ready)
        self.gap_wait()

    async def session_event_gap(self, event: dict[str, Any]) -> None:
        """Channel-layer event `session.event_gap`: a missing seq did not come in time; fill or skip it."""
        self.gap_timer = None
        stream = self.event_stream
        if stream is None or self.session is None or self.closing_error is not None:
            return
        if str(stream.session_id) != event.get("session_id"):
            return
        for frame in await stream.gap_close():
            await self.send(text_data=frame)
        self.gap_wait()

    def gap_wait(self) -> None:
        """Wake this consumer (through its own channel, in turn with its events) if a gap is still open later."""
        if self.gap_timer is not None or self.event_stream is None or not self.event_stream.waiting:
            return
        stream = self.event_stream
        self.gap_timer = asyncio.ensure_future(self.gap_wake(str(stream.session_id), stream.gap_wait_seconds))

    async def gap_wake(self, session_id: str, after: float) -> None:
        """After `after` seconds, queue a `session.event_gap` for this consumer; a failed send is logged."""
        await asyncio.sleep(after)
        try:
            await self.channel_layer.send(self.channel_name, {"type": "session.event_gap", "session_id": session_id})
        except Exception:
            logger.warning("could not wake the consumer of session %s after an event gap", session_id)

    def events_reset(self, delivered_seq: int) -> None:
        """A session taken on this connection: its events continue after `delivered_seq`."""
        self.delivered_seq, self.event_stream = delivered_seq, None
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    async def session_terminate(self, event: dict[str, Any]) -> None:
        """Channel-layer event `session.terminate`: an operator ended this session."""
        if self.session is None or str(self.session.session_id) != event.get("session_id"):
            return
        session, self.session = self.session, None
        await session_close(session_id=session.session_id)
        events.session_ended(self.scope, session, reason="terminated")
        await self.send_error(SessionTerminated("An operator terminated this session."))

    async def session_taken_over(self, event: dict[str, Any]) -> None:
        """Channel-layer event `session.taken_over`: the session was resumed on another connection.

        Its row already names that connection, so this one lets go without touching it.
        """
        if self.session is None or str(self.session.session_id) != event.get("session_id"):
            return
        session, self.session = self.session, None
        events.session_taken_over(self.scope, session)
        await self.send_error(SessionTakenOver("This session was resumed on another connection."))

    async def disconnect(self, code: int) -> None:
        """End or detach the session, if any (release.session_release decides). Idempotent; never raises."""
        connections.connection_closed(self)
        if self.gap_timer is not None:
            self.gap_timer.cancel()
        session, self.session = self.session, None
        if session is None:
            return
        reason = events.end_reason(code, closing_error=self.closing_error)
        detached = await session_release(
            session=session, channel_name=self.channel_name, close_code=code, closing_error=self.closing_error
        )
        if detached:
            events.session_detached(self.scope, session, reason=reason, close_code=code)
        else:
            events.session_ended(self.scope, session, reason=reason, close_code=code)

    @property
    def user_id(self) -> int | None:
        """The authenticated user's id, or None."""
        return getattr(self.scope.get("user"), "pk", None)

    async def tell(self, channel_name: str, event_type: str, session: SessionRecord) -> None:
        """Send a channel-layer event about `session` to another consumer; a failed send is logged, not raised."""
        try:
            await self.channel_layer.send(channel_name, {"type": event_type, "session_id": str(session.session_id)})
        except Exception:
            # The row already moved, so the old connection's writes are no-ops; it only keeps its socket.
            logger.warning("could not tell %s about session %s (%s)", channel_name, session.session_id, event_type)

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
