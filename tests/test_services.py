"""Registry services: terminate wherever the session lives, instance heartbeat, reaping, retirement."""

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from datetime import timedelta

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import DataError, connection
from django.utils import timezone

from sessions_app import instances, sessions, terminate
from sessions_app.errors import Unavailable
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import assert_session_held, new_session_frame, open_session, ws_connect_session
from .locks import instance_locked
from .polling import SLACK, wait_until
from .proxy import TcpProxy
from .servers import database_url_via, dead_pid, session_ids

pytestmark = pytest.mark.django_db(transaction=True)

HOST = process_state().identity.host  # this machine: where predecessors are looked for


async def test_terminate_sends_session_terminated_closes_4410_and_removes_the_row(workspace):
    comm, reply = await open_session(workspace)
    session_id = reply["session_id"]
    assert await terminate.session_terminate_request(session_id=session_id) == terminate.TerminateResult.DELIVERED
    reply = await comm.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    assert reply["code"] == "session_terminated"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4410}
    assert not await LiveSession.objects.filter(pk=session_id).aexists()
    await comm.disconnect(code=4410)


async def test_terminate_leaves_other_sessions_alone(workspace):
    comm_a, reply = await open_session(workspace)
    session_a = reply["session_id"]
    comm_b, reply = await open_session(workspace)
    session_b = reply["session_id"]
    sent = time.monotonic()
    await terminate.session_terminate_request(session_id=session_a)
    assert (await comm_a.receive_json_from(timeout=5))["code"] == "session_terminated"
    # A message for B would have left in the same call as A's, which took `delivered` to
    # arrive: ten times that (at least a second) is long enough for it to show.
    delivered = time.monotonic() - sent
    assert await comm_b.receive_nothing(timeout=max(1.0, 10 * delivered))
    await assert_session_held(comm_b)
    assert await LiveSession.objects.filter(pk=session_b).aexists()
    await comm_a.disconnect()
    await comm_b.disconnect()


async def test_terminate_of_an_unknown_session_is_not_found():
    result = await terminate.session_terminate_request(session_id="00000000-0000-4000-8000-000000000000")
    assert result == terminate.TerminateResult.NOT_FOUND


async def test_terminate_deletes_the_row_of_a_dead_instance(workspace, instance_with_sessions):
    _, [row] = await sync_to_async(instance_with_sessions)(workspaces=[str(workspace)], age=3600)
    assert await terminate.session_terminate_request(session_id=row.pk) == terminate.TerminateResult.REMOVED
    assert not await LiveSession.objects.filter(pk=row.pk).aexists()


async def test_session_create_re_registers_a_lost_instance(workspace):
    comm, _ = await open_session(workspace)
    await comm.disconnect()
    await ServerInstance.objects.all().adelete()  # as a reaper or a reset registry would
    comm, reply = await open_session(workspace)
    second = reply["session_id"]
    assert await LiveSession.objects.filter(pk=second).aexists()
    assert await ServerInstance.objects.acount() == 1
    await comm.disconnect()


# --- Heartbeat, reaping, retirement -------------------------------------------------------


