"""The group-commit writer on its own: batching, error classes, withdrawal and undo, calls. No database."""

import asyncio
import math
import threading

import pytest
from django.db import DataError, IntegrityError, OperationalError

from sessions_app.registry_writer import BURST_GAP_SECONDS, GroupCommitWriter

from .polling import wait_until


class Recorder:
    """An apply function that records what it committed; named operations fail as the database would.

    "bad" and "too-long" fail as rows (IntegrityError, DataError), "bug" with a non-database
    exception, "down" with a connection failure; "slow" waits at `gate` inside its transaction.
    """

    def __init__(self, *, gate: threading.Event | None = None):
        self.gate = gate
        self.calls: list[list] = []
        self.committed: list = []
        self.inside = threading.Event()

    def apply(self, operations: list) -> None:
        self.calls.append(list(operations))
        if "slow" in operations:
            self.inside.set()
            self.gate.wait(timeout=10)
        if "bad" in operations:
            raise IntegrityError("duplicate key")
        if "too-long" in operations:
            raise DataError("value too long for type character varying(64)")
        if "bug" in operations:
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        if "down" in operations:
            raise OperationalError("server closed the connection unexpectedly")
        self.committed.extend(operations)


async def held(writer: GroupCommitWriter) -> threading.Event:
    """Block the writer thread until the returned event is set, so the next submissions share a batch."""
    gate = threading.Event()
    writer.call(lambda: gate.wait(timeout=10))
    return gate


async def submit_together(writer: GroupCommitWriter, operations: list) -> list:
    gate = await held(writer)
    tasks = [asyncio.create_task(writer.submit(op)) for op in operations]
    await asyncio.sleep(0)  # every task queues its operation
    gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_operations_share_a_batch():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    results = await submit_together(writer, list(range(50)))
    assert results == [None] * 50
    assert recorder.calls == [list(range(50))]


async def test_inside_a_burst_operations_that_arrive_while_the_writer_lingers_join_its_batch():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply, burst_gap_seconds=math.inf)  # every batch after the first
    lingering, resume = threading.Event(), threading.Event()

    def linger() -> None:
        lingering.set()
        resume.wait(timeout=10)

    writer.linger = linger
    await writer.submit("the burst's first batch")
    first = asyncio.create_task(writer.submit("taken"))
    await wait_until(lingering.is_set, 5, what="the writer lingering")
    second = asyncio.create_task(writer.submit("arrived while it lingered"))
    await asyncio.sleep(0)  # queued
    resume.set()
    await asyncio.gather(first, second)
    assert recorder.calls == [["the burst's first batch"], ["taken", "arrived while it lingered"]]


async def test_a_write_on_a_quiet_writer_is_taken_without_lingering():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    lingered = []
    writer.linger = lambda: lingered.append(True)
    await writer.submit("the first write of the process")
    await asyncio.sleep(10 * BURST_GAP_SECONDS)  # a quiet moment: no burst
    await writer.submit("a write after a quiet moment")
    assert lingered == []
    assert recorder.committed == ["the first write of the process", "a write after a quiet moment"]


@pytest.mark.parametrize(
    ("bad", "error"), [("bad", IntegrityError), ("too-long", DataError), ("bug", UnicodeEncodeError)]
)
async def test_a_rows_own_error_fails_only_its_caller(bad, error):
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    results = await submit_together(writer, ["a", bad, "b", "delete-c"])
    assert results[0] is None
    assert isinstance(results[1], error)
    assert results[2:] == [None, None]
    assert sorted(recorder.committed) == ["a", "b", "delete-c"]
    assert await writer.submit("after") is None  # the writer keeps going


async def test_a_connection_failure_fails_the_whole_batch_without_retrying_each():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    results = await submit_together(writer, ["a", "down", "b"])
    assert all(isinstance(result, OperationalError) for result in results)
    assert recorder.calls == [["a", "down", "b"]]  # no row-by-row retry against a dead database


async def test_a_connection_failure_during_the_row_by_row_retry_fails_the_rest_untried():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    results = await submit_together(writer, ["a", "too-long", "down", "b"])
    assert results[0] is None
    assert isinstance(results[1], DataError)
    assert isinstance(results[2], OperationalError)
    assert results[3] is results[2]
    assert ["b"] not in recorder.calls


def test_one_writer_serves_successive_event_loops():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    asyncio.run(writer.submit("from the first loop"))
    asyncio.run(writer.submit("from the second loop"))
    assert recorder.committed == ["from the first loop", "from the second loop"]


async def test_a_cancelled_caller_without_undo_still_gets_its_write_applied():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    gate = await held(writer)
    cancelled = asyncio.create_task(writer.submit("delete"))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    await writer.submit("after")
    assert cancelled.cancelled()
    assert recorder.committed == ["delete", "after"]


async def test_an_operation_whose_caller_gave_up_before_it_started_is_withdrawn():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    gate = await held(writer)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.submit("insert", undo="undo insert"), timeout=0.05)
    gate.set()
    await writer.submit("after")
    assert recorder.committed == ["after"]


async def test_an_operation_that_committed_after_its_caller_gave_up_is_undone():
    recorder = Recorder(gate=threading.Event())
    writer = GroupCommitWriter(apply=recorder.apply)
    task = asyncio.create_task(writer.submit("slow", undo="undo slow"))
    await wait_until(recorder.inside.is_set, 5, what="the writer inside the transaction")
    task.cancel()
    recorder.gate.set()
    await wait_until(lambda: "undo slow" in recorder.committed, 5, what="the undo")
    assert recorder.committed == ["slow", "undo slow"]


async def test_a_call_runs_after_everything_queued_before_it_and_before_anything_after():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)
    gate = await held(writer)
    before = [asyncio.create_task(writer.submit(n)) for n in range(3)]
    await asyncio.sleep(0)
    seen = writer.call(lambda: list(recorder.committed))
    after = [asyncio.create_task(writer.submit(n)) for n in range(3, 6)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*before, *after)
    assert await seen == [0, 1, 2]
    assert recorder.calls == [[0, 1, 2], [3, 4, 5]]


async def test_a_call_raises_its_error_to_its_caller_only():
    recorder = Recorder()
    writer = GroupCommitWriter(apply=recorder.apply)

    def broken():
        raise OperationalError("gone")

    with pytest.raises(OperationalError):
        await writer.call(broken)
    await writer.submit("after")
    assert recorder.committed == ["after"]


async def test_work_that_outlived_its_callers_wait_leaves_its_thread_behind_and_the_queue_moves_on():
    recorder = Recorder(gate=threading.Event())
    writer = GroupCommitWriter(apply=recorder.apply)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.submit("slow", undo="undo slow"), timeout=0.2)
    await asyncio.wait_for(writer.submit("after"), timeout=5)  # on a fresh thread, the stuck one still waits
    assert recorder.committed == ["after"]
    recorder.gate.set()
    await wait_until(lambda: "undo slow" in recorder.committed, 5, what="the stuck write undone once it committed")
    assert recorder.committed == ["after", "slow", "undo slow"]


async def test_a_call_that_outlived_its_callers_wait_leaves_its_thread_behind():
    writer = GroupCommitWriter(apply=Recorder().apply)
    gate = threading.Event()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.call(lambda: gate.wait(timeout=10)), timeout=0.2)
    assert await asyncio.wait_for(writer.call(lambda: "next"), timeout=5) == "next"
    gate.set()
