"""Session events (protocol v1.2): sequence, keep, bound and deliver what applications send to a session.

    seq = send_session_event(session_id=..., event="build.finished", data={...})          # sync code
    seq = await asend_session_event(session_id=..., event="build.finished", data={...})   # async code

Both work from any Django code in any process that shares the registry (and, for sessions
held by server processes, the channel layer). One transaction on the session's row, locked,
advances its `last_seq`, spends one token of its rate bucket and, for a resumable session,
keeps the event in the window (`SessionEvent`, the last WSS_SESSION_EVENTS_KEPT) and trims
it. After the commit a `session.event` channel-layer message carries the encoded frame to
the consumer that holds the session, if one does. A refusal is raised as an `EventError`,
which each sending path (the API, the command, the admin) maps to its own answer.

The consumer side (`EventStream`) delivers each seq once, in order: a seq already delivered
is dropped; a gap (two senders' messages crossing in the layer, or a message the layer
never took) is waited for briefly, then filled from the window for a resumable session
(`GAP_FILL_SECONDS`), or skipped for any other (`GAP_WAIT_SECONDS`: a non-resumable
session keeps nothing to fill it from).
"""

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.db import DatabaseError, models, transaction
from django.db.models import Value
from django.utils import timezone

from . import protocol
from .conf import app_settings
from .layers import LAYER_FAILURES
from .models import LiveSession, SessionEvent

logger = logging.getLogger(__name__)

# How long the layer may take a delivery before the sender gives up on it (the event is
# committed either way, and a resumable session gets it on its next event or resume).
SEND_TIMEOUT_SECONDS = 5.0
# How long a consumer waits for a missing seq (two senders' messages crossed in the layer)
# before it reads it from the window (resumable session) or skips it (any other).
GAP_FILL_SECONDS = 0.1
GAP_WAIT_SECONDS = 1.0
# Out-of-order events a consumer holds while it waits; past this it skips the gap at once.
MAX_PENDING = 1000
# The longest `sent_at` text and seq, so a frame's size is known before its seq is.
_SIZE_PROBE_SENT_AT = datetime(2026, 1, 1, tzinfo=UTC)


class EventError(Exception):
    """Root of the refusals of a session event; each path maps them to its own answer."""


class EventSessionNotFound(EventError):
    """No such session, or it has ended (HTTP 404)."""


class EventInvalid(EventError):
    """A bad or missing `event` name or `data` (HTTP 400); `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class EventTooLarge(EventError):
    """The `session_event` frame would not fit WSS_MAX_MESSAGE_BYTES (HTTP 413)."""


class EventRateLimited(EventError):
    """The session's WSS_SESSION_EVENT_RATE is spent (HTTP 429); `retry_after` in whole seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EventUnavailable(EventError):
    """The registry did not take the event (down, or a lock wait timed out): nothing was done (HTTP 503)."""

    retry_after = 5


MISSING: Any = object()  # `data` not given at all (None is JSON null, a valid value)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A committed event: its seq, and where (if anywhere) to deliver its encoded frame."""

    session_id: uuid.UUID
    seq: int
    channel_name: str
    frame: str


def event_validate(*, session_id: uuid.UUID, event: Any, data: Any) -> None:
    """Check the name, that `data` is JSON, and that the frame fits WSS_MAX_MESSAGE_BYTES; or raise."""
    if not isinstance(event, str) or protocol.EVENT_NAME.fullmatch(event) is None:
        raise EventInvalid("event", 'The "event" name must match ^[a-z0-9][a-z0-9_.-]{0,63}$.')
    if data is MISSING:
        raise EventInvalid("data", '"data" is required: any JSON value (null included).')
    try:
        encoded = protocol.encode(
            protocol.session_event_reply(
                session_id=session_id,
                seq=protocol.MAX_SAFE_INTEGER,
                event=event,
                data=data,
                sent_at=_SIZE_PROBE_SENT_AT,
            )
        )
    except (TypeError, ValueError, RecursionError):
        raise EventInvalid("data", '"data" must be a JSON value (no NaN or Infinity).') from None
    limit = app_settings.WSS_MAX_MESSAGE_BYTES
    if len(encoded) > limit:  # ASCII: protocol.encode escapes everything else
        raise EventTooLarge(f"The session_event frame would be {len(encoded)} bytes, over the limit of {limit}.")


def event_record(*, session_id: uuid.UUID, event: str, data: Any) -> Accepted:
    """Lock the session's row, spend a token, take the next seq, keep the event; one transaction."""
    try:
        return _event_record(session_id=session_id, event=event, data=data)
    except DatabaseError as error:
        logger.warning("event for session %s not recorded: %s", session_id, error)
        raise EventUnavailable("The session registry is unavailable right now; try again shortly.") from None