def test_reap_removes_silent_instances_and_their_sessions_and_returns_the_count(fresh_process, instance_with_sessions):
    silent, _ = instance_with_sessions(sessions=3, age=60)
    fresh, _ = instance_with_sessions(sessions=2, age=0)
    assert instances.sessions_reap_sync(timeout=30) == 3
    assert list(ServerInstance.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not LiveSession.objects.filter(instance_id=silent.pk).exists()
    assert LiveSession.objects.filter(instance=fresh).count() == 2


def test_reap_defaults_to_the_instance_timeout_setting(fresh_process, settings, instance_with_sessions):
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 100
    instance_with_sessions(sessions=1, age=60)
    assert instances.sessions_reap_sync() == 0
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 50
    assert instances.sessions_reap_sync() == 1


def test_reap_with_nothing_dead_removes_nothing(fresh_process, instance_with_sessions):
    instance_with_sessions(sessions=2, age=1)
    assert instances.sessions_reap_sync(timeout=30) == 0
    assert LiveSession.objects.count() == 2


def test_heartbeat_refreshes_this_instance(fresh_process):
    boot_id = instances.instance_register_sync()
    old = timezone.now() - timedelta(minutes=5)
    ServerInstance.objects.filter(pk=boot_id).update(heartbeat_at=old)
    assert instances.instance_heartbeat_sync() is True
    assert ServerInstance.objects.get(pk=boot_id).heartbeat_at > old


def test_heartbeat_registers_again_after_being_reaped(fresh_process):
    boot_id = instances.instance_register_sync()
    ServerInstance.objects.all().delete()
    assert instances.instance_heartbeat_sync() is False
    assert ServerInstance.objects.filter(pk=boot_id).exists()


def test_predecessors_on_this_host_whose_pid_is_gone_are_reaped_at_once(fresh_process, instance_with_sessions):
    gone, _ = instance_with_sessions(sessions=4, host=HOST, pid=dead_pid())
    assert instances.instance_predecessors_reap_sync() == 4
    assert not ServerInstance.objects.filter(pk=gone.pk).exists()


def test_a_predecessor_holding_this_very_pid_is_reaped(fresh_process, instance_with_sessions):
    instance_with_sessions(sessions=1, host=HOST, pid=os.getpid())
    assert instances.instance_predecessors_reap_sync() == 1


def test_predecessor_reap_spares_running_pids_other_hosts_and_itself(fresh_process, instance_with_sessions):
    instances.instance_register_sync()
    running, _ = instance_with_sessions(sessions=1, host=HOST, pid=os.getppid())
    other_host, _ = instance_with_sessions(sessions=1, host="elsewhere", pid=dead_pid())
    assert instances.instance_predecessors_reap_sync() == 0
    assert set(ServerInstance.objects.values_list("pk", flat=True)) == {
        process_state().identity.boot_id,
        running.pk,
        other_host.pk,
    }


def test_retire_removes_this_instance_with_its_sessions_and_leaves_others(fresh_process, instance_with_sessions):
    instances.instance_register_sync()
    LiveSession.objects.create(workspace_dir="/tmp", channel_name="x", instance_id=process_state().identity.boot_id)
    other, _ = instance_with_sessions(sessions=1)
    assert instances.instance_retire_sync() == 1
    assert list(ServerInstance.objects.values_list("pk", flat=True)) == [other.pk]


async def test_after_retire_a_late_session_create_is_unavailable_and_leaves_no_row(fresh_process, workspace):
    await sync_to_async(instances.instance_register_sync)()
    await sync_to_async(instances.instance_retire_sync)()
    with pytest.raises(Unavailable):
        await sessions.session_create(workspace_dir=str(workspace), channel_name="late", client_addr="")
    assert await LiveSession.objects.acount() == 0
    assert await ServerInstance.objects.acount() == 0


async def test_terminate_that_the_channel_layer_does_not_take_is_not_delivered(workspace, unreachable_channel_layer):
    instance = await ServerInstance.objects.acreate(host="h", pid=1)
    row = await LiveSession.objects.acreate(
        workspace_dir=str(workspace), channel_name="specific.abc!def", instance=instance
    )
    assert await terminate.session_terminate_request(session_id=row.pk) == terminate.TerminateResult.NOT_DELIVERED
    assert await LiveSession.objects.filter(pk=row.pk).aexists()  # nothing was done


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


# --- The registry behind a loopback proxy that stalls or cuts it (PostgreSQL) -------------------

HEARTBEAT = 1.0
REGISTRY_TIMEOUT = 5.0  # the default WSS_REGISTRY_TIMEOUT_SECONDS


@pytest.fixture
async def proxied_server(production_services, server_factory):
    """Start a daphne whose registry is PostgreSQL through a TcpProxy; (server, proxy)."""
    params = connection.settings_dict
    proxies: list[TcpProxy] = []

    async def start(**env: str) -> tuple:
        proxy = await TcpProxy(params.get("HOST") or "127.0.0.1", int(params.get("PORT") or 5432)).start()
        proxies.append(proxy)
        server = server_factory(
            env={
                "DATABASE_URL": database_url_via(proxy),
                "WSS_HEARTBEAT_SECONDS": str(HEARTBEAT),
                "WSS_INSTANCE_TIMEOUT_SECONDS": "30",  # no lease expiry within these tests
                **env,
            }
        )
        return server, proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


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
async def test_rows_of_sessions_closed_while_the_database_was_cut_go_within_one_interval_of_its_return(
    proxied_server, workspace
):
    server, proxy = await proxied_server()
    opened = [await ws_connect_session(server.url, workspace, timeout=10) for _ in range(30)]
    kept, kept_id = await ws_connect_session(server.url, workspace, timeout=10)
    proxy.cut()
    await asyncio.gather(*(ws.close() for ws, _ in opened))
    await wait_until(
        lambda: server.log().count("registry delete of session") >= len(opened), 10, what="the deletes failing"
    )
    assert len(await session_ids()) == len(opened) + 1  # the lie the reconciler must undo
    proxy.restore()
    took = await wait_until(
        lambda: row_ids_equal({kept_id}), HEARTBEAT + SLACK, what="the closed sessions' rows removed"
    )
    print(f"\nrows of {len(opened)} sessions closed during a cut gone {took:.2f} s after restore")
    await kept.send(new_session_frame(workspace))
    assert json.loads(await asyncio.wait_for(kept.recv(), 10))["code"] == "session_exists"  # kept its session
    await kept.close()


async def row_ids_equal(expected: set[str]) -> bool:
    return await session_ids() == expected


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


@pytest.mark.production
async def test_a_process_stops_promptly_while_its_database_hangs(proxied_server, workspace):
    server, proxy = await proxied_server(WSS_HEARTBEAT_SECONDS="0.5", WSS_REGISTRY_TIMEOUT_SECONDS="1")
    ws, _ = await ws_connect_session(server.url, workspace, timeout=10)
    proxy.stall()
    await wait_until(lambda: "heartbeat failed" in server.log(), 10, what="a lifecycle call stuck in the stall")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    # The stop gives the registry 3 timeouts, the clients 2 s; threads stuck in the database must not hold the exit.
    await asyncio.to_thread(server.wait, 3 * 1 + 2 + SLACK)
    print(f"\nstopped {time.monotonic() - started:.2f} s after SIGTERM while the database hung")
    await ws.close()
