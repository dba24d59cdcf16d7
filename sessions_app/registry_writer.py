"""Group commit for the registry: one thread, one connection, one transaction per batch.

Every registry write of the process goes through one `GroupCommitWriter`. A caller puts
its operation on a queue and awaits its own future; the writer thread takes everything
queued (up to `max_batch`), applies it in one transaction, and resolves each future on the
caller's event loop once the commit is done. So a reply still follows its row's commit,
but fifty concurrent connects cost one commit and one thread hop instead of fifty.

Errors are classified here, where the batch is:
- a connection-level failure (`OperationalError`, `InterfaceError`: the database is gone,
  hung up, or cancelled the statement) fails the whole batch at once and closes the
  thread's connection, so the next batch reconnects instead of waiting on a dead database
  once per row;
- any other exception (`IntegrityError`, `DataError`, another `DatabaseError`, a bug or an
  encoding error in building a row) belongs to a row: the batch is applied again one
  operation at a time, through the same `apply`, so the bad row fails only its own caller.

`call(function)` runs a function on the same thread between batches: it sees every
operation queued before it committed and none queued after it (the reconciler relies on
this). An operation submitted with an `undo` is withdrawn if its caller gives up
(cancelled, or its wait timed out) before the writer took it, and undone if it was applied
anyway; one without is applied whatever its caller does. The writer carries no event loop
of its own: each operation brings its loop, so it serves every loop of the process.
"""

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The connection is unusable, or the database is not answering: nothing later in the batch can succeed.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)

# States of a queued operation, moved under the writer's lock.
_QUEUED, _TAKEN, _DONE, _WITHDRAWN = "queued", "taken", "done", "withdrawn"


@dataclass(slots=True, eq=False)
class _Pending:
    operation: Any
    loop: asyncio.AbstractEventLoop | None  # None: nobody waits (an undo, a close)
    future: Any  # an asyncio.Future on `loop`; a threading.Event for _CLOSE; None when nobody waits
    undo: Any = None
    state: str = _QUEUED
    abandoned: bool = False  # the caller gave up while the writer held it
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Call:
    function: Callable[[], Any]


_CLOSE = object()


