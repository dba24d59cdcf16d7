"""Group commit for the registry: one DatabaseThread, one transaction per batch.

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

Inside a burst (the previous batch ended moments ago) the writer lingers a fraction of a
millisecond before taking the rest of the queue, so a churn of sessions shares commits
and thread wake-ups instead of committing one or two rows at a time; a lone write on a
quiet process is taken at once.

`call(function)` runs a function on the same thread between batches: it sees every
operation queued before it committed and none queued after it (the reconciler relies on
this). Stuck work, withdrawal, undo and the connection follow DatabaseThread's policy
(database.py). The writer carries no event loop of its own: each operation brings its
loop, so it serves every loop of the process.
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.db import connection

from .database import CONNECTION_ERRORS, Call, DatabaseThread, Pending

logger = logging.getLogger(__name__)

# Measured under a churn at concurrency 50 (docs/performance.md): batches of about two
# operations without the linger, 3.6 with it; fewer commits and wake-ups for at most 0.5 ms
# more before a reply inside a burst.
LINGER_SECONDS = 0.0005
# A batch that starts this soon after the previous one ended is part of a burst.
BURST_GAP_SECONDS = 0.005


class GroupCommitWriter(DatabaseThread):
    """Apply operations on a DatabaseThread, many per transaction; callers await their own."""

    def __init__(
        self,
        *,
        apply: Callable[[list[Any]], None],
        max_batch: int = 256,
        idle_close_seconds: float = 2.0,
        linger_seconds: float = LINGER_SECONDS,
        burst_gap_seconds: float = BURST_GAP_SECONDS,
        name: str = "registry-writer",
    ) -> None:
        super().__init__(name=name, idle_close_seconds=idle_close_seconds)
        self.apply = apply
        self.max_batch = max_batch
        self.linger_seconds = linger_seconds
        self.burst_gap_seconds = burst_gap_seconds
        self.operations = 0
        self.batch_ended_at = float("-inf")  # monotonic

    async def submit(self, operation: Any, *, undo: Any = None) -> None:
        """Queue one operation; returns once its transaction committed, or raises its error.

        With `undo`, a caller that gives up (cancelled, timed out) withdraws the operation
        if the writer has not taken it yet, and has `undo` applied if it committed anyway.
        """
        pending = self.enqueue(operation, undo=undo)
        try:
            await pending.future
        except BaseException:
            self.abandon(pending)
            raise

    def serve(self, first: Pending) -> None:
        """Serve a call alone, or a batch of operations: everything queued up to the next call."""
        if isinstance(first.operation, Call):
            if self.take(first):
                self.run_call(first)
            return
        batch = [first] if self.take(first) else []
        if batch and time.monotonic() - self.batch_ended_at < self.burst_gap_seconds:
            self.linger()
        while len(batch) < self.max_batch and (pending := self.next_nowait()) is not None:
            if self.is_barrier(pending):
                self.put_back(pending)  # it runs after this batch, before anything later
                break
            if self.take(pending):
                batch.append(pending)
        if batch:
            self._finish(batch, self._apply([pending.operation for pending in batch]))
            self.batch_ended_at = time.monotonic()

    def linger(self) -> None:
        """Let a burst's next operations arrive before the batch is taken (the GIL is released meanwhile)."""
        time.sleep(self.linger_seconds)

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

    def _finish(self, batch: list[Pending], errors: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, BaseException | None]]] = defaultdict(list)
        for pending, error in zip(batch, errors, strict=True):
            undo = self.finish(pending, error)
            if undo is not None:
                self._queue.put(Pending(undo, None, None))  # committed for a caller who left
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
