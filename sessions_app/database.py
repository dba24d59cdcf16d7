"""Blocking database work off the event loop: `DatabaseThread`, one daemon thread with its own connection.

Both the registry writer (registry_writer.py, which adds group commit) and the lifecycle
(heartbeat, reap, expire, retire: `registry_call`) run their queries on one, each on its
own, so the heartbeat never waits behind the consumers' writes. One policy for both:

- Stuck work. A caller waits a bounded time (WSS_REGISTRY_TIMEOUT_SECONDS unless it says
  otherwise), then gives up. Work it gave up on before the thread took it is withdrawn; if
  the thread is already in it, the thread is abandoned: it finishes that work alone, closes
  its connection and ends, and a fresh thread serves the queue. Threads are daemons, so one
  stuck in the database never holds up the exit. A write whose caller gave up is undone
  when it commits anyway, where an undo is given (a session insert's is its delete).
- Connections. A thread closes its connection once idle for `idle_close_seconds`, and at
  once after a connection-level error (`CONNECTION_ERRORS`), so the next work reconnects
  instead of using a dead connection.
"""

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection

from .conf import app_settings
from .process import process_state

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The connection is unusable, or the database is not answering: nothing more on it can succeed.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)

# States of queued work, moved under the thread's lock.
QUEUED, TAKEN, DONE, WITHDRAWN = "queued", "taken", "done", "withdrawn"


def registry_timeout() -> float:
    """How long a caller waits for the registry before answering `unavailable`."""
    return app_settings.WSS_REGISTRY_TIMEOUT_SECONDS


@dataclass(slots=True, eq=False)
class Pending:
    """One piece of queued work and who waits for it."""

    operation: Any
    loop: asyncio.AbstractEventLoop | None  # None: nobody waits (an undo, a close)
    future: Any  # an asyncio.Future on `loop`; a threading.Event for a close; None when nobody waits
    undo: Any = None
    state: str = QUEUED
    abandoned: bool = False  # the caller gave up while the thread held it
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """Work that is a function to run on the thread."""

    function: Callable[[], Any]


_CLOSE, _STOP = object(), object()