class GroupCommitWriter:
    """Apply operations on a dedicated thread, many per transaction; callers await their own."""

    def __init__(
        self,
        *,
        apply: Callable[[list[Any]], None],
        max_batch: int = 256,
        idle_close_seconds: float = 2.0,
        name: str = "registry-writer",
    ) -> None:
        self.apply = apply
        self.max_batch = max_batch
        self.idle_close_seconds = idle_close_seconds
        self.name = name
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.operations = 0

    async def submit(self, operation: Any, *, undo: Any = None) -> None:
        """Queue one operation; returns once its transaction committed, or raises its error.

        With `undo`, a caller that gives up (cancelled, timed out) withdraws the operation
        if the writer has not taken it yet, and has `undo` applied if it committed anyway.
        """
        pending = self._enqueue(operation, undo=undo)
        try:
            await pending.future
        except BaseException:
            self._abandon(pending)
            raise

    def call(self, function: Callable[[], T]) -> "asyncio.Future[T]":
        """Run `function` on the writer thread after everything queued so far; its result as a future.

        Queued at once (not at the first await), so the caller can snapshot state together
        with the queue position. A call whose future is cancelled before it starts is skipped.
        """
        return self._enqueue(_Call(function), undo=None).future

    def close_connection(self, timeout: float = 10) -> None:
        """Close the writer thread's database connection now (before a test database is dropped)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(_Pending(_CLOSE, None, done))
        done.wait(timeout)

    def _enqueue(self, operation: Any, *, undo: Any) -> _Pending:
        loop = asyncio.get_running_loop()
        pending = _Pending(operation, loop, loop.create_future(), undo=undo)
        self._ensure_thread()
        self._queue.put(pending)
        return pending

    def _abandon(self, pending: _Pending) -> None:
        """The caller stopped waiting: withdraw its operation, or undo it if it committed."""
        if pending.undo is None:
            return
        with self._lock:
            state = pending.state
            if state == _QUEUED:
                pending.state = _WITHDRAWN
            elif state == _TAKEN:
                pending.abandoned = True  # the writer queues the undo if the commit succeeds
        if state == _DONE and pending.error is None:
            self._queue.put(_Pending(pending.undo, None, None))

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's thread and queue are not ours.
                self._queue, self._pid = queue.SimpleQueue(), os.getpid()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _next(self) -> _Pending:
        """The next operation; an idle connection is closed rather than held (a server at rest)."""
        try:
            return self._queue.get(timeout=self.idle_close_seconds)
        except queue.Empty:
            connection.close()
            return self._queue.get()

    def _take(self, pending: _Pending) -> bool:
        """Claim a queued operation for this thread; False if its caller withdrew it."""
        with self._lock:
            if pending.state == _WITHDRAWN:
                return False
            if isinstance(pending.operation, _Call) and pending.future.cancelled():
                return False
            pending.state = _TAKEN
            return True

    def _run(self) -> None:
        carried: _Pending | None = None
        while True:
            first = carried if carried is not None else self._next()
            carried = None
            if first.operation is _CLOSE:
                connection.close()
                first.future.set()
                continue
            if isinstance(first.operation, _Call):
                if self._take(first):
                    self._run_call(first)
                continue
            batch = [first] if self._take(first) else []
            while len(batch) < self.max_batch:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending.operation is _CLOSE or isinstance(pending.operation, _Call):
                    carried = pending  # a barrier: it runs after this batch, before anything later
                    break
                if self._take(pending):
                    batch.append(pending)
            if batch:
                self._finish(batch, self._apply([pending.operation for pending in batch]))

    def _run_call(self, pending: _Pending) -> None:
        try:
            result, error = pending.operation.function(), None
        except BaseException as exception:
            if isinstance(exception, CONNECTION_ERRORS):
                connection.close()
            result, error = None, exception
        with self._lock:
            pending.state, pending.error = _DONE, error
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            pending.loop.call_soon_threadsafe(_resolve_call, pending.future, result, error)

    def _apply(self, operations: list[Any]) -> list[BaseException | None]:
        self.operations += len(operations)
        try:
            self.apply(operations)
            return [None] * len(operations)
        except CONNECTION_ERRORS as error:
            connection.close()
            logger.info("registry batch of %d failed on the connection: %s", len(operations), error)
            return [error] * len(operations)
        except Exception as error:
            if len(operations) == 1:
                return [error]
            logger.info("registry batch of %d failed (%r); applying one by one", len(operations), error)
        errors: list[BaseException | None] = []
        fatal: BaseException | None = None
        for operation in operations:
            if fatal is not None:
                errors.append(fatal)  # the database itself failed, not these rows: fail them now
                continue
            try:
                self.apply([operation])
                errors.append(None)
            except CONNECTION_ERRORS as error:
                connection.close()
                errors.append(error)
                fatal = error
            except Exception as error:
                errors.append(error)
        return errors

    def _finish(self, batch: list[_Pending], errors: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, BaseException | None]]] = defaultdict(list)
        for pending, error in zip(batch, errors, strict=True):
            with self._lock:
                pending.state, pending.error = _DONE, error
                undo = pending.undo if pending.abandoned and error is None else None
            if undo is not None:
                self._queue.put(_Pending(undo, None, None))  # committed for a caller who left
            if pending.loop is not None:
                by_loop[pending.loop].append((pending.future, error))
            elif error is not None:
                logger.warning("registry write %r failed: %s", pending.operation, error)
        for loop, results in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future, BaseException | None]]) -> None:
    for future, error in results:
        if future.done():
            continue  # the caller was cancelled; the write happened (or failed) anyway
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _resolve_call(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
