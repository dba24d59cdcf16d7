"""Sessions in the registry: created under a lost or retired instance, an insert left stuck, a stalled database."""

import asyncio
import json
import threading
import time
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import DataError
from django.utils import timezone

from sessions_app import instances, sessions
from sessions_app.errors import Unavailable
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import new_session_frame, open_session, ws_connect_session
from .locks import instance_locked
from .polling import SLACK, wait_until
from .servers import row_ids_equal, session_ids

pytestmark = pytest.mark.django_db(transaction=True)


async def test_session_create_re_registers_a_lost_instance(workspace):
    comm, _ = await open_session(workspace)
    await comm.disconnect()
    await ServerInstance.objects.all().adelete()  # as a reaper or a reset registry would
    comm, reply = await open_session(workspace)
    second = reply["session_id"]
    assert await LiveSession.objects.filter(pk=second).aexists()
    assert await ServerInstance.objects.acount() == 1
    await comm.disconnect()


async def test_after_retire_a_late_session_create_is_unavailable_and_leaves_no_row(fresh_process, workspace):
    await sync_to_async(instances.instance_register_sync)()
    await sync_to_async(instances.instance_retire_sync)()
    with pytest.raises(Unavailable):
        await sessions.session_create(workspace_dir=str(workspace), channel_name="late", client_addr="")
    assert await LiveSession.objects.acount() == 0
    assert await ServerInstance.objects.acount() == 0


async def test_an_insert_whose_caller_left_while_it_was_stuck_leaves_no_row(fresh_process, workspace):
    await sync_to_async(instances.instance_register_sync)()
    taken = sessions.registry_writer.operations
    async with instance_locked(process_state().identity.boot_id):
        create = asyncio.create_task(
            sessions.session_create(workspace_dir=str(workspace), channel_name="left", client_addr="")
        )
        await wait_until(lambda: sessions.registry_writer.operations > taken, 5, what="the insert under way")
        create.cancel()  # as daphne cancels an application whose client has gone
        with pytest.raises(asyncio.CancelledError):
            await create
    # The insert commits once the lock is gone, and its undo follows it.

    async def no_row() -> bool:
        return not await LiveSession.objects.aexists() and sessions.registry_writer.operations >= taken + 2

    await wait_until(no_row, 5, what="the insert undone")


# --- The registry behind a loopback proxy that stalls it, or refusing a row (PostgreSQL) ----------

REGISTRY_TIMEOUT = 5.0  # the default WSS_REGISTRY_TIMEOUT_SECONDS


@pytest.mark.production
async def test_a_new_session_during_a_database_stall_is_answered_unavailable_within_the_bound(
    proxied_server, workspace
):
    server, proxy = await proxied_server()
    held, held_id = await ws_connect_session(server.url, workspace, timeout=10)
    async with websockets.connect(server.url) as ws:
        proxy.stall()  # connections stay open, nothing is answered
        started = time.monotonic()
        await ws.send(new_session_frame(workspace, request_id=1))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        took = time.monotonic() - started
        print(f"\nnew_session during a database stall answered {reply.get('code')} after {took:.2f} s")
        assert (reply["code"], reply["request_id"]) == ("unavailable", 1)
        assert took < REGISTRY_TIMEOUT + SLACK / 2
        proxy.restore()
        await ws.send(new_session_frame(workspace))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "new_session"
        # The timed-out insert ran before this one (one writer, in order): committed, it must be undone.
        took = await wait_until(
            lambda: row_ids_equal({held_id, reply["session_id"]}), REGISTRY_TIMEOUT + SLACK, what="registry exact"
        )
        print(f"registry exact {took:.2f} s after the stall ended")
    await held.close()
    server.assert_no_traceback()


@pytest.mark.production
async def test_a_row_the_database_refuses_fails_only_its_caller_in_a_shared_batch(
    production_services, fresh_process, workspace
):
    def insert(client_addr: str) -> sessions.SessionInsert:
        return sessions.SessionInsert(
            session_id=uuid.uuid4(),
            workspace_dir=str(workspace),
            created_at=timezone.now(),
            channel_name="c",
            client_addr=client_addr,
            user_id=None,
        )

    good, too_long, other = insert("a"), insert("x" * 100), insert("b")  # the column holds 64
    await sessions.registry_writer.submit(good)  # registered, so the next three share one batch
    gate = threading.Event()
    sessions.registry_writer.call(lambda: gate.wait(timeout=10))
    tasks = [
        asyncio.create_task(sessions.registry_writer.submit(operation))
        for operation in (too_long, other, sessions.SessionDelete(session_id=good.session_id))
    ]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], DataError)
    assert results[1:] == [None, None]
    assert await session_ids() == {str(other.session_id)}