class DatabaseThread:
    """Run blocking database work in order on a daemon thread with its own connection; callers await it."""

    def __init__(self, *, name: str, idle_close_seconds: float = 2.0) -> None:
        self.name = name
        self.idle_close_seconds = idle_close_seconds
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._carried: Pending | None = None  # taken from the queue but not served yet: served next
        self._thread: threading.Thread | None = None
        self._busy: list[Pending] = []  # what the serving thread is in right now
        self._pid = os.getpid()

    def call(self, function: Callable[[], T]) -> "asyncio.Future[T]":
        """Run `function` on the thread after everything queued so far; its result as a future.

        Queued at once (not at the first await), so the caller can snapshot state together
        with the queue position. Cancelling the future (a timeout) gives the call up.
        """
        pending = self.enqueue(Call(function), undo=None)
        pending.future.add_done_callback(lambda future: future.cancelled() and self.abandon(pending))
        return pending.future

    def close_connection(self, timeout: float = 10) -> None:
        """Close the thread's database connection now (before a test database is dropped)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(Pending(_CLOSE, None, done))
        done.wait(timeout)

    async def aclose(self) -> None:
        """Close the thread's connection (waiting at most one registry timeout), then end the thread."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call(connection.close), registry_timeout())
        self._queue.put(Pending(_STOP, None, None))

    def enqueue(self, operation: Any, *, undo: Any) -> Pending:
        """Queue work for a caller on the running loop."""
        loop = asyncio.get_running_loop()
        pending = Pending(operation, loop, loop.create_future(), undo=undo)
        self._ensure_thread()
        self._queue.put(pending)
        return pending

    def abandon(self, pending: Pending) -> None:
        """The caller stopped waiting: withdraw its work, or leave the thread stuck in it behind."""
        with self._lock:
            state = pending.state
            if state == QUEUED and (pending.undo is not None or isinstance(pending.operation, Call)):
                pending.state = WITHDRAWN
            elif state == TAKEN:
                pending.abandoned = True  # undone if it commits
                if pending in self._busy and self._thread is not None:
                    logger.warning("%s: work outlived its caller's wait; a fresh thread takes over", self.name)
                    self._thread = None  # the stuck one ends after this work; the next put starts another
        if state == DONE and pending.error is None and pending.undo is not None:
            self._queue.put(Pending(pending.undo, None, None))
        if state == TAKEN:
            self._ensure_thread()

    @staticmethod
    def is_barrier(pending: Pending) -> bool:
        """Whether work must run alone, after what came before it and before what comes after: a call, a close."""
        return isinstance(pending.operation, Call) or pending.operation is _CLOSE or pending.operation is _STOP

    def put_back(self, pending: Pending) -> None:
        """Serve `pending` next, before anything still queued (a barrier met while draining a batch)."""
        self._carried = pending

    def take(self, pending: Pending) -> bool:
        """Claim queued work for the serving thread; False if its caller withdrew it."""
        with self._lock:
            if pending.state == WITHDRAWN:
                return False
            if isinstance(pending.operation, Call) and pending.future.cancelled():
                return False
            pending.state = TAKEN
            self._busy.append(pending)
            return True

    def finish(self, pending: Pending, error: BaseException | None) -> Any:
        """Mark taken work done; the undo to queue if its caller left and it committed."""
        with self._lock:
            pending.state, pending.error = DONE, error
            with contextlib.suppress(ValueError):
                self._busy.remove(pending)
            return pending.undo if pending.abandoned and error is None else None

    def next_nowait(self) -> Pending | None:
        """The next queued work if there is some, without waiting."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def serve(self, first: Pending) -> None:
        """Serve one piece of work taken from the queue (the writer serves batches)."""
        if self.take(first):
            self.run_call(first)

    def run_call(self, pending: Pending) -> None:
        """Run a taken `Call` and resolve its caller's future."""
        try:
            result, error = pending.operation.function(), None
        except BaseException as exception:
            if isinstance(exception, CONNECTION_ERRORS):
                connection.close()
            result, error = None, exception
        undo = self.finish(pending, error)
        if undo is not None:
            self._queue.put(Pending(undo, None, None))
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            pending.loop.call_soon_threadsafe(_resolve_call, pending.future, result, error)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's thread and queue are not ours.
                self._queue, self._carried, self._busy, self._pid = queue.SimpleQueue(), None, [], os.getpid()
                self._thread = None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _next(self) -> Pending:
        """The next work; an idle connection is closed rather than held (a server at rest)."""
        with self._lock:
            carried, self._carried = self._carried, None
        if carried is not None:
            return carried
        try:
            return self._queue.get(timeout=self.idle_close_seconds)
        except queue.Empty:
            connection.close()
            return self._queue.get()

    def _current(self) -> bool:
        with self._lock:
            return self._thread is threading.current_thread()

    def _run(self) -> None:
        try:
            # Only a busy thread is abandoned, so one that takes work is still the current one.
            while self._current():
                first = self._next()
                if first.operation is _STOP:
                    break
                if first.operation is _CLOSE:
                    connection.close()
                    first.future.set()
                    continue
                self.serve(first)
        finally:
            connection.close()


def _resolve_call(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


async def registry_call(function: Callable[[], T], *, timeout: float | None = None) -> T:
    """Run a registry function on the lifecycle's DatabaseThread, waiting at most `timeout` seconds.

    WSS_REGISTRY_TIMEOUT_SECONDS by default; then TimeoutError, and the work is given up
    (the database thread's policy above).
    """
    state = process_state()
    if state.lifecycle_executor is None:
        # Idle longer than two heartbeats: the connection is kept between heartbeats.
        idle = max(2.0, 2 * float(app_settings.WSS_HEARTBEAT_SECONDS))
        state.lifecycle_executor = DatabaseThread(name="wss-lifecycle", idle_close_seconds=idle)
    future = state.lifecycle_executor.call(function)
    return await asyncio.wait_for(future, registry_timeout() if timeout is None else timeout)


async def registry_close() -> None:
    """Close the lifecycle thread's database connection."""
    state = process_state()
    if state.lifecycle_executor is not None:
        executor, state.lifecycle_executor = state.lifecycle_executor, None
        await executor.aclose()