def _event_record(*, session_id: uuid.UUID, event: str, data: Any) -> Accepted:
    with transaction.atomic():
        row = (
            LiveSession.objects.select_for_update()
            .filter(pk=session_id)
            .values("last_seq", "resumable", "channel_name", "detached_at", "event_tokens", "event_tokens_at")
            .first()
        )
        # Read under the lock, so sent_at and the bucket's clock advance with seq.
        now = timezone.now()
        if row is None or _expired(row["detached_at"], now):
            raise EventSessionNotFound(f"No live session {session_id}.")
        tokens = _tokens_spend(row["event_tokens"], row["event_tokens_at"], now)
        seq = row["last_seq"] + 1
        LiveSession.objects.filter(pk=session_id).update(last_seq=seq, event_tokens=tokens, event_tokens_at=now)
        kept = app_settings.WSS_SESSION_EVENTS_KEPT
        if row["resumable"] and kept > 0:
            # Value(None, JSONField()): JSON null, where a bare None would be SQL NULL.
            stored = Value(None, models.JSONField()) if data is None else data
            SessionEvent.objects.create(session_id=session_id, seq=seq, event=event, data=stored, sent_at=now)
            if seq > kept:
                SessionEvent.objects.filter(session_id=session_id, seq__lte=seq - kept).delete()
    frame = protocol.session_event_reply(session_id=session_id, seq=seq, event=event, data=data, sent_at=now)
    return Accepted(session_id=session_id, seq=seq, channel_name=row["channel_name"], frame=protocol.encode(frame))


def _expired(detached_at: datetime | None, now: datetime) -> bool:
    """A detached session past its grace has ended for its client, though not yet removed."""
    grace = max(0.0, float(app_settings.WSS_RESUME_GRACE_SECONDS))
    return detached_at is not None and detached_at <= now - timedelta(seconds=grace)


def _tokens_spend(tokens: float, tokens_at: datetime | None, now: datetime) -> float:
    """The bucket after one event (rate per second, as many at once), or raise EventRateLimited."""
    rate = float(app_settings.WSS_SESSION_EVENT_RATE)
    if rate <= 0:
        return 0.0
    burst = max(1.0, rate)
    elapsed = 0.0 if tokens_at is None else max(0.0, (now - tokens_at).total_seconds())
    available = burst if tokens_at is None else min(burst, tokens + elapsed * rate)
    if available < 1.0:
        retry_after = max(1, math.ceil((1.0 - available) / rate))
        raise EventRateLimited(
            f"This session may be sent {rate:g} events per second; try again in {retry_after} s.",
            retry_after=retry_after,
        )
    return available - 1.0


async def event_deliver(accepted: Accepted) -> bool:
    """Hand a committed event to the consumer that holds its session; whether the layer took it.

    A full channel (the holding process is behind) or a failing layer is tried again with
    backoff for up to SEND_TIMEOUT_SECONDS: the event is committed whatever happens, and a
    resumable session's consumer fills a seq it never got from the window.
    """
    if not accepted.channel_name:
        return False  # detached: kept (if resumable) for its resume
    session_id = accepted.session_id
    message = {"type": "session.event", "session_id": str(session_id), "seq": accepted.seq, "frame": accepted.frame}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEND_TIMEOUT_SECONDS
    delay = 0.02
    while True:
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await get_channel_layer().send(accepted.channel_name, message)
            return True
        except (*LAYER_FAILURES, TimeoutError, ChannelFull) as error:
            if loop.time() + delay >= deadline:
                logger.warning("event %d for session %s not delivered now (%r)", accepted.seq, session_id, error)
                return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def send_session_event(*, session_id: uuid.UUID | str, event: str, data: Any = MISSING) -> int:
    """Send an event to a live session from synchronous code; its seq. Raises an EventError subclass.

    Returns once the event is committed (and kept, for a resumable session) and handed to
    the channel layer for the connection that holds the session, if one does. From a thread
    that runs an event loop, use `asend_session_event`: this one refuses before it records.
    """
    if _loop_running():
        raise RuntimeError("send_session_event() is for synchronous code: await asend_session_event() instead.")
    accepted = event_accept(session_id=session_id, event=event, data=data)
    async_to_sync(event_deliver)(accepted)
    return accepted.seq


async def asend_session_event(*, session_id: uuid.UUID | str, event: str, data: Any = MISSING) -> int:
    """Send an event to a live session from async code; its seq. Raises an EventError subclass."""
    accepted = await database_sync_to_async(event_accept)(session_id=session_id, event=event, data=data)
    await event_deliver(accepted)
    return accepted.seq


