"""The group-commit writer on its own: batching, per-row fallback, loops. No database needed."""

import asyncio
import threading

import pytest
from django.db import IntegrityError, OperationalError

from sessions_app.registry_writer import GroupCommitWriter


class Recorder:
    """Apply functions that record what they were given; `bad` operations fail as rows."""

    def __init__(self, *, bad: frozenset = frozenset(), down: bool = False, gate: threading.Event | None = None):
        self.bad, self.down, self.gate = bad, down, gate
        self.batches: list[list] = []
        self.singles: list = []

    def apply_batch(self, operations: list) -> None:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(list(operations))
        if self.down:
            raise OperationalError("connection refused")
        if self.bad & set(operations):
            raise IntegrityError("bad row")

    def apply_one(self, operation) -> None:
        self.singles.append(operation)
        if self.down:
            raise OperationalError("connection refused")
        if operation in self.bad:
            raise IntegrityError("bad row")


def writer_for(recorder: Recorder) -> GroupCommitWriter:
    return GroupCommitWriter(apply_batch=recorder.apply_batch, apply_one=recorder.apply_one)


async def test_concurrent_operations_share_a_batch():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    writer = writer_for(recorder)
    first = asyncio.create_task(writer.submit(0))
    await asyncio.sleep(0)  # the first operation is taken; the writer waits at the gate
    rest = [asyncio.create_task(writer.submit(n)) for n in range(1, 50)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *rest)
    assert sorted(op for batch in recorder.batches for op in batch) == list(range(50))
    assert len(recorder.batches) < 50
    assert recorder.singles == []


async def test_a_bad_row_fails_only_its_own_caller():
    gate = threading.Event()
    recorder = Recorder(bad=frozenset({"bad"}), gate=gate)
    writer = writer_for(recorder)
    tasks = [asyncio.create_task(writer.submit(op)) for op in ("a", "bad", "b")]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], IntegrityError)
    assert results[2] is None


async def test_a_database_that_is_down_fails_the_rest_of_the_batch_without_retrying_each():
    gate = threading.Event()
    recorder = Recorder(down=True, gate=gate)
    writer = writer_for(recorder)
    tasks = [asyncio.create_task(writer.submit(n)) for n in range(5)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, OperationalError) for result in results)
    assert len(recorder.singles) <= len(recorder.batches)  # one single retry per failed batch at most


async def test_an_unexpected_exception_fails_the_batch_and_the_writer_keeps_going():
    calls = []

    def apply_batch(operations):
        calls.append(operations)
        if len(calls) == 1:
            raise RuntimeError("a bug")

    writer = GroupCommitWriter(apply_batch=apply_batch, apply_one=lambda operation: None)
    with pytest.raises(RuntimeError):
        await writer.submit("first")
    await writer.submit("second")


def test_one_writer_serves_successive_event_loops():
    recorder = Recorder()
    writer = writer_for(recorder)
    asyncio.run(writer.submit("from the first loop"))
    asyncio.run(writer.submit("from the second loop"))
    assert [op for batch in recorder.batches for op in batch] == ["from the first loop", "from the second loop"]


async def test_a_cancelled_caller_leaves_the_writer_working():
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    writer = writer_for(recorder)
    cancelled = asyncio.create_task(writer.submit("cancelled"))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    await writer.submit("after")
    assert cancelled.cancelled()
    assert [op for batch in recorder.batches for op in batch] == ["cancelled", "after"]
