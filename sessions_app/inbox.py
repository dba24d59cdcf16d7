"""A connection's inbox: frames are read from the server as they arrive, and bounded here.

A server buffers what a client sends until the application asks for it: daphne without
limit (up to 1 MiB a frame), uvicorn up to 32 frames of 16 MiB. While a consumer waits on
the registry, a flooding client could make the server hold hundreds of MiB
(docs/security.md has the measured figures). The inbox reads every event as soon as the
server has it, and decides there, on arrival:

- the rate limit (the connection's token bucket): a frame over the allowance is dropped
  unread and answered `rate_limited`; a persistent flood `rate_limit_exceeded` (4429);
- the size: a text frame over WSS_MAX_MESSAGE_BYTES is dropped and answered
  `message_too_large` (4413); a binary frame keeps no payload (it is refused anyway);
- the backlog: more than WSS_MAX_QUEUED_FRAMES frames waiting to be handled is answered
  `rate_limit_exceeded` (4429), so the bound holds with the rate limit off too.

A refusal is queued in order, as a `wss.refused` event that the consumer renders (without
its traceback, which would keep the refused frame alive). After a
refusal that closes, the frames still in flight are dropped unread. So a connection holds
at most WSS_MAX_QUEUED_FRAMES + 1 frames of at most WSS_MAX_MESSAGE_BYTES each.
"""

import asyncio
import time
from typing import Any

from .errors import ProtocolError, RateLimitExceeded
from .protocol import frame_size_check
from .ratelimit import TokenBucket

REFUSED = "wss.refused"  # the event type of a refusal decided on arrival


class Inbox:
    """An ASGI `receive` that drains the server's at once and keeps a bounded queue of its own."""

    # Held by every open connection: slots, a list and a bare future keep it small.
    __slots__ = ("_closing", "_events", "_failure", "_pump", "_receive", "_waiter", "bucket", "max_bytes", "max_queued")

    def __init__(self, receive: Any, *, bucket: TokenBucket, max_bytes: int, max_queued: int) -> None:
        self._receive = receive
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.max_queued = max(max_queued, 1)
        self._events: list[dict[str, Any]] = []
        self._waiter: asyncio.Future | None = None
        self._pump: asyncio.Task | None = None
        self._failure: BaseException | None = None
        self._closing = False

    async def __call__(self) -> dict[str, Any]:
        """The next event, in arrival order (frames already admitted, refusals as `wss.refused`)."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._drain())
        while not self._events:
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.pop(0)

    async def disconnected(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the server's `websocket.disconnect`: its close code, or None."""
        if self._pump is not None:
            await asyncio.wait({self._pump}, timeout=timeout)
        return next((e.get("code", 1005) for e in self._events if e.get("type") == "websocket.disconnect"), None)

    def close(self) -> None:
        """Stop reading from the server. Idempotent."""
        if self._pump is not None:
            self._pump.cancel()

    async def _drain(self) -> None:
        try:
            while True:
                event = await self._receive()
                if event.get("type") == "websocket.receive":
                    event = self._admit(event)
                if event is not None:
                    self._events.append(event)
                    self._wake()
                if event is not None and event.get("type") == "websocket.disconnect":
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # the server's receive failed: hand it to the consumer
            self._failure = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _admit(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event to queue for one arriving frame: itself, a lighter stand-in, a refusal, or nothing."""
        if self._closing:
            return None  # a closing refusal was sent: frames still in flight are dropped unread
        try:
            self.bucket.admit(time.monotonic())
            if sum(1 for queued in self._events if queued.get("type") == "websocket.receive") >= self.max_queued:
                raise RateLimitExceeded(
                    f"Closing: more than {self.max_queued} messages arrived before the earlier ones were handled."
                )
            text = event.get("text")
            if text is None:
                return {"type": "websocket.receive", "bytes": b"", "text": None}  # refused as binary, payload dropped
            frame_size_check(text, self.max_bytes)
        except ProtocolError as error:
            self._closing = error.close_code is not None
            # Its traceback holds this frame, and so the refused payload: keep neither.
            return {"type": REFUSED, "error": error.with_traceback(None)}
        return event
