"""Group commit for the registry: one thread, one connection, one transaction per batch.

Every registry write of the process goes through one `GroupCommitWriter`. A caller puts
its operation on a queue and awaits its own future; the writer thread takes everything
queued (up to `max_batch`), applies it in one transaction, and resolves each future on the
caller's event loop once the commit is done. So a reply still follows its row's commit,
but fifty concurrent connects cost one commit and one thread hop instead of fifty.

A failed batch is retried one operation at a time, so one bad row fails only its own
caller; after a connection-level failure the rest of that batch fails fast instead of
waiting on a dead database once per row. Any failure closes the thread's connection, so
the next batch reconnects. The writer carries no event loop of its own: each operation
brings its loop, so it serves every loop of the process (pytest-asyncio makes one per test).
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
from typing import Any

from django.db import DatabaseError, IntegrityError, connection

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    operation: Any
    loop: asyncio.AbstractEventLoop | None
    future: Any  # an asyncio.Future on `loop`; a threading.Event for _CLOSE


_CLOSE = object()


class GroupCommitWriter:
    """Apply operations on a dedicated thread, many per transaction; callers await their own."""

    def __init__(
        self,
        *,
        apply_batch: Callable[[list[Any]], None],
        apply_one: Callable[[Any], None],
        max_batch: int = 256,
        idle_close_seconds: float = 2.0,
        name: str = "registry-writer",
    ) -> None:
        self.apply_batch = apply_batch
        self.apply_one = apply_one
        self.max_batch = max_batch
        self.idle_close_seconds = idle_close_seconds
        self.name = name
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.batches = 0
        self.operations = 0

    async def submit(self, operation: Any) -> None:
        """Queue one operation; returns once its transaction committed, or raises its error."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_thread()
        self._queue.put(_Pending(operation, loop, future))
        await future

    def close_connection(self, timeout: float = 10) -> None:
        """Close the writer thread's database connection now (before a test database is dropped)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(_Pending(_CLOSE, None, done))
        done.wait(timeout)

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

    def _run(self) -> None:
        while True:
            batch = [self._next()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closes = [pending for pending in batch if pending.operation is _CLOSE]
            batch = [pending for pending in batch if pending.operation is not _CLOSE]
            if batch:
                try:
                    errors = self._apply([pending.operation for pending in batch])
                except BaseException as error:  # a bug in apply_*: fail this batch, keep the thread
                    logger.exception("registry writer failed a batch of %d", len(batch))
                    errors = [error] * len(batch)
                self._settle(batch, errors)
            if closes:
                connection.close()
                for pending in closes:
                    pending.future.set()

    def _apply(self, operations: list[Any]) -> list[BaseException | None]:
        self.batches += 1
        self.operations += len(operations)
        try:
            self.apply_batch(operations)
            return [None] * len(operations)
        except DatabaseError as error:
            connection.close()
            logger.info("registry batch of %d failed (%s); retrying one by one", len(operations), error)
        errors: list[BaseException | None] = []
        fatal: BaseException | None = None
        for operation in operations:
            if fatal is not None:
                errors.append(fatal)
                continue
            try:
                self.apply_one(operation)
                errors.append(None)
            except DatabaseError as error:
                connection.close()
                errors.append(error)
                if not isinstance(error, IntegrityError):
                    fatal = error  # the database itself failed, not this row: fail the rest now
        return errors

    @staticmethod
    def _settle(batch: list[_Pending], errors: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, BaseException | None]]] = defaultdict(list)
        for pending, error in zip(batch, errors, strict=True):
            by_loop[pending.loop].append((pending.future, error))
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
