"""The process's life: start registers and reaps, the heartbeat reaps and expires, stop closes with 4503 and retires."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError
from django.utils import timezone

from sessions_app import connections, heartbeat, instances
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .communicators import connect, open_session, ws_connect_session
from .polling import SLACK, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_process")]


async def test_start_registers_this_instance_and_reaps_dead_predecessors_at_once():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    predecessor = await ServerInstance.objects.acreate(host=process_state().identity.host, pid=child.pid)
    await LiveSession.objects.acreate(workspace_dir="/tmp", channel_name="ghost", instance=predecessor)
    await heartbeat.start()
    assert await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()
    assert not await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    assert await LiveSession.objects.acount() == 0


async def test_a_registry_down_at_start_does_not_stop_it_and_the_heartbeat_catches_up(monkeypatch, settings):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    predecessor = await ServerInstance.objects.acreate(host=process_state().identity.host, pid=os.getpid())
    register = instances.instance_register_sync

    def registry_down():
        raise DatabaseError("connection refused")

    monkeypatch.setattr(heartbeat, "instance_register_sync", registry_down)
    await heartbeat.start()
    assert await ServerInstance.objects.filter(pk=predecessor.pk).aexists()
    monkeypatch.setattr(heartbeat, "instance_register_sync", register)  # the registry is back

    async def caught_up() -> bool:
        return [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [
            process_state().identity.boot_id
        ]

    await wait_until(caught_up, 10, what="the heartbeat registering and reaping the predecessor")


async def test_the_heartbeat_reaps_a_silent_peer_once_its_own_heartbeats_held_for_a_timeout(
    settings, instance_with_sessions
):
    settings.WSS_HEARTBEAT_SECONDS = 0.05
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 1
    silent, _ = await sync_to_async(instance_with_sessions)(age=60)
    started = time.monotonic()
    await heartbeat.start()

    async def reaped() -> bool:
        return not await ServerInstance.objects.filter(pk=silent.pk).aexists()

    await wait_until(reaped, 10, what="the silent peer reaped")
    # After an outage shared by every process, all heartbeats are stale: a process that
    # reaped at its first good beat would reap peers that are alive.
    assert time.monotonic() - started >= settings.WSS_INSTANCE_TIMEOUT_SECONDS


async def test_the_heartbeat_expires_a_detached_session_after_its_grace(workspace, settings):
    from .communicators import open_session as open_with

    settings.WSS_HEARTBEAT_SECONDS, settings.WSS_RESUME_GRACE_SECONDS = 0.1, 0.5
    comm, reply = await open_with(workspace, fields={"resumable": True})
    await comm.disconnect(code=1006)
    await heartbeat.start()
    detached_at = (await LiveSession.objects.aget(pk=reply["session_id"])).detached_at

    async def expired() -> bool:
        return not await LiveSession.objects.filter(pk=reply["session_id"]).aexists()

    assert await wait_until(expired, timeout=5)
    gone_after = (timezone.now() - detached_at).total_seconds()
    assert gone_after >= 0.5  # never before the grace; the bound (grace + heartbeat) is checked live


async def test_stop_tells_every_connection_server_shutting_down_then_closes_4503(workspace):
    with_session, _ = await open_session(workspace, ok=True)
    without_session = await connect()
    await heartbeat.stop()
    for comm in (with_session, without_session):
        reply = await comm.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", "server_shutting_down")
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
        await comm.disconnect(code=4503)


async def test_a_stop_beside_daphnes_cancelling_of_every_application_still_waits_for_the_close_handshake(
    workspace, monkeypatch
):
    """daphne's shutdown cancels every application as our stop begins: the client still gets its answer time."""
    monkeypatch.setattr(connections, "CLOSE_HANDSHAKE_SECONDS", 5)
    comm, _ = await open_session(workspace, ok=True)
    stop = asyncio.ensure_future(heartbeat.stop())  # our "before shutdown" trigger, then daphne's:
    comm.future.cancel()
    assert (await comm.receive_json_from(timeout=5))["code"] == "server_shutting_down"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await asyncio.sleep(0.5)  # the client has not answered the close frame yet
    assert not comm.future.done() and not stop.done()
    await comm.send_input({"type": "websocket.disconnect", "code": 4503})
    await asyncio.wait_for(stop, timeout=SLACK)
    with pytest.raises(asyncio.CancelledError):
        await comm.future


async def test_stop_removes_this_instance_and_every_session_of_it(workspace):
    other = await ServerInstance.objects.acreate(host="elsewhere", pid=1)
    comms = [(await open_session(workspace, ok=True))[0] for _ in range(3)]
    assert await LiveSession.objects.acount() == 3
    assert await heartbeat.stop() == 3
    assert await LiveSession.objects.acount() == 0
    assert [pk async for pk in ServerInstance.objects.values_list("pk", flat=True)] == [other.pk]
    for comm in comms:
        await comm.disconnect()


async def test_a_second_stop_does_nothing(workspace):
    comm, _ = await open_session(workspace, ok=True)
    assert await heartbeat.stop() == 1
    assert await heartbeat.stop() == 0
    await comm.disconnect()


async def test_stop_detaches_resumable_sessions_and_still_removes_v1_ones(workspace):
    from .communicators import open_session as open_with

    resumable, resumable_reply = await open_with(workspace, fields={"resumable": True})
    plain, plain_reply = await open_with(workspace)
    assert await heartbeat.stop() == 1  # the non-resumable row; the resumable one is detached, not removed
    messages = []
    for comm in (resumable, plain):
        reply = await comm.receive_json_from(timeout=5)
        assert reply["code"] == "server_shutting_down"
        messages.append(reply["message"])
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    assert "resume" in messages[0] and "resume" not in messages[1]
    kept = await LiveSession.objects.aget(pk=resumable_reply["session_id"])
    assert kept.detached_at is not None and kept.instance_id is None
    assert not await LiveSession.objects.filter(pk=plain_reply["session_id"]).aexists()
    # The consumers' own ends (daphne cancels them) do not undo the detach.
    await resumable.disconnect(code=4503)
    await plain.disconnect(code=4503)
    assert (await LiveSession.objects.aget(pk=resumable_reply["session_id"])).detached_at is not None


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