def event_accept(*, session_id: uuid.UUID | str, event: Any, data: Any) -> Accepted:
    """Check and record an event (not yet delivered: `event_deliver` does that after the commit).

    Inside a caller's transaction, the event commits with the caller's own writes (the audit's).
    """
    session_id = _session_uuid(session_id)
    event_validate(session_id=session_id, event=event, data=data)
    return event_record(session_id=session_id, event=event, data=data)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _session_uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise EventSessionNotFound(f"No live session {str(value)[:64]}.") from None


# --- Replay and ordering, for the consumer ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resume owes its client: the seq it starts live from, the kept frames after `last_seq`."""

    base_seq: int  # the session's last_seq when the resume took the row: live events come after it
    frames: tuple[str, ...] = ()
    count: protocol.ReplayCount | None = None  # None: the client gave no last_seq (v1.1)


def replay_read(*, session_id: uuid.UUID, base_seq: int, last_seq: int | None) -> Replay:
    """The kept events in (last_seq, base_seq], read while the resume holds the row's lock."""
    if last_seq is None:
        return Replay(base_seq=base_seq)
    if last_seq >= base_seq:
        return Replay(base_seq=base_seq, count=protocol.ReplayCount(replayed=0, missed=False))
    frames = tuple(frame for _, frame in events_read(session_id=session_id, after=last_seq, upto=base_seq))
    missed = len(frames) < base_seq - last_seq
    return Replay(base_seq=base_seq, frames=frames, count=protocol.ReplayCount(replayed=len(frames), missed=missed))


def events_read(*, session_id: uuid.UUID, after: int, upto: int) -> list[tuple[int, str]]:
    """The kept events with after < seq <= upto (the last WSS_SESSION_EVENTS_KEPT at most), encoded, in order."""
    kept = app_settings.WSS_SESSION_EVENTS_KEPT
    if kept <= 0:
        return []
    rows = SessionEvent.objects.filter(session_id=session_id, seq__gt=max(after, upto - kept), seq__lte=upto)
    return [
        (
            seq,
            protocol.encode(
                protocol.session_event_reply(session_id=session_id, seq=seq, event=event, data=data, sent_at=sent_at)
            ),
        )
        for seq, event, data, sent_at in rows.order_by("seq").values_list("seq", "event", "data", "sent_at")
    ]


class EventStream:
    """One connection's delivery of one session's events: each seq once, in order."""

    def __init__(self, *, session_id: uuid.UUID, delivered: int, resumable: bool) -> None:
        self.session_id = session_id
        self.delivered = delivered  # the highest seq this connection has sent
        self.pending: dict[int, str] = {}  # arrived ahead of a gap
        self.resumable = resumable  # a gap is filled from the window

    @property
    def waiting(self) -> bool:
        """Whether events wait behind a gap."""
        return bool(self.pending)

    @property
    def gap_wait_seconds(self) -> float:
        """How long a gap may stay open before `gap_close`: the missing message is usually milliseconds behind."""
        return GAP_FILL_SECONDS if self.resumable else GAP_WAIT_SECONDS

    async def arrived(self, seq: int, frame: str) -> list[str]:
        """A live event arrived: the frames to send now, in order (none if it was a repeat or is early)."""
        if seq <= self.delivered or seq in self.pending:
            return []
        self.pending[seq] = frame
        if len(self.pending) > MAX_PENDING:
            return await self.gap_close()
        return self._drain()

    async def gap_close(self) -> list[str]:
        """Stop waiting for the missing seqs: fill them from the window (resumable), else skip them."""
        if not self.pending:
            return []
        first_waiting = min(self.pending)
        if self.resumable and app_settings.WSS_SESSION_EVENTS_KEPT > 0:
            # Committed in seq order under the row lock, so every seq below one that arrived is in the window.
            for kept_seq, kept_frame in await events_fill(self.session_id, self.delivered, first_waiting - 1):
                self.pending.setdefault(kept_seq, kept_frame)
        # What is still missing (trimmed past the window, or never kept) is skipped.
        self.delivered = max(self.delivered, min(self.pending) - 1)
        return self._drain()

    def _drain(self) -> list[str]:
        frames = []
        while (frame := self.pending.pop(self.delivered + 1, None)) is not None:
            frames.append(frame)
            self.delivered += 1
        return frames


async def events_fill(session_id: uuid.UUID, after: int, upto: int) -> list[tuple[int, str]]:
    """Read a gap's events from the window, off the event loop."""
    return await database_sync_to_async(events_read)(session_id=session_id, after=after, upto=upto)


def data_parse(text: str) -> Any:
    """A command-line `data` argument: JSON text, strict (no NaN)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
